-- Pruning (`Registry::prune`) selects terminal leases by when they were
-- revoked, and sessions by their expiry.
CREATE INDEX credential_leases_ended ON credential_leases (status, revoked_at);
CREATE INDEX credential_sessions_expiry ON credential_sessions (expires_at);
