-- Drift as a column of its own, so "gateways with drift" is an indexed query rather than a
-- scan that parses every row's storage document. Filled from the documents already stored.
ALTER TABLE instances ADD COLUMN drift INTEGER NOT NULL DEFAULT 0;
UPDATE instances SET drift = COALESCE(json_extract(storage, '$.drift'), 0)
    WHERE storage IS NOT NULL AND json_valid(storage);
-- Few gateways drift at a time: a partial index holds only those.
CREATE INDEX instances_with_drift ON instances (region, instance_id) WHERE drift > 0;
