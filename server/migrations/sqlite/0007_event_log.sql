-- The event log (SQLite): every live event (presence changes, call completions, job
-- progress), in the order it was stored. Its id is the event id clients see (`id:` of the
-- server-sent events, `event_id` of webhook bodies) and resume from with Last-Event-ID.
-- Bounded by age and count; `event_log_meta.pruned_through` is the highest id removed, so a
-- replay from before it is known to be incomplete. Times are milliseconds since the Unix epoch.
CREATE TABLE event_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT    NOT NULL CHECK (kind IN ('presence', 'call', 'job')),
    region      TEXT,
    instance_id TEXT,
    -- What tokens limited to groups are filtered by; NULL: visible to unlimited tokens only.
    group_id    TEXT,
    -- Presence only: the state entered and since when, for recognising the same change
    -- stored by another replica.
    presence_to TEXT,
    since_ms    INTEGER,
    -- The console id of the replica that stored it.
    origin      TEXT    NOT NULL,
    at_ms       INTEGER NOT NULL,
    -- The event as JSON, without its id.
    data        TEXT    NOT NULL
);
CREATE INDEX event_log_presence ON event_log (region, instance_id, id) WHERE kind = 'presence';
CREATE INDEX event_log_at ON event_log (at_ms);
CREATE TABLE event_log_meta (
    one            INTEGER PRIMARY KEY CHECK (one = 1),
    pruned_through INTEGER NOT NULL
);
INSERT INTO event_log_meta (one, pruned_through) VALUES (1, 0);
