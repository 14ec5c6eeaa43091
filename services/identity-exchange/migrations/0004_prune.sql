-- Pruning (`Store::prune`) selects sessions by their expiry; used
-- assertion ids already have an index on theirs.
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
