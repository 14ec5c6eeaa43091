//! `tether session list|show|end` and `tether leases list --session`: the
//! operators' view of agent sessions, through the agent facade's
//! `tether.facade.v1.SessionAdmin` API, over mTLS with the operators'
//! `admin` certificate.
//!
//! The lease list goes through the facade's `GetSession` too, not to the
//! credential issuer's `ListLeases` directly: an operator then needs one
//! endpoint and one certificate for every session command (the issuer is an
//! internal service, often not reachable from where operators sit), and the
//! facade's lease view is the one agents see (no Vault lease ids).
//!
//! Output is an aligned table with times in RFC 3339 UTC, or with `--json`
//! one JSON document on stdout. Text that came from agents or IdPs (user
//! subjects, intents, reasons) is printed with control characters escaped,
//! so nothing in a session can drive the operator's terminal.
//!
//! Exit codes: 0 done, 1 no such session, 2 anything else (bad input,
//! endpoint unreachable, not authenticated, permission denied), always with
//! one line on stderr.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tether_proto::facade::v1 as pb;
use tether_proto::facade::v1::session_admin_client::SessionAdminClient;
use tether_runtime::client::InternalChannel;
use tonic::Code;

/// The longest reason the facade accepts.
const MAX_REASON_BYTES: usize = 256;
/// The largest page the facade serves.
const MAX_PAGE_SIZE: u32 = 1000;

/// Where the facade is and how to reach it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `https://host:port` of the agent facade.
    pub endpoint: String,
    /// The operator's certificate, key and CA bundle.
    pub tls: tether_runtime::TlsConfig,
}

/// `tether session list` filters.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub user: Option<String>,
    pub agent: Option<String>,
    pub active: bool,
    /// Stop after this many sessions (newest first).
    pub limit: u32,
}

/// One command.
#[derive(Debug, Clone)]
pub enum Call {
    List(ListOptions),
    Show { session_id: String },
    End { session_id: String, reason: String },
    Leases { session_id: String },
}

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Runs `call` against `target` and prints the result.
pub fn run(target: &Target, call: Call, format: Format) -> anyhow::Result<ExitCode> {
    check(&call)?;
    let sid = match &call {
        Call::Show { session_id } | Call::End { session_id, .. } | Call::Leases { session_id } => {
            session_id.as_str()
        }
        Call::List(_) => "",
    };
    admin_call(
        target,
        &format!("session `{sid}`"),
        |mut client| async move {
            match &call {
                Call::List(options) => list(&mut client, options, format).await,
                Call::Show { session_id } => show(&mut client, session_id, format).await,
                Call::End { session_id, reason } => {
                    end(&mut client, session_id, reason, format).await
                }
                Call::Leases { session_id } => leases(&mut client, session_id, format).await,
            }
        },
    )
}

/// One call to the facade's session administration (`tether session`,
/// `tether quarantine`), on a runtime of its own, with the operators'
/// certificate: NOT_FOUND is "no `missing`" and exit code 1; any other
/// refusal an error that says what to check.
pub(crate) fn admin_call<F, Fut>(
    target: &Target,
    missing: &str,
    call: F,
) -> anyhow::Result<ExitCode>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let channel = tether_runtime::client::Clients::new(&target.tls)
            .context("loading the TLS certificate")?
            // Ending a session waits for three services in turn.
            .with_timeouts(Duration::from_secs(5), Duration::from_secs(30))
            .grpc(&target.endpoint, "agent-facade")?;
        match call(SessionAdminClient::new(channel)).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(status) if status.code() == Code::NotFound => {
                eprintln!("error: no {missing} at `{}`", target.endpoint);
                Ok(ExitCode::FAILURE)
            }
            Err(status) => Err(explain(&target.endpoint, &status)),
        }
    })
}

/// Input checks before anything is sent: the facade checks the same, but
/// an operator's typo should not need a round trip to be told.
fn check(call: &Call) -> anyhow::Result<()> {
    let sid = match call {
        Call::List(options) => {
            for (flag, value) in [("--user", &options.user), ("--agent", &options.agent)] {
                if let Some(v) = value {
                    anyhow::ensure!(
                        !v.is_empty() && v.len() <= 256 && !v.chars().any(char::is_control),
                        "{flag} must be 1 to 256 bytes without control characters"
                    );
                }
            }
            anyhow::ensure!(options.limit > 0, "--limit must be at least 1");
            return Ok(());
        }
        Call::Show { session_id } | Call::Leases { session_id } => session_id,
        Call::End { session_id, reason } => {
            anyhow::ensure!(
                reason.len() <= MAX_REASON_BYTES,
                "--reason is {} bytes, the limit is {MAX_REASON_BYTES}",
                reason.len()
            );
            anyhow::ensure!(
                !reason.chars().any(char::is_control),
                "--reason must not contain control characters"
            );
            session_id
        }
    };
    tether_token::check_session_id(sid)
        .map_err(|e| anyhow::anyhow!("invalid session id `{}`: {e}", printable(sid)))
}

/// One line saying why a call failed, in the operator's terms.
fn explain(endpoint: &str, status: &tonic::Status) -> anyhow::Error {
    let message = printable(status.message());
    let what = match status.code() {
        Code::Unavailable => format!(
            "cannot reach the agent facade at `{endpoint}` or a service or store behind it: {message}"
        ),
        Code::DeadlineExceeded => {
            format!("the agent facade at `{endpoint}` did not answer in time: {message}")
        }
        Code::Unauthenticated => format!(
            "not authenticated by `{endpoint}`: administration needs the operators' client certificate (--tls-cert, --tls-key, --tls-ca): {message}"
        ),
        Code::PermissionDenied => format!(
            "permission denied by `{endpoint}`: the certificate's identity is not the operators' `admin` identity: {message}"
        ),
        Code::FailedPrecondition => format!("`{endpoint}` refused: {message}"),
        Code::InvalidArgument => format!("refused as invalid: {message}"),
        code => format!("`{endpoint}` answered {code:?}: {message}"),
    };
    anyhow::anyhow!(what)
}

pub(crate) type Client = SessionAdminClient<InternalChannel>;

async fn list(
    client: &mut Client,
    options: &ListOptions,
    format: Format,
) -> Result<(), tonic::Status> {
    let mut sessions = Vec::new();
    let mut page_token = String::new();
    let more = loop {
        let wanted = options
            .limit
            .saturating_sub(u32::try_from(sessions.len()).unwrap_or(u32::MAX));
        let page = client
            .list_sessions(pb::AdminListSessionsRequest {
                user_subject: options.user.clone().unwrap_or_default(),
                agent_id: options.agent.clone().unwrap_or_default(),
                active_only: options.active,
                page_size: wanted.min(MAX_PAGE_SIZE),
                page_token: std::mem::take(&mut page_token),
            })
            .await?
            .into_inner();
        sessions.extend(page.sessions);
        if page.next_page_token.is_empty() {
            break false;
        }
        if u32::try_from(sessions.len()).unwrap_or(u32::MAX) >= options.limit {
            break true;
        }
        page_token = page.next_page_token;
    };
    match format {
        Format::Json => print_json(&json!({
            "sessions": sessions.iter().map(session_json).collect::<Vec<_>>(),
            "more": more,
        })),
        Format::Table => {
            let rows = sessions
                .iter()
                .map(|s| {
                    vec![
                        s.session_id.clone(),
                        status_name(s.status()),
                        s.user_subject.clone(),
                        s.agent_id.clone(),
                        rfc3339(s.started_at.as_ref()),
                        rfc3339(s.expires_at.as_ref()),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["SESSION", "STATUS", "USER", "AGENT", "STARTED", "EXPIRES"],
                    rows
                )
            );
            if more {
                eprintln!(
                    "(showing the newest {}; more sessions match: raise --limit)",
                    sessions.len()
                );
            }
        }
    }
    Ok(())
}

async fn get(
    client: &mut Client,
    session_id: &str,
) -> Result<pb::AdminGetSessionResponse, tonic::Status> {
    Ok(client
        .get_session(pb::AdminGetSessionRequest {
            session_id: session_id.to_owned(),
        })
        .await?
        .into_inner())
}

async fn show(client: &mut Client, session_id: &str, format: Format) -> Result<(), tonic::Status> {
    let found = get(client, session_id).await?;
    let session = found.session.unwrap_or_default();
    match format {
        Format::Json => print_json(&json!({
            "session": session_json(&session),
            "leases": found.leases.iter().map(lease_json).collect::<Vec<_>>(),
        })),
        Format::Table => {
            let user = if session.user_issuer.is_empty() {
                session.user_subject.clone()
            } else {
                format!("{} at {}", session.user_subject, session.user_issuer)
            };
            let revoked = match &session.revoked_at {
                Some(at) => format!(
                    "{} ({})",
                    rfc3339(Some(at)),
                    if session.revoke_reason.is_empty() {
                        "no reason given"
                    } else {
                        session.revoke_reason.as_str()
                    }
                ),
                None => "-".into(),
            };
            let facts = vec![
                vec!["session".into(), session.session_id.clone()],
                vec!["status".into(), status_name(session.status())],
                vec!["user".into(), user],
                vec!["agent".into(), session.agent_id.clone()],
                vec!["scope".into(), session.scope.clone()],
                vec!["intent".into(), session.intent.clone()],
                vec!["started".into(), rfc3339(session.started_at.as_ref())],
                vec!["expires".into(), rfc3339(session.expires_at.as_ref())],
                vec!["revoked".into(), revoked],
            ];
            print!("{}", rows_only(facts));
            println!();
            print_leases(&found.leases);
        }
    }
    Ok(())
}

async fn end(
    client: &mut Client,
    session_id: &str,
    reason: &str,
    format: Format,
) -> Result<(), tonic::Status> {
    let receipt = client
        .end_session(pb::AdminEndSessionRequest {
            session_id: session_id.to_owned(),
            reason: reason.to_owned(),
        })
        .await?
        .into_inner()
        .receipt
        .unwrap_or_default();
    match format {
        Format::Json => print_json(&json!({
            "receipt": {
                "session_id": receipt.session_id,
                "already_ended": receipt.already_ended,
                "ended_at": rfc3339_json(receipt.ended_at.as_ref()),
                "session_revoked_at": rfc3339_json(receipt.session_revoked_at.as_ref()),
                "revoked_leases": receipt.revoked_leases.iter().map(lease_json).collect::<Vec<_>>(),
                "pending_leases": receipt.pending_leases.iter().map(lease_json).collect::<Vec<_>>(),
                "cancelled_ticket_ids": receipt.cancelled_ticket_ids,
                "revoked_grant_ids": receipt.revoked_grant_ids,
                "receipt_id": receipt.receipt_id,
            }
        })),
        Format::Table => {
            let list = |ids: &[String]| {
                if ids.is_empty() {
                    "-".to_owned()
                } else {
                    ids.join(", ")
                }
            };
            let facts = vec![
                vec![
                    "session".into(),
                    format!(
                        "{} {}",
                        receipt.session_id,
                        if receipt.already_ended {
                            "(was already ended)"
                        } else {
                            "ended"
                        }
                    ),
                ],
                vec![
                    "revoked at".into(),
                    rfc3339(receipt.session_revoked_at.as_ref()),
                ],
                vec!["receipt".into(), receipt.receipt_id.clone()],
                vec![
                    "tickets cancelled".into(),
                    list(&receipt.cancelled_ticket_ids),
                ],
                vec!["grants revoked".into(), list(&receipt.revoked_grant_ids)],
            ];
            print!("{}", rows_only(facts));
            println!();
            let leases: Vec<pb::Lease> = receipt
                .revoked_leases
                .iter()
                .chain(&receipt.pending_leases)
                .cloned()
                .collect();
            print_leases(&leases);
        }
    }
    Ok(())
}

async fn leases(
    client: &mut Client,
    session_id: &str,
    format: Format,
) -> Result<(), tonic::Status> {
    let found = get(client, session_id).await?;
    match format {
        Format::Json => print_json(&json!({
            "session_id": session_id,
            "leases": found.leases.iter().map(lease_json).collect::<Vec<_>>(),
        })),
        Format::Table => print_leases(&found.leases),
    }
    Ok(())
}

fn print_leases(leases: &[pb::Lease]) {
    if leases.is_empty() {
        println!("no leases");
        return;
    }
    let rows = leases
        .iter()
        .map(|l| {
            vec![
                l.lease_id.clone(),
                l.profile.clone(),
                lease_status_name(l.status()),
                l.granted_ttl
                    .map(|d| format!("{}s", d.seconds))
                    .unwrap_or_else(|| "-".into()),
                rfc3339(l.issued_at.as_ref()),
                rfc3339(l.expires_at.as_ref()),
                rfc3339(l.revoked_at.as_ref()),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "LEASE", "PROFILE", "STATUS", "TTL", "ISSUED", "EXPIRES", "REVOKED"
            ],
            rows
        )
    );
}

fn print_json(value: &Value) {
    // A `Value` always serializes.
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn session_json(s: &pb::SessionSummary) -> Value {
    json!({
        "session_id": s.session_id,
        "status": status_name(s.status()),
        "user_issuer": s.user_issuer,
        "user_subject": s.user_subject,
        "agent_id": s.agent_id,
        "scope": s.scope,
        "intent": s.intent,
        "started_at": rfc3339_json(s.started_at.as_ref()),
        "expires_at": rfc3339_json(s.expires_at.as_ref()),
        "revoked_at": rfc3339_json(s.revoked_at.as_ref()),
        "revoke_reason": s.revoke_reason,
    })
}

fn lease_json(l: &pb::Lease) -> Value {
    json!({
        "lease_id": l.lease_id,
        "profile": l.profile,
        "status": lease_status_name(l.status()),
        "granted_ttl_secs": l.granted_ttl.map(|d| d.seconds),
        "issued_at": rfc3339_json(l.issued_at.as_ref()),
        "expires_at": rfc3339_json(l.expires_at.as_ref()),
        "revoked_at": rfc3339_json(l.revoked_at.as_ref()),
    })
}

/// `SESSION_STATUS_ACTIVE` → `active`.
fn status_name(status: pb::SessionStatus) -> String {
    enum_name(status.as_str_name(), "SESSION_STATUS_")
}

fn lease_status_name(status: pb::LeaseStatus) -> String {
    enum_name(status.as_str_name(), "LEASE_STATUS_")
}

fn enum_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

fn timestamp(ts: &prost_types::Timestamp) -> Option<time::OffsetDateTime> {
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// RFC 3339 UTC to the second, `-` when unset (tables).
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(timestamp)
        .and_then(|t| t.replace_nanosecond(0).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

/// RFC 3339 UTC with any fraction, `null` when unset (JSON).
fn rfc3339_json(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.and_then(timestamp)
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map_or(Value::Null, Value::String)
}

/// Text from the network is shown, never interpreted: control characters
/// (C0, DEL, C1) escaped.
pub fn printable(text: &str) -> String {
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

/// Columns padded to their widest cell, two spaces apart; every cell made
/// printable first. Empty cells show as `-`.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut all: Vec<Vec<String>> = vec![headers.iter().map(|h| (*h).to_owned()).collect()];
    all.extend(rows);
    render(all)
}

/// Like [`table`], without a header line (a record's fields).
fn rows_only(rows: Vec<Vec<String>>) -> String {
    render(rows)
}

fn render(rows: Vec<Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| {
            row.iter()
                .map(|cell| {
                    if cell.is_empty() {
                        "-".to_owned()
                    } else {
                        printable(cell)
                    }
                })
                .collect()
        })
        .collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|row| row.get(i))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_aligned_and_escape_what_they_show() {
        let out = table(
            &["SESSION", "USER"],
            vec![
                vec!["s_1".into(), "alice".into()],
                vec!["s_22222".into(), "bob\u{1b}[2J\u{9b}".into()],
                vec!["s_3".into(), String::new()],
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "SESSION  USER");
        assert_eq!(lines[1], "s_1      alice");
        assert_eq!(lines[2], "s_22222  bob\\u{1b}[2J\\u{9b}");
        assert_eq!(lines[3], "s_3      -");
        assert!(!out.contains('\u{1b}') && !out.contains('\u{9b}'));
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let ts = prost_types::Timestamp {
            seconds: 1_767_225_600,
            nanos: 250_000_000,
        };
        assert_eq!(rfc3339(Some(&ts)), "2026-01-01T00:00:00Z");
        assert_eq!(
            rfc3339_json(Some(&ts)),
            Value::String("2026-01-01T00:00:00.25Z".into())
        );
        assert_eq!(rfc3339(None), "-");
        assert_eq!(rfc3339_json(None), Value::Null);
    }

    #[test]
    fn bad_input_is_refused_before_anything_is_sent() {
        let end = |sid: &str, reason: &str| Call::End {
            session_id: sid.into(),
            reason: reason.into(),
        };
        check(&end("s_1", "compromised")).unwrap();
        for bad in [
            end("", ""),
            end("s_1\n", ""),
            end(&"s".repeat(129), ""),
            end("s_1", "line\nbreak"),
            end("s_1", &"r".repeat(257)),
            Call::Show {
                session_id: "s_1; rm -rf".into(),
            },
            Call::List(ListOptions {
                user: Some("alice\u{7}".into()),
                limit: 10,
                ..ListOptions::default()
            }),
            Call::List(ListOptions::default()),
        ] {
            assert!(check(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn status_names_are_short() {
        assert_eq!(status_name(pb::SessionStatus::Revoked), "revoked");
        assert_eq!(
            lease_status_name(pb::LeaseStatus::RevocationFailed),
            "revocation_failed"
        );
    }
}
