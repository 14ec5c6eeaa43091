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
pub use key::{AuditKey, KeyError, verifier_key_from_public_pem};
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

/// How durable an append is when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// On disk: the records survive a power loss (SQLite
    /// `synchronous = FULL`; PostgreSQL's synchronous commit). For records
    /// someone acts on once they are written.
    Disk,
    /// Committed, visible to every reader and in order, written to disk
    /// moments later: the records survive the writing process crashing,
    /// not the machine losing power (SQLite `synchronous = NORMAL` in WAL
    /// mode; PostgreSQL `synchronous_commit = off`, which a crash of the
    /// database server can also cut short). For records nobody waits on.
    Deferred,
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

/// Read access to a log's store, needing no key and writing nothing (it
/// does not migrate): what an auditor and `tether audit` use.
#[derive(Clone)]
pub struct AuditReader {
    pool: AnyPool,
}

impl std::fmt::Debug for AuditReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditReader").finish_non_exhaustive()
    }
}

/// The audit log: records appended as leaves of an RFC 6962 Merkle tree
/// in SQLite or PostgreSQL, checkpoints signed with the log's own key.
/// Reading goes through [`AuditReader`] (also [`AuditLog::reader`]).
#[derive(Clone)]
pub struct AuditLog {
    reader: AuditReader,
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

/// Whether `origin` can name a log: non-empty, printable, without spaces
/// or `+` (a signed-note key name).
pub fn is_valid_origin(origin: &str) -> bool {
    signed_note::is_key_name_valid(origin)
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
            reader: AuditReader { pool },
            sqlite: Backend::of(url) == Some(Backend::Sqlite),
            origin: origin.to_owned(),
            signer: key.note_signer(origin),
            append_lock: Arc::default(),
        })
    }

    /// How this store's statements write their parameters.
    fn params(&self) -> Params {
        if self.sqlite {
            Params::Positional
        } else {
            Params::Numbered
        }
    }

    /// The log's name.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Read access to the same store.
    pub fn reader(&self) -> &AuditReader {
        &self.reader
    }

    /// Appends `record` and returns its index once the row is committed
    /// (durable before the caller answers the agent). Indexes are dense,
    /// `0..n`, in one total order across every process writing the store:
    /// each append first increments the single head row, which holds a row
    /// lock (PostgreSQL) or the write lock (SQLite) until it commits.
    pub async fn append(&self, record: &AuditRecord) -> Result<u64, AuditError> {
        let appended = self.append_all(std::slice::from_ref(record)).await?;
        Ok(appended.start)
    }

    /// Appends `records`, in order, in one transaction (one commit, one
    /// flush to disk: a writer with many records in flight groups them
    /// here). Returns their indexes once committed and on disk
    /// ([`Flush::Disk`]); all or none are appended.
    pub async fn append_all(&self, records: &[AuditRecord]) -> Result<Range<u64>, AuditError> {
        self.append_all_with(records, Flush::Disk).await
    }

    /// [`AuditLog::append_all`], returning once the records are as durable
    /// as `flush` says.
    pub async fn append_all_with(
        &self,
        records: &[AuditRecord],
        flush: Flush,
    ) -> Result<Range<u64>, AuditError> {
        if records.is_empty() {
            return Err(AuditError::InvalidRecord("nothing to append"));
        }
        let leaves = records
            .iter()
            .map(|record| {
                let leaf = record.to_leaf()?;
                let hash = tlog_tiles::record_hash(leaf.as_bytes());
                Ok((leaf, hash))
            })
            .collect::<Result<Vec<_>, AuditError>>()?;
        let count = db_int(leaves.len() as u64)?;
        let _queued = self.append_lock.lock().await;

        let mut conn = self.reader.pool.acquire().await?;
        if self.sqlite {
            // Per connection, so set on every append.
            sqlx::raw_sql(match flush {
                Flush::Disk => "PRAGMA synchronous = FULL",
                Flush::Deferred => "PRAGMA synchronous = NORMAL",
            })
            .execute(&mut *conn)
            .await?;
        }
        let mut tx = conn.begin().await?;
        if !self.sqlite && flush == Flush::Deferred {
            sqlx::raw_sql("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
        }
        let size: i64 = sqlx::query_scalar(
            "UPDATE audit_head SET size = size + $1 WHERE id = 0 RETURNING size",
        )
        .bind(count)
        .fetch_one(&mut *tx)
        .await?;
        let first = u64::try_from(size - count)
            .map_err(|_| AuditError::Corrupt(format!("head size {size}")))?;
        // The hashes before this batch that its leaves read (the roots its
        // new subtrees join), in one query: a dry run of the whole batch
        // with placeholders learns their indexes, since which hashes
        // `tlog_tiles` reads depends only on the indexes (one round trip a
        // batch instead of one for each leaf that completes such a subtree).
        // INVARIANT: every append before this batch has committed (it held
        // the head row), so they are readable.
        let mut dry_run = Prefetch::default();
        for index in first..first + leaves.len() as u64 {
            let new_hashes =
                tlog_tiles::stored_hashes_for_record_hash(index, Hash::default(), &dry_run)?;
            let start = tlog_tiles::stored_hash_index(0, index);
            dry_run.add((start..).zip(new_hashes));
        }
        // The hashes this batch writes, visible to the next leaf's
        // computation before they are committed.
        let mut known = Prefetch::default();
        let before = dry_run.take_missing();
        if !before.is_empty() {
            known.add(fetch_hashes(&mut tx, &before, self.params()).await?);
        }
        let mut hashes: Vec<(u64, Hash)> = Vec::with_capacity(2 * leaves.len());
        for (index, (_, leaf_hash)) in (first..).zip(&leaves) {
            // Fetched above or computed earlier in this batch (a hash
            // still missing would be fetched here, never guessed).
            let new_hashes = with_stored_hashes(&mut tx, &mut known, self.params(), |r| {
                tlog_tiles::stored_hashes_for_record_hash(index, *leaf_hash, r)
            })
            .await?;
            let start = tlog_tiles::stored_hash_index(0, index);
            let numbered: Vec<(u64, Hash)> = (start..).zip(new_hashes).collect();
            known.add(numbered.iter().copied());
            hashes.extend(numbered);
        }

        // Multi-row inserts: a batch costs a few statements, not a few per
        // record.
        let rows: Vec<(u64, &AuditRecord, &(String, Hash))> = (first..)
            .zip(records)
            .zip(&leaves)
            .map(|((index, record), leaf)| (index, record, leaf))
            .collect();
        for chunk in rows.chunks(LEAF_ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO audit_leaves \
                 (idx, time_ms, kind, session_id, request_id, leaf, leaf_hash) VALUES {}",
                placeholders(chunk.len(), 7, self.params())
            );
            let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (index, record, (leaf, leaf_hash)) in chunk {
                insert = insert
                    .bind(db_int(*index)?)
                    .bind(record.time_ms)
                    .bind(kind_name(record.kind))
                    .bind(record.session_id.as_str())
                    .bind(record.request_id.as_str())
                    .bind(leaf.as_str())
                    .bind(leaf_hash.to_string());
            }
            insert.execute(&mut *tx).await?;
        }
        for chunk in hashes.chunks(HASH_ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO audit_hashes (idx, hash) VALUES {}",
                placeholders(chunk.len(), 2, self.params())
            );
            let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (index, hash) in chunk {
                insert = insert.bind(db_int(*index)?).bind(hash.to_string());
            }
            insert.execute(&mut *tx).await?;
        }

        tx.commit().await?;
        Ok(first..first + leaves.len() as u64)
    }

    /// Signs a checkpoint of the log as it is now.
    pub async fn checkpoint(&self) -> Result<SignedCheckpoint, AuditError> {
        let mut conn = self.reader.pool.acquire().await?;
        // Appends commit in index order, so every hash of the first `size`
        // leaves is committed once `size` is.
        let size = head_size(&mut conn).await?;
        let root = with_stored_hashes(&mut conn, &mut Prefetch::default(), self.params(), |r| {
            tlog_tiles::tree_hash(size, r)
        })
        .await?;
        Ok(checkpoint::sign(&self.signer, &self.origin, size, root)?)
    }

    /// Signs a checkpoint of the log as it is now and stores it as the
    /// published one ([`AuditReader::published_checkpoint`]) unless one of
    /// a larger tree is there already (another writer's).
    pub async fn publish_checkpoint(&self) -> Result<SignedCheckpoint, AuditError> {
        let signed = self.checkpoint().await?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        sqlx::query(
            "INSERT INTO audit_checkpoint (id, size, time_ms, note) VALUES (0, $1, $2, $3) \
             ON CONFLICT (id) DO UPDATE \
             SET size = excluded.size, time_ms = excluded.time_ms, note = excluded.note \
             WHERE excluded.size > audit_checkpoint.size",
        )
        .bind(db_int(signed.size())?)
        .bind(now_ms)
        .bind(signed.text())
        .execute(&self.reader.pool)
        .await?;
        Ok(signed)
    }

    /// How many records the log holds.
    pub async fn size(&self) -> Result<u64, AuditError> {
        self.reader.size().await
    }

    /// See [`AuditReader::inclusion_proof`].
    pub async fn inclusion_proof(
        &self,
        index: u64,
        tree_size: u64,
    ) -> Result<InclusionProof, AuditError> {
        self.reader.inclusion_proof(index, tree_size).await
    }

    /// See [`AuditReader::consistency_proof`].
    pub async fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProof, AuditError> {
        self.reader.consistency_proof(old_size, new_size).await
    }

    /// See [`AuditReader::leaves`].
    pub async fn leaves(&self, range: Range<u64>) -> Result<Vec<Leaf>, AuditError> {
        self.reader.leaves(range).await
    }

    /// See [`AuditReader::tail`].
    pub async fn tail(&self, session_id: &str) -> Result<Vec<Entry>, AuditError> {
        self.reader.tail(session_id).await
    }
}

impl AuditReader {
    /// Opens the log stored at `url` for reading. Nothing is created or
    /// migrated (a PostgreSQL connection still sets its search path to the
    /// schema [`NAMESPACE`]).
    pub async fn open(url: &str) -> Result<Self, AuditError> {
        let settings = PoolSettings {
            max_connections: 2,
            ..PoolSettings::default()
        };
        let pool = tether_store::open(url, NAMESPACE, &settings).await?;
        Ok(Self { pool })
    }

    /// How many records the log holds.
    pub async fn size(&self) -> Result<u64, AuditError> {
        let mut conn = self.pool.acquire().await?;
        head_size(&mut conn).await
    }

    /// The checkpoint a writer published last ([`AuditLog::publish_checkpoint`]),
    /// as stored: not verified here (see [`verify::checkpoint`]).
    pub async fn published_checkpoint(&self) -> Result<Option<String>, AuditError> {
        Ok(
            sqlx::query_scalar("SELECT note FROM audit_checkpoint WHERE id = 0")
                .fetch_optional(&self.pool)
                .await?,
        )
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
        let path = with_stored_hashes(&mut conn, &mut Prefetch::default(), Params::Numbered, |r| {
            tlog_tiles::prove_record(tree_size, index, r)
        })
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
            with_stored_hashes(&mut conn, &mut Prefetch::default(), Params::Numbered, |r| {
                tlog_tiles::prove_tree(new_size, old_size, r)
            })
            .await?
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
        entries(&rows)
    }

    /// The records of one request (its `request_id`, e.g. a decision id
    /// `dec_…`), in log order.
    pub async fn request(&self, request_id: &str) -> Result<Vec<Entry>, AuditError> {
        let rows =
            sqlx::query("SELECT idx, leaf FROM audit_leaves WHERE request_id = $1 ORDER BY idx")
                .bind(request_id)
                .fetch_all(&self.pool)
                .await?;
        // The column is an index for lookup; the leaf is what counts.
        Ok(entries(&rows)?
            .into_iter()
            .filter(|e| e.record.request_id == request_id)
            .collect())
    }
}

fn entries(rows: &[sqlx::any::AnyRow]) -> Result<Vec<Entry>, AuditError> {
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

/// Rows per multi-row insert, well under SQLite's and PostgreSQL's limits
/// on bound parameters.
const LEAF_ROWS_PER_INSERT: usize = 64;
const HASH_ROWS_PER_INSERT: usize = 256;

/// How a statement's bound parameters are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Params {
    /// `$1, $2, …`: PostgreSQL's, and SQLite takes them too.
    Numbered,
    /// `?, ?, …`, bound in order: SQLite only. sqlx binds each numbered
    /// parameter by asking SQLite its name, a linear search of the
    /// statement's names, so a statement of n numbered parameters costs
    /// O(n²) to bind: a 64-row insert (448 parameters) took longer to bind
    /// than to run. Anonymous ones are bound by position.
    Positional,
}

impl Params {
    /// The `n`th (from 1) parameter.
    fn push(self, sql: &mut String, n: usize) {
        match self {
            Self::Numbered => {
                use std::fmt::Write as _;
                let _ = write!(sql, "${n}");
            }
            Self::Positional => sql.push('?'),
        }
    }

    /// `$1, $2, …, $n` (or `?, ?, …`).
    fn list(self, n: usize) -> String {
        let mut sql = String::with_capacity(n * 6);
        for i in 1..=n {
            if i > 1 {
                sql.push_str(", ");
            }
            self.push(&mut sql, i);
        }
        sql
    }
}

/// `($1, $2), ($3, $4), …`: `rows` groups of `columns` parameters.
fn placeholders(rows: usize, columns: usize, params: Params) -> String {
    let mut sql = String::with_capacity(rows * columns * 6);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            params.push(&mut sql, row * columns + column + 1);
        }
        sql.push(')');
    }
    sql
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
        RecordKind::Quarantine => "quarantine",
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
/// the answer. `reader` may already know some hashes (a batch's own).
async fn with_stored_hashes<T>(
    conn: &mut AnyConnection,
    reader: &mut Prefetch,
    params: Params,
    f: impl Fn(&Prefetch) -> Result<T, tlog_tiles::Error>,
) -> Result<T, AuditError> {
    for _ in 0..2 {
        let out = f(reader)?;
        let missing = reader.take_missing();
        if missing.is_empty() {
            return Ok(out);
        }
        reader.add(fetch_hashes(conn, &missing, params).await?);
    }
    Err(AuditError::Corrupt(
        "the tree asked for hashes it did not name before".into(),
    ))
}

async fn fetch_hashes(
    conn: &mut AnyConnection,
    indexes: &[u64],
    params: Params,
) -> Result<Vec<(u64, Hash)>, AuditError> {
    let sql = format!(
        "SELECT idx, hash FROM audit_hashes WHERE idx IN ({})",
        params.list(indexes.len())
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
