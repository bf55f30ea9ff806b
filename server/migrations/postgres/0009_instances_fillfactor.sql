-- Every flush rewrites the row of each gateway that sent a heartbeat. With room left on its
-- page, PostgreSQL writes the new version beside the old one without new index entries (a
-- "HOT" update) whenever no indexed column (group_id, presence, drift, the key) changes value:
-- far less WAL and index work per heartbeat, and index scans that meet fewer dead entries.
-- Half of each page is kept free for that. Applies to pages written from now on (a table
-- rewritten by VACUUM FULL gets it everywhere).
ALTER TABLE instances SET (fillfactor = 50);
