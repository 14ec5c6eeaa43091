-- The audit log: a transparency log whose records are the leaves of an
-- RFC 6962 Merkle tree. Portable SQL (SQLite and PostgreSQL); times are
-- Unix milliseconds. Rows are only ever inserted.

-- One row holding the number of leaves. Every append increments it first,
-- in the transaction that inserts the leaf: that holds the row lock
-- (PostgreSQL) or the write lock (SQLite) until commit, so appends from any
-- number of processes get dense indexes in one total order.
CREATE TABLE audit_head (
    id   BIGINT PRIMARY KEY,
    size BIGINT NOT NULL
);
INSERT INTO audit_head (id, size) VALUES (0, 0);

-- INVARIANT: idx is dense, 0..size-1; `leaf` is exactly the bytes hashed
-- (a record's canonical JSON) and `leaf_hash` is SHA-256(0x00 || leaf),
-- base64.
CREATE TABLE audit_leaves (
    idx        BIGINT PRIMARY KEY,
    time_ms    BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    session_id TEXT NOT NULL,
    leaf       TEXT NOT NULL,
    leaf_hash  TEXT NOT NULL
);
CREATE INDEX audit_leaves_session ON audit_leaves (session_id, time_ms, idx);

-- The tree's complete subtree hashes (leaf hashes included), base64, at
-- the positions of tlog's stored-hash layout (Crosby and Wallach): about
-- two per leaf, written with the leaf. A checkpoint or a proof reads at
-- most ~2·log2(size) of them.
CREATE TABLE audit_hashes (
    idx  BIGINT PRIMARY KEY,
    hash TEXT NOT NULL
);
