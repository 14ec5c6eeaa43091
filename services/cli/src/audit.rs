//! `tether audit verify|checkpoint|proof|tail`: an auditor's view of the
//! facade's audit log, straight from its store (`sqlite://…`,
//! `postgres://…` or a SQLite file path), with nothing but the log's
//! verifier key.
//!
//! - `verify` recomputes the whole RFC 6962 tree from the stored records,
//!   checks the latest published checkpoint's signature and root, and, given
//!   a checkpoint saved earlier, proves the log an extension of it. An
//!   altered, removed, reordered or inserted record changes the root; a
//!   truncated tail (even one the log has since grown past) is
//!   inconsistent with a checkpoint saved before the cut, which is why
//!   auditors save checkpoints over time.
//! - `checkpoint` saves the latest published checkpoint for a later
//!   `verify --checkpoint`.
//! - `proof` prints a record and its inclusion proof against the latest
//!   checkpoint.
//! - `tail` prints one session's records in time order.
//!
//! Exit codes: 0 verified (or printed), 1 a verification failure or
//! nothing found, 2 the store or a file could not be read.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use tether_audit::verify::{self, VerifyError};
use tether_audit::{AuditReader, AuditRecord, Entry};

/// The store URL for `store`: a `sqlite:` or `postgres://` URL as given, or
/// the path of an existing SQLite file (opened without creating anything).
pub fn store_url(store: &str) -> anyhow::Result<String> {
    if tether_store::Backend::of(store).is_some() {
        return Ok(store.to_owned());
    }
    if store.contains("://") {
        anyhow::bail!("--store `{store}` must be a sqlite:… or postgres://… URL or a file path");
    }
    let path = Path::new(store);
    anyhow::ensure!(path.is_file(), "no audit store file `{store}`");
    Ok(format!("sqlite://{}", path.display()))
}

async fn open(store: &str) -> anyhow::Result<AuditReader> {
    let url = store_url(store)?;
    AuditReader::open(&url).await.with_context(|| {
        format!(
            "opening the audit store `{}`",
            tether_store::redact_url(&url)
        )
    })
}

/// The verifier key in `path`: a signed-note verifier key
/// (`<origin>+<id>+<key>`, the facade's `audit-key.vkey`) or a PEM public
/// key, whose origin is then the one `checkpoint` names.
pub fn load_verifier_key(path: &Path, checkpoint: Option<&str>) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the key file `{}`", path.display()))?;
    let text = text.trim();
    if text.contains("PRIVATE KEY") {
        anyhow::bail!(
            "`{}` is a private key: give the log's verifier key (`.vkey`) or its public key",
            path.display()
        );
    }
    if text.starts_with("-----BEGIN PUBLIC KEY-----") {
        let origin = checkpoint
            .and_then(|c| c.lines().next())
            .context("a PEM public key needs a checkpoint to name the log")?;
        return tether_audit::verifier_key_from_public_pem(text, origin)
            .with_context(|| format!("reading the public key `{}`", path.display()));
    }
    anyhow::ensure!(
        !text.is_empty() && !text.contains(char::is_whitespace),
        "`{}` is neither a verifier key nor a PEM public key",
        path.display()
    );
    Ok(text.to_owned())
}

async fn published(reader: &AuditReader) -> anyhow::Result<Option<String>> {
    reader
        .published_checkpoint()
        .await
        .context("reading the published checkpoint")
}

fn failed(what: impl std::fmt::Display) -> ExitCode {
    eprintln!("audit log verification FAILED: {what}");
    ExitCode::FAILURE
}

/// `tether audit verify`.
pub async fn verify(
    store: &str,
    key_file: &Path,
    earlier_file: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let reader = open(store).await?;
    let earlier = earlier_file
        .map(|path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the saved checkpoint `{}`", path.display()))
        })
        .transpose()?;
    let Some(current) = published(&reader).await? else {
        return Ok(failed(
            "the store holds no published checkpoint (a running facade publishes one every `audit.checkpoint_interval_secs`)",
        ));
    };
    let vkey = load_verifier_key(key_file, Some(&current))?;
    let leaves = reader
        .leaves(0..u64::MAX)
        .await
        .context("reading the stored records")?;
    let report = match verify::log(&leaves, &vkey, &current, earlier.as_deref()) {
        Ok(report) => report,
        Err(e) => return Ok(failed(explain(&e))),
    };
    let current = verify::checkpoint(&current, &vkey).map_err(anyhow::Error::from)?;
    println!(
        "ok: {} records of `{}` verified against its latest checkpoint (root {})",
        report.size,
        current.origin(),
        report.root
    );
    if let Some(earlier) = earlier.as_deref() {
        let earlier = verify::checkpoint(earlier, &vkey).map_err(anyhow::Error::from)?;
        println!(
            "ok: consistent with the saved checkpoint of {} records",
            earlier.size()
        );
    } else {
        println!(
            "note: without --checkpoint a cut-off tail cannot be detected; save checkpoints with `tether audit checkpoint --out FILE`"
        );
    }
    if report.uncovered > 0 {
        println!(
            "note: {} newer records are not covered by a checkpoint yet",
            report.uncovered
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What a verification failure means, in an auditor's words.
fn explain(error: &VerifyError) -> String {
    let meaning = match error {
        VerifyError::LeafHashMismatch { .. } => "a record was altered",
        VerifyError::IndexGap { .. } => "a record was removed",
        VerifyError::RootMismatch { .. } => {
            "records were altered, reordered, inserted or removed (the tree does not match its signed root)"
        }
        VerifyError::MissingRecords { .. } => "records covered by the checkpoint are gone",
        VerifyError::Inconsistent { .. } => {
            "the log was rewritten or truncated since the saved checkpoint"
        }
        VerifyError::Rollback { .. } => "the log was rolled back since the saved checkpoint",
        VerifyError::NotSignedByKey
        | VerifyError::BadSignature
        | VerifyError::WrongOrigin { .. } => {
            "the checkpoint is not the log's (wrong key or forged)"
        }
        _ => "the log cannot be trusted",
    };
    format!("{error}: {meaning}")
}

/// `tether audit checkpoint`: the latest published checkpoint, to stdout or
/// `out`, checked first when a key is given.
pub async fn checkpoint(
    store: &str,
    out: Option<&Path>,
    key_file: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let reader = open(store).await?;
    let Some(text) = published(&reader).await? else {
        eprintln!("error: the store holds no published checkpoint yet");
        return Ok(ExitCode::FAILURE);
    };
    if let Some(key_file) = key_file {
        let vkey = load_verifier_key(key_file, Some(&text))?;
        if let Err(e) = verify::checkpoint(&text, &vkey) {
            return Ok(failed(explain(&e)));
        }
    }
    let size = text.lines().nth(1).unwrap_or("?");
    match out {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing `{}`", path.display()))?;
            eprintln!(
                "saved the checkpoint of {size} records to `{}`",
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `tether audit proof`: the inclusion proof of record `id` (an index, or
/// the `decision_id` / `receipt_id` the agent was given: every record of
/// that request) against the latest published checkpoint.
pub async fn proof(store: &str, id: &str, key_file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let reader = open(store).await?;
    let Some(text) = published(&reader).await? else {
        eprintln!("error: the store holds no published checkpoint yet");
        return Ok(ExitCode::FAILURE);
    };
    let vkey = key_file
        .map(|path| load_verifier_key(path, Some(&text)))
        .transpose()?;
    let checked = match &vkey {
        Some(vkey) => match verify::checkpoint(&text, vkey) {
            Ok(checked) => Some(checked),
            Err(e) => return Ok(failed(explain(&e))),
        },
        None => None,
    };
    let size: u64 = text
        .lines()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("the published checkpoint is malformed")?;
    let indexes: Vec<u64> = match id.parse::<u64>() {
        Ok(index) => vec![index],
        Err(_) => reader
            .request(id)
            .await
            .context("looking the record up")?
            .iter()
            .map(|e| e.index)
            .collect(),
    };
    if indexes.is_empty() {
        eprintln!("error: no record `{}`", tether_runtime::clip(id));
        return Ok(ExitCode::FAILURE);
    }
    let mut code = ExitCode::SUCCESS;
    for index in indexes {
        if index >= size {
            eprintln!(
                "error: record {index} is not covered by the latest checkpoint ({size} records) yet; try again after the next one"
            );
            code = ExitCode::FAILURE;
            continue;
        }
        let leaf = reader
            .leaves(index..index + 1)
            .await
            .context("reading the record")?
            .pop()
            .with_context(|| format!("record {index} is missing from the store"))?;
        let proof = reader
            .inclusion_proof(index, size)
            .await
            .context("computing the inclusion proof")?;
        println!("record {index} in the tree of {size} records");
        println!("leaf: {}", printable(&leaf.data));
        println!("leaf hash: {}", leaf.hash);
        println!(
            "inclusion proof (RFC 6962 audit path, {} hashes):",
            proof.path.len()
        );
        for hash in &proof.path {
            println!("  {hash}");
        }
        match &checked {
            Some(checkpoint) => match verify::inclusion(&proof, &leaf.data, checkpoint) {
                Ok(()) => println!(
                    "verified: record {index} is in the log `{}` of {size} records",
                    checkpoint.origin()
                ),
                Err(e) => {
                    code = failed(explain(&e));
                }
            },
            None => println!("(not verified: give --key-file to check it)"),
        }
        println!();
    }
    println!("checkpoint:\n{text}");
    Ok(code)
}

/// `tether audit tail`: one session's records in time order, one line each.
pub async fn tail(store: &str, session: &str) -> anyhow::Result<ExitCode> {
    let reader = open(store).await?;
    let entries = reader
        .tail(session)
        .await
        .context("reading the session's records")?;
    if entries.is_empty() {
        eprintln!("no records for session `{}`", tether_runtime::clip(session));
        return Ok(ExitCode::FAILURE);
    }
    for entry in &entries {
        println!("{}", tail_line(entry));
    }
    Ok(ExitCode::SUCCESS)
}

/// Stored text is shown, never interpreted: control characters escaped.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn rfc3339(time_ms: i64) -> String {
    let nanos = i128::from(time_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{time_ms}ms"))
}

/// `2026-01-05T10:00:00.123Z #12 issuance allow Action::"read" on
/// Employee::"1042" agent=… user=…@… policies=… lease=… id=dec_…`.
pub fn tail_line(entry: &Entry) -> String {
    let r: &AuditRecord = &entry.record;
    let kind = serde_json::to_value(r.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut line = format!("{} #{} {kind}", rfc3339(r.time_ms), entry.index);
    let mut push = |label: &str, value: &str| {
        if !value.is_empty() {
            line.push(' ');
            line.push_str(label);
            line.push_str(&printable(value));
        }
    };
    push("", &r.decision);
    push("", &r.action);
    if !r.resource.is_empty() {
        push("on ", &r.resource);
    }
    push("agent=", &r.agent);
    let user = match (r.user_sub.is_empty(), r.user_idp.is_empty()) {
        (false, false) => format!("{}@{}", r.user_sub, r.user_idp),
        _ => r.user_sub.clone(),
    };
    push("user=", &user);
    push("policies=", &r.policy_ids.join(","));
    push("version=", &r.policy_version);
    push("lease=", &r.lease_id);
    push("ticket=", &r.ticket_id);
    if let Some(risk) = r.risk {
        push("risk=", &risk.to_string());
    }
    push("id=", &r.request_id);
    push("trace=", &r.trace_id);
    if !r.detail.is_empty() {
        push("— ", &r.detail);
    }
    line
}
