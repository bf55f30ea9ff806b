-- Webhook deliveries (SQLite): one row per event per webhook, kept after delivery so the API
-- can show them. Times are milliseconds since the Unix epoch.
CREATE TABLE webhook_deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook         TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_status     INTEGER,
    last_error      TEXT,
    created_ms      INTEGER NOT NULL,
    -- When a pending delivery is next due; while one is being sent, the end of its lease.
    next_attempt_ms INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL,
    delivered_ms    INTEGER
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_ms, id);
