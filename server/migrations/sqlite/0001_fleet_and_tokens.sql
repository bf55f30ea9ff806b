-- The first schema of the console's store (SQLite). Times are integers: milliseconds since the
-- Unix epoch. JSON documents are kept as text: the store never queries inside them.
CREATE TABLE instances (
    region        TEXT    NOT NULL,
    instance_id   TEXT    NOT NULL,
    group_id      TEXT    NOT NULL,
    presence      TEXT    NOT NULL CHECK (presence IN ('online', 'stale', 'offline')),
    since_ms      INTEGER NOT NULL,
    reason        TEXT,
    last_seen_ms  INTEGER,
    agent_version TEXT,
    heartbeat     TEXT,
    storage       TEXT,
    updated_ms    INTEGER NOT NULL,
    PRIMARY KEY (region, instance_id)
);
CREATE INDEX instances_by_group ON instances (group_id, region, instance_id);
CREATE INDEX instances_by_presence ON instances (presence, region, instance_id);

CREATE TABLE presence_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    region      TEXT    NOT NULL,
    instance_id TEXT    NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('online', 'stale', 'offline')),
    reason      TEXT,
    at_ms       INTEGER NOT NULL
);
CREATE INDEX presence_events_by_instance ON presence_events (region, instance_id, at_ms, id);

CREATE TABLE tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    secret_hash BLOB    NOT NULL UNIQUE,
    scopes      TEXT    NOT NULL,
    groups      TEXT    NOT NULL,
    created_ms  INTEGER NOT NULL,
    revoked_ms  INTEGER
);
