-- Jobs: one method over many gateways (the same logical schema as SQLite's). A job's progress
-- is counted from its execution rows, never stored as a total. Times are milliseconds since the
-- Unix epoch; keys compare bytewise (COLLATE "C") as SQLite's do.
CREATE TABLE jobs (
    id             TEXT   COLLATE "C" NOT NULL PRIMARY KEY,
    region         TEXT   COLLATE "C" NOT NULL,
    parent_job_id  TEXT   COLLATE "C",
    method         TEXT   NOT NULL,
    -- The request as accepted, defaults filled in (JSON); parsed again when loaded.
    spec           TEXT   NOT NULL,
    state          TEXT   NOT NULL CHECK (state IN ('queued', 'running', 'paused', 'succeeded',
                                                     'failed', 'aborted', 'cancelled')),
    state_reason   TEXT,
    -- 1 while a runner has something to do (sending, or waiting for in-flight executions).
    active         BIGINT NOT NULL,
    current_wave   BIGINT NOT NULL,
    last_wave      BIGINT NOT NULL,
    created_by     TEXT   COLLATE "C" NOT NULL,
    created_ms     BIGINT NOT NULL,
    started_ms     BIGINT,
    finished_ms    BIGINT,
    deadline_ms    BIGINT NOT NULL,
    -- The runner that owns the job, until when (a replica takes over an expired lease).
    lease_owner    TEXT,
    lease_until_ms BIGINT
);
CREATE INDEX jobs_by_created ON jobs (created_ms, id);
CREATE INDEX jobs_active ON jobs (active, region, created_ms);

CREATE TABLE job_executions (
    job_id           TEXT   COLLATE "C" NOT NULL REFERENCES jobs (id),
    seq              BIGINT NOT NULL,
    instance_id      TEXT   COLLATE "C" NOT NULL,
    group_id         TEXT   COLLATE "C" NOT NULL,
    wave             BIGINT NOT NULL,
    state            TEXT   NOT NULL CHECK (state IN ('queued', 'in_progress', 'succeeded',
                                                       'failed', 'timed_out', 'rejected',
                                                       'cancelled')),
    request_id       TEXT   NOT NULL,
    attempts         BIGINT NOT NULL,
    next_attempt_ms  BIGINT NOT NULL,
    error_code       TEXT,
    error_message    TEXT,
    reply            TEXT,
    first_started_ms BIGINT,
    finished_ms      BIGINT,
    updated_ms       BIGINT NOT NULL,
    PRIMARY KEY (job_id, seq),
    UNIQUE (job_id, instance_id)
);
CREATE INDEX job_executions_by_state ON job_executions (job_id, state, wave, seq);
