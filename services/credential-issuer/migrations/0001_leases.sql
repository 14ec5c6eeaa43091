-- The credential issuer's lease registry. Portable SQL (SQLite and
-- PostgreSQL): times are Unix milliseconds, booleans 0/1.

CREATE TABLE credential_sessions (
    session_id  TEXT PRIMARY KEY,
    -- The latest `session_expires_at` an Issue call carried.
    expires_at  BIGINT NOT NULL,
    -- Set once by RevokeSession; a session with ended_at never gets a lease.
    ended_at    BIGINT,
    end_reason  TEXT,
    created_at  BIGINT NOT NULL
);

-- INVARIANT: a row is written (status ISSUING) before Vault is asked for the
-- secret, and `vault_lease_id` is filled in only before `issuing_deadline`
-- (or the row goes to REVOKING). See docs/design/002-lease-registry.md.
CREATE TABLE credential_leases (
    id                  TEXT PRIMARY KEY,
    session_id          TEXT NOT NULL,
    profile             TEXT NOT NULL,
    vault_path          TEXT NOT NULL,
    vault_lease_id      TEXT,
    status              TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    issuing_deadline    BIGINT NOT NULL,
    issued_at           BIGINT,
    granted_ttl_secs    BIGINT,
    expires_at          BIGINT,
    renewable           BIGINT NOT NULL DEFAULT 0,
    revoked_at          BIGINT,
    revocation_attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at     BIGINT,
    last_error          TEXT,
    action              TEXT NOT NULL DEFAULT '',
    resource            TEXT NOT NULL DEFAULT '',
    intent              TEXT NOT NULL DEFAULT '',
    policy_version      TEXT NOT NULL DEFAULT '',
    decision_id         TEXT NOT NULL DEFAULT '',
    policy_ids          TEXT NOT NULL DEFAULT '[]',
    approval_ticket_id  TEXT NOT NULL DEFAULT '',
    user_subject        TEXT NOT NULL DEFAULT '',
    agent_id            TEXT NOT NULL DEFAULT ''
);

CREATE INDEX credential_leases_session ON credential_leases (session_id, created_at);
CREATE INDEX credential_leases_status ON credential_leases (status, next_attempt_at);
CREATE INDEX credential_leases_vault ON credential_leases (vault_path, vault_lease_id);
