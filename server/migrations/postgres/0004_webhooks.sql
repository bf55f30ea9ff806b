-- Webhook deliveries (PostgreSQL), the same logical table as SQLite's: one row per event per
-- webhook, kept after delivery so the API can show them. Times are milliseconds since the
-- Unix epoch.
CREATE TABLE webhook_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    webhook         TEXT   COLLATE "C" NOT NULL,
    event_type      TEXT   NOT NULL,
    payload         TEXT   NOT NULL,
    state           TEXT   NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_status     INTEGER,
    last_error      TEXT,
    created_ms      BIGINT NOT NULL,
    -- When a pending delivery is next due; while one is being sent, the end of its lease.
    next_attempt_ms BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL,
    delivered_ms    BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_ms, id);
