-- Jobs: one method over many gateways. A job's progress is counted from its execution rows,
-- never stored as a total. Times are milliseconds since the Unix epoch.
CREATE TABLE jobs (
    id             TEXT    NOT NULL PRIMARY KEY,
    region         TEXT    NOT NULL,
    parent_job_id  TEXT,
    method         TEXT    NOT NULL,
    -- The request as accepted, defaults filled in (JSON); parsed again when loaded.
    spec           TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'paused', 'succeeded',
                                                      'failed', 'aborted', 'cancelled')),
    state_reason   TEXT,
    -- 1 while a runner has something to do (sending, or waiting for in-flight executions).
    active         INTEGER NOT NULL,
    current_wave   INTEGER NOT NULL,
    last_wave      INTEGER NOT NULL,
    created_by     TEXT    NOT NULL,
    created_ms     INTEGER NOT NULL,
    started_ms     INTEGER,
    finished_ms    INTEGER,
    deadline_ms    INTEGER NOT NULL,
    -- The runner that owns the job, until when (a replica takes over an expired lease).
    lease_owner    TEXT,
    lease_until_ms INTEGER
);
CREATE INDEX jobs_by_created ON jobs (created_ms, id);
CREATE INDEX jobs_active ON jobs (active, region, created_ms);

CREATE TABLE job_executions (
    job_id           TEXT    NOT NULL REFERENCES jobs (id),
    seq              INTEGER NOT NULL,
    instance_id      TEXT    NOT NULL,
    group_id         TEXT    NOT NULL,
    wave             INTEGER NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('queued', 'in_progress', 'succeeded',
                                                        'failed', 'timed_out', 'rejected',
                                                        'cancelled')),
    request_id       TEXT    NOT NULL,
    attempts         INTEGER NOT NULL,
    next_attempt_ms  INTEGER NOT NULL,
    error_code       TEXT,
    error_message    TEXT,
    reply            TEXT,
    first_started_ms INTEGER,
    finished_ms      INTEGER,
    updated_ms       INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq),
    UNIQUE (job_id, instance_id)
);
CREATE INDEX job_executions_by_state ON job_executions (job_id, state, wave, seq);
