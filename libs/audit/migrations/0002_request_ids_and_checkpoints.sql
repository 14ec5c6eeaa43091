-- The id the agent was given for the request a record belongs to
-- (`dec_…`, `rcpt_…`), so `tether audit proof --record <id>` finds it. A
-- copy of the leaf's `request_id`, for lookup only: the leaf is what is
-- hashed and what a verifier trusts.
ALTER TABLE audit_leaves ADD COLUMN request_id TEXT NOT NULL DEFAULT '';
CREATE INDEX audit_leaves_request ON audit_leaves (request_id);

-- The latest checkpoint published by a writer of the log (one row). A
-- writer replaces it only with a larger tree, so with several replicas it
-- never moves backwards. It is signed, so it is not trusted for being
-- here: auditors verify it with the log's verifier key and keep their own
-- copies (`tether audit checkpoint --out`) to catch a rollback.
CREATE TABLE audit_checkpoint (
    id      BIGINT PRIMARY KEY,
    size    BIGINT NOT NULL,
    time_ms BIGINT NOT NULL,
    note    TEXT NOT NULL
);
