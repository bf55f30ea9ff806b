//! Counting events that must not each cost a log line.
//!
//! A broker that forwards retained messages nobody subscribed to, or a sender looping on
//! garbage, can deliver thousands of messages a second that the agent cannot read. One WARN each
//! would flood the journal (and, across a fleet reconnecting at once, the log pipeline). A
//! [`LogLimiter`] counts them per reason and asks for one line per reason at most once per
//! window, carrying the count since the previous line and the last message's details.
//!
//! Pure: the caller passes the time, so tests drive the clock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often a line per reason is written at most.
pub const LOG_WINDOW: Duration = Duration::from_secs(60);

/// One line owed: `count` events of a reason since the previous line (over `over`, the time
/// since that line, or since the first of them), the last one described by `last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub count: u64,
    pub over: Duration,
    pub last: String,
}

#[derive(Debug)]
struct Entry {
    total: u64,
    /// Events not in a line yet.
    pending: u64,
    /// When the last line was written (`None`: never).
    last_line: Option<Instant>,
    /// When the first pending event came (the start of what the next line covers when no
    /// line was written before).
    first_pending: Option<Instant>,
    last: String,
}

/// Counts events per reason `K`; says when a line is due.
#[derive(Debug)]
pub struct LogLimiter<K: Ord> {
    window: Duration,
    entries: BTreeMap<K, Entry>,
}

impl<K: Ord + Clone> Default for LogLimiter<K> {
    fn default() -> Self {
        Self::new(LOG_WINDOW)
    }
}

impl<K: Ord + Clone> LogLimiter<K> {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            entries: BTreeMap::new(),
        }
    }

    /// Counts one event of `key`, described by `last` (built only when it is kept). Returns
    /// the line to write now: the first event of a reason is logged at once (an operator sees
    /// the problem start), later ones at most once per window.
    pub fn record(&mut self, key: K, last: impl FnOnce() -> String, now: Instant) -> Option<Line> {
        let e = self.entries.entry(key).or_insert(Entry {
            total: 0,
            pending: 0,
            last_line: None,
            first_pending: None,
            last: String::new(),
        });
        e.total += 1;
        e.pending += 1;
        e.first_pending.get_or_insert(now);
        e.last = last();
        let due = e
            .last_line
            .is_none_or(|at| now.saturating_duration_since(at) >= self.window);
        due.then(|| Self::take(e, now))
    }

    /// Lines owed for events counted since a line more than a window ago: called now and then
    /// (by a timer), so a burst that stops is still reported with its full count.
    pub fn due(&mut self, now: Instant) -> Vec<(K, Line)> {
        let window = self.window;
        self.entries
            .iter_mut()
            .filter(|(_, e)| {
                e.pending > 0
                    && e.last_line
                        .is_none_or(|at| now.saturating_duration_since(at) >= window)
            })
            .map(|(k, e)| (k.clone(), Self::take(e, now)))
            .collect()
    }

    fn take(e: &mut Entry, now: Instant) -> Line {
        let since = e.last_line.or(e.first_pending).unwrap_or(now);
        let line = Line {
            count: e.pending,
            over: now.saturating_duration_since(since),
            last: std::mem::take(&mut e.last),
        };
        e.pending = 0;
        e.first_pending = None;
        e.last_line = Some(now);
        line
    }

    /// Every event counted so far, per reason.
    pub fn totals(&self) -> BTreeMap<K, u64> {
        self.entries
            .iter()
            .map(|(k, e)| (k.clone(), e.total))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(60);

    #[test]
    fn the_first_event_is_logged_then_one_line_per_window_with_the_count() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(W);
        let first = l.record("a", || "topic=x".into(), t0).unwrap();
        assert_eq!((first.count, first.last.as_str()), (1, "topic=x"));
        // 999 more within the window: silent.
        for i in 1..1000u64 {
            let at = t0 + Duration::from_millis(i * 10);
            assert_eq!(l.record("a", || format!("topic={i}"), at), None);
        }
        assert!(l.due(t0 + Duration::from_secs(30)).is_empty());
        // The window is over: the timer gets one line with all 999 and the last detail.
        let lines = l.due(t0 + W);
        assert_eq!(
            lines,
            vec![(
                "a",
                Line {
                    count: 999,
                    over: W,
                    last: "topic=999".into()
                }
            )]
        );
        assert!(
            l.due(t0 + W * 3).is_empty(),
            "nothing pending, nothing owed"
        );
        assert_eq!(l.totals(), [("a", 1000)].into());
        // The next event long after: logged at once, counting itself.
        let next = l.record("a", || "late".into(), t0 + W * 5).unwrap();
        assert_eq!((next.count, next.over), (1, W * 4));
    }

    #[test]
    fn an_event_after_the_window_carries_the_silent_ones() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(W);
        l.record(1, String::new, t0).unwrap();
        for s in 1..60 {
            assert!(l
                .record(1, String::new, t0 + Duration::from_secs(s))
                .is_none());
        }
        let line = l.record(1, || "x".into(), t0 + W).unwrap();
        assert_eq!((line.count, line.over), (60, W));
    }

    #[test]
    fn reasons_are_limited_apart() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(W);
        assert!(l.record("a", String::new, t0).is_some());
        assert!(l.record("b", String::new, t0).is_some());
        assert!(l.record("a", String::new, t0).is_none());
        assert!(l.record("b", String::new, t0).is_none());
        let due = l.due(t0 + W);
        assert_eq!(due.iter().map(|(k, _)| *k).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(l.totals(), [("a", 2), ("b", 2)].into());
    }
}
