-- The web console's sign-in sessions. The cookie's secret is never stored: only its SHA-256.
-- A session belongs to the token signed in with; revoking that token ends it (the lookup joins
-- the token and requires it unrevoked), so nothing has to be deleted at revocation.
CREATE TABLE web_sessions (
    id_hash    BYTEA  NOT NULL PRIMARY KEY,
    token_id   BIGINT NOT NULL REFERENCES tokens (id),
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX web_sessions_by_expiry ON web_sessions (expires_ms);
