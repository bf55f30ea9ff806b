-- Calls left pending by a process that died before it stored their outcome.
-- timeout_ms: the call's budget, so a sweeper knows when no process can still be waiting for
-- its answer (NULL for calls stored before this column: the longest budget is assumed).
-- swept_until_ms: a sweeper's lease on the call while it re-sends it or marks it; another
-- process takes it only once the lease has passed.
ALTER TABLE calls ADD COLUMN timeout_ms BIGINT;
ALTER TABLE calls ADD COLUMN swept_until_ms BIGINT;
CREATE INDEX calls_pending ON calls (started_ms) WHERE state = 'pending';
