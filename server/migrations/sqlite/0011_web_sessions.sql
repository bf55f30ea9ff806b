-- The web console's sign-in sessions. The cookie's secret is never stored: only its SHA-256.
-- A session belongs to the token signed in with; revoking that token ends it (the lookup joins
-- the token and requires it unrevoked), so nothing has to be deleted at revocation.
CREATE TABLE web_sessions (
    id_hash    BLOB    NOT NULL PRIMARY KEY,
    token_id   INTEGER NOT NULL REFERENCES tokens (id),
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX web_sessions_by_expiry ON web_sessions (expires_ms);

-- The web console's fleet counts (by presence and agent version, and those with drift) read
-- this index alone, never the rows with their heartbeat text: a scan of a few bytes per
-- gateway instead of the whole table.
CREATE INDEX instances_summary ON instances (region, presence, agent_version, drift, group_id);
