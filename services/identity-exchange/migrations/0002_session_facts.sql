-- What operators see of a session (ListSessions, GetSession): the user's
-- IdP, the granted scope and the declared intent, as minted. Sessions
-- recorded before this migration keep empty values.
ALTER TABLE sessions ADD COLUMN user_issuer TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN scope TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN intent TEXT NOT NULL DEFAULT '';

-- Newest first, with or without a user or agent filter.
CREATE INDEX sessions_by_start ON sessions (created_at, sid);
CREATE INDEX sessions_by_user ON sessions (sub, created_at, sid);
CREATE INDEX sessions_by_agent ON sessions (agent, created_at, sid);
