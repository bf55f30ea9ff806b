-- Calls made through the console and the audit log (SQLite). Times are integer milliseconds
-- since the Unix epoch; JSON documents are text. Params are stored with their secrets
-- redacted; `request_hash` (SHA-256 of the whole request) tells a repeated Idempotency-Key
-- with other params from a true repeat.
CREATE TABLE calls (
    id           TEXT    PRIMARY KEY,
    region       TEXT    NOT NULL,
    instance_id  TEXT    NOT NULL,
    method       TEXT    NOT NULL,
    params       TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    token_name   TEXT,
    state        TEXT    NOT NULL CHECK (state IN ('pending', 'answered', 'failed')),
    reply        TEXT,
    error        TEXT,
    started_ms   INTEGER NOT NULL,
    finished_ms  INTEGER
);
CREATE INDEX calls_by_instance ON calls (region, instance_id, started_ms, id);

CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms       INTEGER NOT NULL,
    region      TEXT    NOT NULL,
    token_name  TEXT,
    remote_addr TEXT,
    action      TEXT    NOT NULL,
    instance_id TEXT,
    method      TEXT,
    params      TEXT,
    outcome     TEXT    NOT NULL,
    request_id  TEXT
);
CREATE INDEX audit_by_time ON audit (at_ms, id);
