-- Calls made through the console and the audit log (PostgreSQL); the same logical schema as
-- SQLite's. Times are integer milliseconds since the Unix epoch; JSON documents are text; keys
-- compare bytewise (COLLATE "C"). Params are stored with their secrets redacted;
-- `request_hash` (SHA-256 of the whole request) tells a repeated Idempotency-Key with other
-- params from a true repeat.
CREATE TABLE calls (
    id           TEXT   COLLATE "C" PRIMARY KEY,
    region       TEXT   COLLATE "C" NOT NULL,
    instance_id  TEXT   COLLATE "C" NOT NULL,
    method       TEXT   NOT NULL,
    params       TEXT   NOT NULL,
    request_hash TEXT   NOT NULL,
    token_name   TEXT,
    state        TEXT   NOT NULL CHECK (state IN ('pending', 'answered', 'failed')),
    reply        TEXT,
    error        TEXT,
    started_ms   BIGINT NOT NULL,
    finished_ms  BIGINT
);
CREATE INDEX calls_by_instance ON calls (region, instance_id, started_ms, id);

CREATE TABLE audit (
    id          BIGSERIAL PRIMARY KEY,
    at_ms       BIGINT NOT NULL,
    region      TEXT   COLLATE "C" NOT NULL,
    token_name  TEXT   COLLATE "C",
    remote_addr TEXT,
    action      TEXT   COLLATE "C" NOT NULL,
    instance_id TEXT   COLLATE "C",
    method      TEXT,
    params      TEXT,
    outcome     TEXT   COLLATE "C" NOT NULL,
    request_id  TEXT
);
CREATE INDEX audit_by_time ON audit (at_ms, id);
