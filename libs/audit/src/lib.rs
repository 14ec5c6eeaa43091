#![doc = include_str!("../README.md")]

mod checkpoint;
mod key;
mod record;
mod tree;
pub mod verify;

use std::ops::Range;
use std::sync::Arc;

use sqlx::{AnyConnection, AnyPool, Connection as _, Row as _};
use tether_store::{Backend, PoolSettings, StoreError};

pub use checkpoint::{SignError, SignedCheckpoint};
pub use key::{AuditKey, KeyError};
pub use record::{AuditRecord, MAX_LEAF_BYTES, RecordKind};
/// An RFC 6962 hash (SHA-256); `Display` is base64.
pub use tlog_tiles::Hash;

use crate::key::NoteSigner;
use crate::tree::Prefetch;

/// The audit log's embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The PostgreSQL schema the log's tables live in.
pub const NAMESPACE: &str = "audit";

/// Why the log could not be opened, written or read. An append that fails
/// wrote nothing: callers deny the request (an audit store that cannot be
/// written is a deny).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("log origin `{0}` must be non-empty, without spaces or `+`")]
    BadOrigin(String),
    #[error("invalid record: {0}")]
    InvalidRecord(&'static str),
    #[error("encoded record is {len} bytes, more than the {max} allowed")]
    RecordTooLarge { len: usize, max: usize },
    #[error("encoding the record: {0}")]
    Encode(serde_json::Error),
    #[error("stored record {index} is not a record: {source}")]
    Decode {
        index: u64,
        source: serde_json::Error,
    },
    #[error("{what} is out of range: the log holds {size} records")]
    OutOfRange { what: &'static str, size: u64 },
    #[error("the audit store is damaged: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("merkle tree: {0}")]
    Tree(#[from] tlog_tiles::Error),
}

/// One leaf as stored: its index, the exact bytes hashed (a record's JSON,
/// see [`AuditRecord::to_leaf`]) and the stored RFC 6962 leaf hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    pub index: u64,
    pub data: String,
    pub hash: Hash,
}

/// A record with its place in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub index: u64,
    pub record: AuditRecord,
}

/// Proof that record `index` is in the tree of `tree_size` records (an
/// RFC 6962 audit path); check it with [`verify::inclusion`].
#[derive(Debug, Clone, PartialEq)]
pub struct InclusionProof {
    pub index: u64,
    pub tree_size: u64,
    pub path: Vec<Hash>,
}

/// Proof that the tree of `new_size` records extends the tree of
/// `old_size` records (an RFC 6962 consistency proof); check it with
/// [`verify::consistency`].
#[derive(Debug, Clone, PartialEq)]
pub struct ConsistencyProof {
    pub old_size: u64,
    pub new_size: u64,
    pub path: Vec<Hash>,
}

/// The audit log: records appended as leaves of an RFC 6962 Merkle tree
/// in SQLite or PostgreSQL, checkpoints signed with the log's own key.
#[derive(Clone)]
pub struct AuditLog {
    pool: AnyPool,
    sqlite: bool,
    origin: String,
    signer: NoteSigner,
    /// Appends from this process queue here instead of in the database
    /// (which serializes them anyway, across processes).
    append_lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (and migrates) the log stored at `url` (`sqlite://…` or
    /// `postgres://…`, tables in the schema [`NAMESPACE`]). `origin` names
    /// the log in its checkpoints and its verifier key, e.g.
    /// `audit.tether.example`; `key` signs the checkpoints.
    pub async fn open(url: &str, key: AuditKey, origin: &str) -> Result<Self, AuditError> {
        if !signed_note::is_key_name_valid(origin) {
            return Err(AuditError::BadOrigin(tether_runtime::clip(origin)));
        }
        let pool = tether_store::open(url, NAMESPACE, &PoolSettings::default()).await?;
        tether_store::migrate(&pool, &MIGRATOR).await?;
        Ok(Self {
            pool,
            sqlite: Backend::of(url) == Some(Backend::Sqlite),
            origin: origin.to_owned(),
            signer: key.note_signer(origin),
            append_lock: Arc::default(),
        })
    }

    /// The log's name.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Appends `record` and returns its index once the row is committed
    /// (durable before the caller answers the agent). Indexes are dense,
    /// `0..n`, in one total order across every process writing the store:
    /// each append first increments the single head row, which holds a row
    /// lock (PostgreSQL) or the write lock (SQLite) until it commits.
    pub async fn append(&self, record: &AuditRecord) -> Result<u64, AuditError> {
        let leaf = record.to_leaf()?;
        let leaf_hash = tlog_tiles::record_hash(leaf.as_bytes());
        let _queued = self.append_lock.lock().await;

        let mut conn = self.pool.acquire().await?;
        if self.sqlite {
            // tether-store opens SQLite with `synchronous = NORMAL` (a
            // commit survives a process crash); a record must also survive
            // a power loss once the agent has its answer.
            sqlx::raw_sql("PRAGMA synchronous = FULL")
                .execute(&mut *conn)
                .await?;
        }
        let mut tx = conn.begin().await?;
        let size: i64 =
            sqlx::query_scalar("UPDATE audit_head SET size = size + 1 WHERE id = 0 RETURNING size")
                .fetch_one(&mut *tx)
                .await?;
        let index = u64::try_from(size - 1)
            .map_err(|_| AuditError::Corrupt(format!("head size {size}")))?;
        // INVARIANT: every append before this one has committed (it held
        // the head row), so the hashes this leaf completes are readable.
        let new_hashes = with_stored_hashes(&mut tx, |r| {
            tlog_tiles::stored_hashes_for_record_hash(index, leaf_hash, r)
        })
        .await?;

        sqlx::query(
            "INSERT INTO audit_leaves (idx, time_ms, kind, session_id, leaf, leaf_hash) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(db_int(index)?)
        .bind(record.time_ms)
        .bind(kind_name(record.kind))
        .bind(&record.session_id)
        .bind(&leaf)
        .bind(leaf_hash.to_string())
        .execute(&mut *tx)
        .await?;

        let first = tlog_tiles::stored_hash_index(0, index);
        let mut sql = String::from("INSERT INTO audit_hashes (idx, hash) VALUES ");
        for i in 0..new_hashes.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("(${}, ${})", 2 * i + 1, 2 * i + 2));
        }
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (offset, hash) in (0_u64..).zip(&new_hashes) {
            insert = insert.bind(db_int(first + offset)?).bind(hash.to_string());
        }
        insert.execute(&mut *tx).await?;

        tx.commit().await?;
        Ok(index)
    }

    /// How many records the log holds.
    pub async fn size(&self) -> Result<u64, AuditError> {
        let mut conn = self.pool.acquire().await?;
        head_size(&mut conn).await
    }

    /// Signs a checkpoint of the log as it is now.
    pub async fn checkpoint(&self) -> Result<SignedCheckpoint, AuditError> {
        let mut conn = self.pool.acquire().await?;
        // Appends commit in index order, so every hash of the first `size`
        // leaves is committed once `size` is.
        let size = head_size(&mut conn).await?;
        let root = with_stored_hashes(&mut conn, |r| tlog_tiles::tree_hash(size, r)).await?;
        Ok(checkpoint::sign(&self.signer, &self.origin, size, root)?)
    }

    /// Proof that record `index` is in the tree of the first `tree_size`
    /// records (the size of a checkpoint the verifier holds).
    pub async fn inclusion_proof(
        &self,
        index: u64,
        tree_size: u64,
    ) -> Result<InclusionProof, AuditError> {
        let mut conn = self.pool.acquire().await?;
        let size = head_size(&mut conn).await?;
        if tree_size > size {
            return Err(AuditError::OutOfRange {
                what: "tree size",
                size,
            });
        }
        if index >= tree_size {
            return Err(AuditError::OutOfRange {
                what: "record index",
                size: tree_size,
            });
        }
        let path = with_stored_hashes(&mut conn, |r| tlog_tiles::prove_record(tree_size, index, r))
            .await?;
        Ok(InclusionProof {
            index,
            tree_size,
            path,
        })
    }

    /// Proof that the tree of `new_size` records extends the tree of
    /// `old_size` records.
    pub async fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProof, AuditError> {
        let mut conn = self.pool.acquire().await?;
        let size = head_size(&mut conn).await?;
        if new_size > size {
            return Err(AuditError::OutOfRange {
                what: "new tree size",
                size,
            });
        }
        if old_size > new_size {
            return Err(AuditError::OutOfRange {
                what: "old tree size",
                size: new_size,
            });
        }
        let path = if old_size == 0 {
            Vec::new()
        } else {
            with_stored_hashes(&mut conn, |r| tlog_tiles::prove_tree(new_size, old_size, r)).await?
        };
        Ok(ConsistencyProof {
            old_size,
            new_size,
            path,
        })
    }

    /// The stored leaves with indexes in `range`, in index order, for
    /// [`verify::log`].
    pub async fn leaves(&self, range: Range<u64>) -> Result<Vec<Leaf>, AuditError> {
        let rows = sqlx::query(
            "SELECT idx, leaf, leaf_hash FROM audit_leaves WHERE idx >= $1 AND idx < $2 \
             ORDER BY idx",
        )
        .bind(i64::try_from(range.start).unwrap_or(i64::MAX))
        .bind(i64::try_from(range.end).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let index = stored_index(row.try_get("idx")?)?;
                let hash: String = row.try_get("leaf_hash")?;
                Ok(Leaf {
                    index,
                    data: row.try_get("leaf")?,
                    hash: Hash::parse_hash(&hash)
                        .map_err(|_| AuditError::Corrupt(format!("leaf hash of record {index}")))?,
                })
            })
            .collect()
    }

    /// One session's records in time order (ties in log order).
    pub async fn tail(&self, session_id: &str) -> Result<Vec<Entry>, AuditError> {
        let rows = sqlx::query(
            "SELECT idx, leaf FROM audit_leaves WHERE session_id = $1 ORDER BY time_ms, idx",
        )
        .bind(session_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let index = stored_index(row.try_get("idx")?)?;
                let leaf: String = row.try_get("leaf")?;
                let record = AuditRecord::from_leaf(&leaf)
                    .map_err(|source| AuditError::Decode { index, source })?;
                Ok(Entry { index, record })
            })
            .collect()
    }
}

fn kind_name(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Decision => "decision",
        RecordKind::Issuance => "issuance",
        RecordKind::Approval => "approval",
        RecordKind::Denial => "denial",
        RecordKind::Revocation => "revocation",
        RecordKind::SessionEnd => "session_end",
        RecordKind::Failure => "failure",
    }
}

fn db_int(n: u64) -> Result<i64, AuditError> {
    i64::try_from(n).map_err(|_| AuditError::Corrupt(format!("index {n} does not fit a BIGINT")))
}

fn stored_index(n: i64) -> Result<u64, AuditError> {
    u64::try_from(n).map_err(|_| AuditError::Corrupt(format!("negative index {n}")))
}

async fn head_size(conn: &mut AnyConnection) -> Result<u64, AuditError> {
    let size: i64 = sqlx::query_scalar("SELECT size FROM audit_head WHERE id = 0")
        .fetch_one(&mut *conn)
        .await?;
    stored_index(size)
}

/// Runs `f` (a `tlog_tiles` function reading stored hashes) against the
/// store. The hashes a `tlog_tiles` function reads depend only on the sizes
/// and indexes it is given, so a dry run with placeholders learns them all,
/// one query fetches them (at most ~2·log₂ n), and a second run computes
/// the answer.
async fn with_stored_hashes<T>(
    conn: &mut AnyConnection,
    f: impl Fn(&Prefetch) -> Result<T, tlog_tiles::Error>,
) -> Result<T, AuditError> {
    let mut reader = Prefetch::default();
    for _ in 0..2 {
        let out = f(&reader)?;
        let missing = reader.take_missing();
        if missing.is_empty() {
            return Ok(out);
        }
        reader.add(fetch_hashes(conn, &missing).await?);
    }
    Err(AuditError::Corrupt(
        "the tree asked for hashes it did not name before".into(),
    ))
}

async fn fetch_hashes(
    conn: &mut AnyConnection,
    indexes: &[u64],
) -> Result<Vec<(u64, Hash)>, AuditError> {
    let placeholders: Vec<String> = (1..=indexes.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT idx, hash FROM audit_hashes WHERE idx IN ({})",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for &i in indexes {
        query = query.bind(db_int(i)?);
    }
    let rows = query.fetch_all(&mut *conn).await?;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let index = stored_index(row.try_get("idx")?)?;
        let hash: String = row.try_get("hash")?;
        let hash = Hash::parse_hash(&hash)
            .map_err(|_| AuditError::Corrupt(format!("stored hash {index}")))?;
        found.push((index, hash));
    }
    if found.len() != indexes.len() {
        return Err(AuditError::Corrupt(format!(
            "{} of {} stored hashes are missing",
            indexes.len() - found.len(),
            indexes.len()
        )));
    }
    Ok(found)
}

#[cfg(test)]
#[path = "lib_tests.rs"]
mod tests;
