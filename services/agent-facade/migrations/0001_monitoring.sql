-- The agent facade's risk monitoring (docs/design/011-monitoring.md).
-- Portable SQL (SQLite and PostgreSQL): times are Unix milliseconds,
-- buckets are Unix milliseconds / 10000.

-- Events counted per scope ('session' or 'agent'), subject (the session id
-- or the agent id), counter name and 10-second bucket. A sliding window
-- sums the buckets it covers. Incremented with an upsert, so replicas
-- sharing one PostgreSQL add to the same rows. A resource touched is a
-- counter named '@<resource>' (never a signal name): distinct resources
-- per minute are distinct such names.
CREATE TABLE monitoring_counts (
    scope    TEXT NOT NULL,
    subject  TEXT NOT NULL,
    signal   TEXT NOT NULL,
    bucket   BIGINT NOT NULL,
    count    BIGINT NOT NULL,
    PRIMARY KEY (scope, subject, signal, bucket)
);
CREATE INDEX monitoring_counts_bucket ON monitoring_counts (bucket);

-- Events that count once however often they are seen (an approval
-- ticket's outcome, seen by every watch of it on every replica).
CREATE TABLE monitoring_once (
    key  TEXT PRIMARY KEY,
    at   BIGINT NOT NULL
);

-- Quarantines. At most one open (not lifted) row per kind and subject:
-- the facade whose INSERT wins raises the alert, the others see it exists.
CREATE TABLE quarantines (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,      -- 'session' or 'agent'
    subject      TEXT NOT NULL,      -- the session id or the agent id
    rule         TEXT NOT NULL,
    reason       TEXT NOT NULL,
    session_id   TEXT NOT NULL,      -- the session whose behaviour fired the rule
    agent        TEXT NOT NULL,
    user_sub     TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    until_at     BIGINT,             -- agent quarantines end by themselves then
    lifted_at    BIGINT,
    lifted_by    TEXT NOT NULL,
    lift_reason  TEXT NOT NULL
);
CREATE UNIQUE INDEX quarantines_open ON quarantines (kind, subject) WHERE lifted_at IS NULL;
CREATE INDEX quarantines_created ON quarantines (created_at);
