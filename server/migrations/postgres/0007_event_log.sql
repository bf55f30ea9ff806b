-- The event log (PostgreSQL), the same logical table as SQLite's: every live event (presence
-- changes, call completions, job progress), in the order it was stored. Its id is the event id
-- clients see (`id:` of the server-sent events, `event_id` of webhook bodies) and resume from
-- with Last-Event-ID. Writers take the table's EXCLUSIVE lock for their transaction, so ids
-- become visible in increasing order (a reader polling "ids above the last seen" skips none).
-- Bounded by age and count; `event_log_meta.pruned_through` is the highest id removed.
CREATE TABLE event_log (
    id          BIGSERIAL PRIMARY KEY,
    kind        TEXT   NOT NULL CHECK (kind IN ('presence', 'call', 'job')),
    region      TEXT   COLLATE "C",
    instance_id TEXT   COLLATE "C",
    group_id    TEXT   COLLATE "C",
    presence_to TEXT,
    since_ms    BIGINT,
    origin      TEXT   NOT NULL,
    at_ms       BIGINT NOT NULL,
    data        TEXT   NOT NULL
);
CREATE INDEX event_log_presence ON event_log (region, instance_id, id) WHERE kind = 'presence';
CREATE INDEX event_log_at ON event_log (at_ms);
CREATE TABLE event_log_meta (
    one            INTEGER PRIMARY KEY CHECK (one = 1),
    pruned_through BIGINT  NOT NULL
);
INSERT INTO event_log_meta (one, pruned_through) VALUES (1, 0);
