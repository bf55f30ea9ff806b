-- One index per order the instance list offers (the store's `sort_expression`), each ending in
-- the primary key, so a page of any order starts by keyset: one row-value comparison the
-- index answers. The presence's order and the version's (none reported reads as '') are
-- generated columns, named alike on both engines. These columns change only with a presence,
-- an upgrade or a change of drift, never with a plain heartbeat: PostgreSQL compares the
-- values, so a heartbeat's update of a row stays HOT (0009).
-- The group's order uses instances_by_group (0001).
ALTER TABLE instances ADD COLUMN presence_rank SMALLINT
    GENERATED ALWAYS AS (CASE presence WHEN 'online' THEN 0 WHEN 'stale' THEN 1 ELSE 2 END) STORED;
ALTER TABLE instances ADD COLUMN version_key TEXT
    GENERATED ALWAYS AS (COALESCE(agent_version, '')) STORED;
CREATE INDEX instances_by_rank ON instances (presence_rank, region, instance_id);
CREATE INDEX instances_by_since ON instances (since_ms, region, instance_id);
CREATE INDEX instances_by_version ON instances (version_key, region, instance_id);
CREATE INDEX instances_by_drift ON instances (drift, region, instance_id);
