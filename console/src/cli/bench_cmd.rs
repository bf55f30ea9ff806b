//! `csgctl bench`: request/reply latency and throughput against one instance.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use csg_console::{CallError, CallOptions, Console};
use csg_protocol::ReplyBody;
use serde_json::json;

use super::{out, BenchArgs, Exit};

/// What one phase of requests produced.
#[derive(Debug, Default)]
struct Sample {
    /// Round trips of successful requests, in microseconds.
    latencies_us: Vec<u32>,
    errors: u64,
    lost: u64,
    /// The console's own connection dropped and some requests went unanswered: why.
    connection_lost: Option<String>,
    elapsed: Duration,
}

/// The numbers a bench prints.
#[derive(Debug, Clone, PartialEq)]
struct Report {
    count: u64,
    concurrency: u32,
    p50_us: u32,
    p99_us: u32,
    p999_us: u32,
    max_us: u32,
    rps: f64,
    errors: u64,
    lost: u64,
}

pub async fn run(
    console: &Console,
    args: &BenchArgs,
    signer: Option<csg_console::Signer>,
) -> anyhow::Result<Exit> {
    let signer = signer.as_ref();
    if args.warmup > 0 {
        let warm = phase(console, args, args.warmup, signer).await;
        if warm.latencies_us.is_empty() {
            eprintln!(
                "error: none of the {} warm-up requests to {} was answered ok ({} errors, {} lost); \
                 is the instance online?",
                args.warmup, args.instance, warm.errors, warm.lost
            );
            if let Some(reason) = &warm.connection_lost {
                return Ok(connection_lost(reason));
            }
            return Ok(if warm.errors > 0 {
                Exit::RemoteError
            } else {
                Exit::NoReply
            });
        }
    }
    let sample = phase(console, args, args.count, signer).await;
    let lost_link = sample.connection_lost.clone();
    let report = Report::from_sample(args.count, args.concurrency, sample);
    if args.json {
        out(&format!("{}\n", report.to_json()));
    } else {
        out(&report.render(args.method.as_str(), args.instance.as_str()));
    }
    if let Some(reason) = &lost_link {
        // The lost requests say nothing about the gateway: the figures above are not its own.
        return Ok(connection_lost(reason));
    }
    Ok(Exit::for_counts(
        0,
        report.errors as usize,
        report.lost as usize,
    ))
}

fn connection_lost(reason: &str) -> Exit {
    eprintln!(
        "error: the connection to the broker was lost ({reason}) during the bench; requests \
         counted as lost were not necessarily lost by the gateway"
    );
    Exit::Failure
}

/// Sends `count` requests with `concurrency` of them outstanding; each has a fresh id and is
/// sent once: a lost reply or an error is counted, not retried, so it cannot hide in the
/// latencies.
async fn phase(
    console: &Console,
    args: &BenchArgs,
    count: u64,
    signer: Option<&csg_console::Signer>,
) -> Sample {
    let next = Arc::new(AtomicU64::new(0));
    let opts = CallOptions {
        timeout: args.timeout,
        attempt_timeout: args.timeout,
        retry_errors: false,
        signer: signer.cloned(),
        ..CallOptions::default()
    };
    let workers = u64::from(args.concurrency).min(count).max(1);
    let per_worker = (count / workers + 1) as usize;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (console, next, opts) = (console.clone(), next.clone(), opts.clone());
        let (instance, method) = (args.instance.clone(), args.method.clone());
        let params = args.params.clone().unwrap_or_default();
        tasks.spawn(async move {
            let mut s = Sample {
                latencies_us: Vec::with_capacity(per_worker),
                ..Sample::default()
            };
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let t0 = Instant::now();
                let r = console
                    .call(&instance, &method, params.clone(), &opts)
                    .await;
                let us = t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                match r {
                    Ok(reply) if matches!(reply.body, ReplyBody::Ok(_)) => s.latencies_us.push(us),
                    Ok(_) => s.errors += 1,
                    Err(CallError::NoReply { .. }) => s.lost += 1,
                    Err(CallError::ConnectionLost { reason, .. }) => {
                        s.lost += 1;
                        s.connection_lost = Some(reason);
                    }
                    Err(e) => {
                        tracing::debug!("bench request failed: {e}");
                        s.errors += 1;
                    }
                }
            }
            s
        });
    }
    let mut total = Sample::default();
    while let Some(joined) = tasks.join_next().await {
        let s = joined.expect("bench workers do not panic");
        total.latencies_us.extend(s.latencies_us);
        total.errors += s.errors;
        total.lost += s.lost;
        if s.connection_lost.is_some() {
            total.connection_lost = s.connection_lost;
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// Nearest-rank percentile of sorted values (`p` in 0..=1); 0 when empty.
fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Report {
    fn from_sample(count: u64, concurrency: u32, mut s: Sample) -> Self {
        s.latencies_us.sort_unstable();
        let l = &s.latencies_us;
        let secs = s.elapsed.as_secs_f64();
        Report {
            count,
            concurrency,
            p50_us: percentile(l, 0.50),
            p99_us: percentile(l, 0.99),
            p999_us: percentile(l, 0.999),
            max_us: l.last().copied().unwrap_or(0),
            // Answered requests (ok or error) per second of the measured phase.
            rps: if secs > 0.0 {
                ((count - s.lost) as f64 / secs).round()
            } else {
                0.0
            },
            errors: s.errors,
            lost: s.lost,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "count": self.count,
            "concurrency": self.concurrency,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "p999_us": self.p999_us,
            "max_us": self.max_us,
            "rps": self.rps,
            "errors": self.errors,
            "lost": self.lost,
        })
    }

    fn render(&self, method: &str, instance: &str) -> String {
        format!(
            "{method} to {instance}: {} requests, {} outstanding\n\
             latency µs: p50 {}  p99 {}  p99.9 {}  max {}\n\
             throughput: {} req/s\n\
             errors {}, lost {}\n",
            self.count,
            self.concurrency,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.rps,
            self.errors,
            self.lost
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.5), 500);
        assert_eq!(percentile(&v, 0.99), 990);
        assert_eq!(percentile(&v, 0.999), 999);
        assert_eq!(percentile(&v, 1.0), 1000);
        assert_eq!(percentile(&[7], 0.999), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn report_numbers_and_json_keys() {
        let s = Sample {
            latencies_us: vec![300, 100, 200],
            errors: 1,
            lost: 1,
            connection_lost: None,
            elapsed: Duration::from_millis(500),
        };
        let r = Report::from_sample(5, 2, s);
        assert_eq!((r.p50_us, r.max_us, r.rps), (200, 300, 8.0));
        let j = r.to_json();
        let keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "count",
            "concurrency",
            "p50_us",
            "p99_us",
            "p999_us",
            "max_us",
            "rps",
            "errors",
            "lost",
        ] {
            assert!(keys.contains(&k), "missing {k}");
        }
        assert_eq!(keys.len(), 9);
        assert!(r.render("sys.ping", "gw-1").contains("p50 200"));
    }
}
