//! `tether quarantine list|lift`: the quarantines the agent facade's risk
//! monitoring imposed, and lifting one, through the facade's
//! `tether.facade.v1.SessionAdmin` API over mTLS with the operators'
//! `admin` certificate (as `tether session`).
//!
//! Exit codes: 0 done, 1 no such quarantine, 2 anything else (bad input,
//! endpoint unreachable, not authenticated, permission denied, monitoring
//! off), always with one line on stderr. Text from the facade is printed
//! with control characters escaped.

use std::process::ExitCode;

use serde_json::{Value, json};
use tether_proto::facade::v1 as pb;

use crate::session::{Format, Target, printable, rfc3339, table};

/// The longest reason the facade accepts.
const MAX_REASON_BYTES: usize = 256;
/// The longest quarantine id the facade accepts.
const MAX_ID_BYTES: usize = 128;

/// One command.
#[derive(Debug, Clone)]
pub enum Call {
    /// Newest first; only those in force with `active`.
    List { active: bool, limit: u32 },
    /// Lift one.
    Lift { id: String, reason: String },
}

/// Input checks before anything is sent (the facade checks the same).
fn check(call: &Call) -> anyhow::Result<()> {
    match call {
        Call::List { limit, .. } => {
            anyhow::ensure!(
                (1..=1000).contains(limit),
                "--limit must be between 1 and 1000"
            );
        }
        Call::Lift { id, reason } => {
            anyhow::ensure!(
                !id.is_empty()
                    && id.len() <= MAX_ID_BYTES
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "invalid quarantine id `{}`: 1 to {MAX_ID_BYTES} ASCII letters, digits and `_`",
                printable(id)
            );
            anyhow::ensure!(
                reason.len() <= MAX_REASON_BYTES && !reason.chars().any(char::is_control),
                "--reason must be at most {MAX_REASON_BYTES} bytes without control characters"
            );
        }
    }
    Ok(())
}

/// Runs `call` against `target` and prints the result.
pub fn run(target: &Target, call: Call, format: Format) -> anyhow::Result<ExitCode> {
    check(&call)?;
    let id = match &call {
        Call::Lift { id, .. } => printable(id),
        Call::List { .. } => String::new(),
    };
    crate::session::admin_call(
        target,
        &format!("quarantine `{id}`"),
        |mut client| async move {
            match &call {
                Call::List { active, limit } => client
                    .list_quarantines(pb::ListQuarantinesRequest {
                        active_only: *active,
                        limit: *limit,
                    })
                    .await
                    .map(|r| print_list(&r.into_inner().quarantines, format)),
                Call::Lift { id, reason } => client
                    .lift_quarantine(pb::LiftQuarantineRequest {
                        quarantine_id: id.clone(),
                        reason: reason.clone(),
                    })
                    .await
                    .map(|r| print_lift(&r.into_inner(), format)),
            }
        },
    )
}

fn kind_name(kind: pb::QuarantineKind) -> String {
    kind.as_str_name()
        .strip_prefix("QUARANTINE_KIND_")
        .unwrap_or("unspecified")
        .to_ascii_lowercase()
}

fn quarantine_json(q: &pb::Quarantine) -> Value {
    let time = |ts: Option<&prost_types::Timestamp>| match rfc3339(ts).as_str() {
        "-" => Value::Null,
        t => Value::String(t.to_owned()),
    };
    json!({
        "quarantine_id": q.quarantine_id,
        "kind": kind_name(q.kind()),
        "subject": q.subject,
        "active": q.active,
        "rule": q.rule,
        "reason": q.reason,
        "session_id": q.session_id,
        "agent_id": q.agent_id,
        "user_subject": q.user_subject,
        "created_at": time(q.created_at.as_ref()),
        "until": time(q.until.as_ref()),
        "lifted_at": time(q.lifted_at.as_ref()),
        "lifted_by": q.lifted_by,
        "lift_reason": q.lift_reason,
    })
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn print_list(quarantines: &[pb::Quarantine], format: Format) {
    match format {
        Format::Json => print_json(&json!({
            "quarantines": quarantines.iter().map(quarantine_json).collect::<Vec<_>>(),
        })),
        Format::Table => {
            if quarantines.is_empty() {
                println!("no quarantines");
                return;
            }
            let rows = quarantines
                .iter()
                .map(|q| {
                    vec![
                        q.quarantine_id.clone(),
                        kind_name(q.kind()),
                        q.subject.clone(),
                        if q.active { "active" } else { "lifted" }.into(),
                        q.rule.clone(),
                        rfc3339(q.created_at.as_ref()),
                        rfc3339(q.until.as_ref()),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "QUARANTINE",
                        "KIND",
                        "SUBJECT",
                        "STATE",
                        "RULE",
                        "SINCE",
                        "UNTIL"
                    ],
                    rows
                )
            );
        }
    }
}

fn print_lift(response: &pb::LiftQuarantineResponse, format: Format) {
    let q = response.quarantine.clone().unwrap_or_default();
    match format {
        Format::Json => print_json(&json!({
            "lifted": response.lifted,
            "quarantine": quarantine_json(&q),
        })),
        Format::Table => {
            let what = if response.lifted {
                "lifted"
            } else {
                "was not in force (nothing changed)"
            };
            println!(
                "{} {} quarantine of {} {what}",
                printable(&q.quarantine_id),
                kind_name(q.kind()),
                printable(&q.subject)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_refused_before_anything_is_sent() {
        check(&Call::Lift {
            id: "q_0123abcd".into(),
            reason: "false alarm".into(),
        })
        .unwrap();
        check(&Call::List {
            active: true,
            limit: 100,
        })
        .unwrap();
        for bad in [
            Call::Lift {
                id: String::new(),
                reason: String::new(),
            },
            Call::Lift {
                id: "q_1\n".into(),
                reason: String::new(),
            },
            Call::Lift {
                id: "q".repeat(129),
                reason: String::new(),
            },
            Call::Lift {
                id: "q_1".into(),
                reason: "a\u{1b}[2J".into(),
            },
            Call::List {
                active: false,
                limit: 0,
            },
        ] {
            assert!(check(&bad).is_err(), "{bad:?}");
        }
    }
}
