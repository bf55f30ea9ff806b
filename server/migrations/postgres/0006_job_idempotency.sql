-- At most one retry per job, and Idempotency-Key on job creation (as SQLite's 0006).
-- retried_by: the child job retry-failed made of this one; set once, in the transaction that
-- stores the child, only while it is NULL.
ALTER TABLE jobs ADD COLUMN retried_by TEXT COLLATE "C";
-- request_hash: for a job created with an Idempotency-Key (its id derives from the key), the
-- SHA-256 of the request body, so a repeat of the key with another body is told apart.
ALTER TABLE jobs ADD COLUMN request_hash TEXT;
