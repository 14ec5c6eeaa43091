//! The decision point's own instrument: decisions by outcome and policy
//! version (the RPC counts and durations come from
//! [`tether_runtime::metrics::RpcMetricsLayer`]).

use std::sync::LazyLock;

use tether_proto::policy::v1 as pb;
use tether_runtime::metrics::{Counter, KeyValue};

use crate::error::PdpError;

static DECISIONS: LazyLock<Counter<u64>> = LazyLock::new(|| {
    tether_runtime::metrics::meter()
        .u64_counter("tether.policy.decisions")
        .with_description(
            "Decisions, by outcome (allow, deny, approval_required, error) and the policy set's version.",
        )
        .with_unit("{decision}")
        .build()
});

/// Counts one evaluated (or refused) request: gRPC Check, each BatchCheck
/// item and each AuthZEN evaluation. `error` is a request that could not be
/// evaluated, or whose evaluation hit a policy error; both were denied.
/// The version is the pack's content hash: one series per deployed pack.
pub(crate) fn decision(result: &Result<pb::CheckResponse, PdpError>, policy_version: &str) {
    let outcome = match result {
        Ok(resp) if !resp.errors.is_empty() => "error",
        Ok(resp) => match resp.decision() {
            pb::Decision::Allow => "allow",
            pb::Decision::ApprovalRequired => "approval_required",
            pb::Decision::Deny | pb::Decision::Unspecified => "deny",
        },
        Err(_) => "error",
    };
    DECISIONS.add(
        1,
        &[
            KeyValue::new("outcome", outcome),
            KeyValue::new("policy_version", policy_version.to_owned()),
        ],
    );
}
