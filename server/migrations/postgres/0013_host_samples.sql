-- A gateway's recent heartbeats' host figures (time, CPU, memory), for its chart: the last 60,
-- 8 characters each (store::HostSample), appended by the upsert that writes a heartbeat and
-- cut at the front past 60. One text per row rather than a row per heartbeat: the chart needs
-- only the recent ones, and the write a heartbeat already makes carries them. No index holds it.
ALTER TABLE instances ADD COLUMN recent TEXT NOT NULL DEFAULT '';
