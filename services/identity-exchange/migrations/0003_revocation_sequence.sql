-- The revocation feed pages on a sequence assigned by the database, never
-- on a replica's clock (docs/design/009-revocation-feed.md).
--
-- `revocation_counter` holds one row. Every revocation increments it in
-- the same transaction that marks the session revoked, so the row lock
-- makes revocations take their numbers one at a time and become visible
-- in number order: a reader that sees number N sees every number below N.
ALTER TABLE sessions ADD COLUMN revoked_seq BIGINT;
CREATE TABLE revocation_counter (
    id BIGINT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);
INSERT INTO revocation_counter (id, last_seq) VALUES (1, 0);

-- Revocations recorded before this migration are numbered in their old
-- feed order (revoked_at, sid).
UPDATE sessions SET revoked_seq = (
    SELECT COUNT(*) FROM sessions AS earlier
    WHERE earlier.revoked_at IS NOT NULL
      AND (earlier.revoked_at < sessions.revoked_at
           OR (earlier.revoked_at = sessions.revoked_at AND earlier.sid <= sessions.sid))
) WHERE revoked_at IS NOT NULL;
UPDATE revocation_counter SET last_seq = (SELECT COUNT(*) FROM sessions WHERE revoked_at IS NOT NULL);

CREATE UNIQUE INDEX sessions_by_revocation ON sessions (revoked_seq);
