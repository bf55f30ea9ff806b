-- Job events carry the token that created their job, beside the event (never in `data`, the
-- body clients get): a token limited to groups sees the jobs it created, and their events on
-- `GET /v1/events`, in a replay too. NULL for the other kinds, and for job events logged
-- before this column: those stay visible to unlimited tokens only. Adding a nullable column
-- without a default rewrites nothing.
ALTER TABLE event_log ADD COLUMN created_by TEXT COLLATE "C";
