-- The approval orchestrator's tickets and grants. Portable SQL (SQLite and
-- PostgreSQL): times are Unix milliseconds. See
-- docs/design/005-approval-tickets.md for the state machine.

-- One question to one user. `state` moves from PENDING to exactly one
-- terminal state by a conditional UPDATE (… WHERE state = 'PENDING').
CREATE TABLE approval_tickets (
    id                      TEXT PRIMARY KEY,
    session_id              TEXT NOT NULL,
    -- SHA-256 of (session, action, resource, intent): the ticket's scope.
    scope_key               TEXT NOT NULL,
    user_subject            TEXT NOT NULL,
    agent_id                TEXT NOT NULL,
    action                  TEXT NOT NULL,
    resource                TEXT NOT NULL,
    intent                  TEXT NOT NULL,
    binding_message         TEXT NOT NULL,
    confirmation_code       TEXT NOT NULL,
    delivery_mode           TEXT NOT NULL,
    state                   TEXT NOT NULL,
    state_reason            TEXT NOT NULL DEFAULT '',
    created_at              BIGINT NOT NULL,
    expires_at              BIGINT NOT NULL,
    session_expires_at      BIGINT NOT NULL,
    decided_at              BIGINT,
    approver                TEXT NOT NULL DEFAULT '',
    -- Whether the IdP was asked: 0 not yet, 1 accepted, -1 refused (the
    -- phone was not asked), 2 unknown (the IdP did not answer).
    sent                    BIGINT NOT NULL DEFAULT 0,
    -- The IdP's delivery handle, once it accepted the request.
    auth_req_id             TEXT,
    poll_interval_ms        BIGINT,
    deadline                BIGINT,
    -- SHA-256 of the ping mode `client_notification_token`; never the token.
    notification_token_hash TEXT,
    -- The replica driving the ticket, until `owner_until`.
    owner                   TEXT,
    owner_until             BIGINT,
    -- A ping received by a replica that does not own the ticket.
    ping_at                 BIGINT,
    policy_ids              TEXT NOT NULL DEFAULT '[]',
    policy_version          TEXT NOT NULL DEFAULT '',
    grant_id                TEXT
);

-- INVARIANT: at most one PENDING ticket per scope.
CREATE UNIQUE INDEX approval_tickets_pending_scope
    ON approval_tickets (scope_key) WHERE state = 'PENDING';
CREATE INDEX approval_tickets_user ON approval_tickets (user_subject, created_at);
CREATE INDEX approval_tickets_session ON approval_tickets (session_id, state);
CREATE INDEX approval_tickets_state ON approval_tickets (state, owner_until);
CREATE INDEX approval_tickets_auth_req ON approval_tickets (auth_req_id);

-- A standing approval for one scope. A use is consumed by one conditional
-- UPDATE (… WHERE remaining_uses > 0).
CREATE TABLE approval_grants (
    id              TEXT PRIMARY KEY,
    ticket_id       TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    scope_key       TEXT NOT NULL,
    action          TEXT NOT NULL,
    resource        TEXT NOT NULL,
    intent          TEXT NOT NULL,
    approver        TEXT NOT NULL,
    granted_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    remaining_uses  BIGINT NOT NULL,
    initial_uses    BIGINT NOT NULL,
    revoked_at      BIGINT
);

CREATE INDEX approval_grants_scope ON approval_grants (scope_key, expires_at);
CREATE INDEX approval_grants_session ON approval_grants (session_id);

-- Sessions ended by CancelSession: refused from then on.
CREATE TABLE approval_cancelled_sessions (
    session_id    TEXT PRIMARY KEY,
    cancelled_at  BIGINT NOT NULL,
    reason        TEXT NOT NULL
);

-- One row per user, updated first in every transaction that may prompt the
-- user: the row lock serializes the rate-limit check and the new ticket
-- across replicas (PostgreSQL) and writers (SQLite).
CREATE TABLE approval_users (
    user_subject  TEXT PRIMARY KEY,
    prompts       BIGINT NOT NULL
);
