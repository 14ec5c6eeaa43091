-- Sessions opened by token exchange. Times are Unix milliseconds.
CREATE TABLE sessions (
    sid TEXT PRIMARY KEY,
    sub TEXT NOT NULL,
    agent TEXT NOT NULL,
    audience TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    revoke_reason TEXT
);
CREATE INDEX sessions_revoked_at ON sessions (revoked_at);

-- Actor assertion ids already used (RFC 7523 single-use `jti`), kept until
-- the assertion would have expired anyway.
CREATE TABLE used_assertions (
    issuer TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX used_assertions_expires_at ON used_assertions (expires_at);
