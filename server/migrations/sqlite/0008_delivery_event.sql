-- A webhook delivery names the logged event it carries; one delivery per (webhook, event),
-- whichever replica stores it. Deliveries stored before this have none (NULLs never clash).
ALTER TABLE webhook_deliveries ADD COLUMN event_id INTEGER;
CREATE UNIQUE INDEX webhook_deliveries_event ON webhook_deliveries (webhook, event_id);
