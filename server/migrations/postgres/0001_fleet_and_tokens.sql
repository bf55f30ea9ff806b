-- The first schema of the console's store (PostgreSQL); the same logical schema as SQLite's.
-- Times are integers: milliseconds since the Unix epoch. JSON documents are kept as text: the
-- store never queries inside them. Keys compare bytewise (COLLATE "C"), as SQLite's do, so
-- keyset pages come in the same order on both engines whatever the cluster's locale.
CREATE TABLE instances (
    region        TEXT   COLLATE "C" NOT NULL,
    instance_id   TEXT   COLLATE "C" NOT NULL,
    group_id      TEXT   COLLATE "C" NOT NULL,
    presence      TEXT   NOT NULL CHECK (presence IN ('online', 'stale', 'offline')),
    since_ms      BIGINT NOT NULL,
    reason        TEXT,
    last_seen_ms  BIGINT,
    agent_version TEXT   COLLATE "C",
    heartbeat     TEXT,
    storage       TEXT,
    updated_ms    BIGINT NOT NULL,
    PRIMARY KEY (region, instance_id)
);
CREATE INDEX instances_by_group ON instances (group_id, region, instance_id);
CREATE INDEX instances_by_presence ON instances (presence, region, instance_id);

CREATE TABLE presence_events (
    id          BIGSERIAL PRIMARY KEY,
    region      TEXT   COLLATE "C" NOT NULL,
    instance_id TEXT   COLLATE "C" NOT NULL,
    state       TEXT   NOT NULL CHECK (state IN ('online', 'stale', 'offline')),
    reason      TEXT,
    at_ms       BIGINT NOT NULL
);
CREATE INDEX presence_events_by_instance ON presence_events (region, instance_id, at_ms, id);

CREATE TABLE tokens (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT   NOT NULL UNIQUE,
    secret_hash BYTEA  NOT NULL UNIQUE,
    scopes      TEXT   NOT NULL,
    groups      TEXT   NOT NULL,
    created_ms  BIGINT NOT NULL,
    revoked_ms  BIGINT
);
