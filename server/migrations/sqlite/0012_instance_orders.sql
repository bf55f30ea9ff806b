-- One index per order the instance list offers (the store's `sort_expression`), each ending in
-- the primary key, so a page of any order starts by keyset: one row-value comparison the
-- index answers. The presence's order and the version's (none reported reads as '') are
-- virtual columns, as SQLite answers a row-value comparison from an index on a column but
-- not on an expression. These columns change only with a presence, an upgrade or a change of
-- drift, never with a plain heartbeat (the ingest's upsert leaves them alone then).
-- The group's order uses instances_by_group (0001).
ALTER TABLE instances ADD COLUMN presence_rank INTEGER
    GENERATED ALWAYS AS (CASE presence WHEN 'online' THEN 0 WHEN 'stale' THEN 1 ELSE 2 END) VIRTUAL;
ALTER TABLE instances ADD COLUMN version_key TEXT
    GENERATED ALWAYS AS (COALESCE(agent_version, '')) VIRTUAL;
CREATE INDEX instances_by_rank ON instances (presence_rank, region, instance_id);
CREATE INDEX instances_by_since ON instances (since_ms, region, instance_id);
CREATE INDEX instances_by_version ON instances (version_key, region, instance_id);
CREATE INDEX instances_by_drift ON instances (drift, region, instance_id);
