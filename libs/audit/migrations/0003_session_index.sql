-- One session's records are few: found by session alone and sorted. An
-- index on (session_id, time_ms, idx) costs SQLite about as much per append
-- as everything else an append does together.
DROP INDEX audit_leaves_session;
CREATE INDEX audit_leaves_session ON audit_leaves (session_id);
