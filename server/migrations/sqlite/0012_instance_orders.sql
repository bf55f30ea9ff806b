-- One index per order the instance list offers (the store's `sort_expression`): the region,
-- the order's column, the instance id. A list is mostly of one region (a console serving one
-- lists its own), so the region's equality and the order's keyset, one row-value comparison,
-- are answered by one index walked in order; a list of several regions is in region order
-- first, on the same index. The presence's order and the version's (none reported reads as '') are
-- virtual columns, as SQLite answers a row-value comparison from an index on a column but
-- not on an expression. These columns change only with a presence, an upgrade or a change of
-- drift, never with a plain heartbeat (the ingest's upsert leaves them alone then).
ALTER TABLE instances ADD COLUMN presence_rank INTEGER
    GENERATED ALWAYS AS (CASE presence WHEN 'online' THEN 0 WHEN 'stale' THEN 1 ELSE 2 END) VIRTUAL;
ALTER TABLE instances ADD COLUMN version_key TEXT
    GENERATED ALWAYS AS (COALESCE(agent_version, '')) VIRTUAL;
CREATE INDEX instances_by_rank ON instances (region, presence_rank, instance_id);
CREATE INDEX instances_by_since ON instances (region, since_ms, instance_id);
CREATE INDEX instances_by_version ON instances (region, version_key, instance_id);
CREATE INDEX instances_by_drift ON instances (region, drift, instance_id);
CREATE INDEX instances_by_region_group ON instances (region, group_id, instance_id);
