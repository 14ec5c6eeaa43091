//! One audit record and its canonical leaf encoding.

use serde::{Deserialize, Serialize};

use crate::AuditError;

/// The largest leaf (encoded record) accepted, in bytes.
pub const MAX_LEAF_BYTES: usize = 16 * 1024;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A policy decision (allow, deny or step-up).
    Decision,
    /// A credential was issued.
    Issuance,
    /// A step-up approval: a ticket now asks the user, or an approval
    /// grant was used (`decision` says which).
    Approval,
    /// A step-up approval was denied, or a request was refused for a
    /// reason other than the policy decision.
    Denial,
    /// A credential or grant was revoked.
    Revocation,
    /// A session ended (and everything it held was revoked).
    SessionEnd,
    /// A dependency failed and the request was denied because of it.
    Failure,
    /// The facade's monitoring quarantined a session or an agent, or an
    /// operator lifted a quarantine (`decision`: `quarantined`, `lifted`).
    Quarantine,
}

/// One record of the audit log: who (user, agent), what (action,
/// resource), the decision and why (policy ids and version), and the ids
/// that tie it to the rest of the story (session, lease, approval ticket,
/// trace).
///
/// **Never put a token, password, credential or other secret in any
/// field.** The log is append-only and meant to be read by auditors: a
/// secret written here cannot be taken back. Nothing enforces this; the
/// caller fills the fields from identifiers only.
///
/// Empty strings stand for "not applicable". The JSON field order is the
/// struct's field order, so the encoding of a record is deterministic (see
/// [`AuditRecord::to_leaf`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// When it happened, Unix milliseconds.
    pub time_ms: i64,
    pub kind: RecordKind,
    /// The agent's id.
    pub agent: String,
    /// The delegating user's identity provider (issuer).
    pub user_idp: String,
    /// The delegating user's subject at that provider.
    pub user_sub: String,
    /// The Cedar action, e.g. `Action::"read"`.
    pub action: String,
    /// The Cedar resource, e.g. `Employee::"1042"`.
    pub resource: String,
    /// The decision as the policy decision point named it (`allow`,
    /// `deny`, `step_up`, …), empty when no decision was taken.
    pub decision: String,
    /// The determining policy ids.
    pub policy_ids: Vec<String>,
    /// The policy pack's version.
    pub policy_version: String,
    pub session_id: String,
    pub lease_id: String,
    /// The approval (CIBA) ticket.
    pub ticket_id: String,
    /// The risk score the decision saw, if any (must be finite).
    pub risk: Option<f64>,
    /// The behavioural signals that made `risk` (name → value, e.g.
    /// `out_of_intent` → 2). Left out of the encoding when empty, so
    /// records written before signals existed keep their exact bytes.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub signals: std::collections::BTreeMap<String, i64>,
    /// The W3C trace id of the request.
    pub trace_id: String,
    /// The id the caller was given for the request this record belongs to
    /// (a facade decision id `dec_…` or receipt id `rcpt_…`); the records
    /// one request produced share it.
    pub request_id: String,
    /// Free text (e.g. which dependency failed), clipped with
    /// [`tether_runtime::clip`] when the record is encoded.
    pub detail: String,
}

impl AuditRecord {
    /// A record of `kind` at `time_ms` with every other field empty.
    pub fn new(kind: RecordKind, time_ms: i64) -> Self {
        Self {
            time_ms,
            kind,
            agent: String::new(),
            user_idp: String::new(),
            user_sub: String::new(),
            action: String::new(),
            resource: String::new(),
            decision: String::new(),
            policy_ids: Vec::new(),
            policy_version: String::new(),
            session_id: String::new(),
            lease_id: String::new(),
            ticket_id: String::new(),
            risk: None,
            signals: std::collections::BTreeMap::new(),
            trace_id: String::new(),
            request_id: String::new(),
            detail: String::new(),
        }
    }

    /// The leaf: the record as compact JSON, fields in declaration order,
    /// `detail` clipped. These exact bytes are stored and hashed.
    pub fn to_leaf(&self) -> Result<String, AuditError> {
        if self.risk.is_some_and(|r| !r.is_finite()) {
            return Err(AuditError::InvalidRecord("risk must be a finite number"));
        }
        let clipped = Self {
            detail: tether_runtime::clip(&self.detail),
            ..self.clone()
        };
        let leaf = serde_json::to_string(&clipped).map_err(AuditError::Encode)?;
        if leaf.len() > MAX_LEAF_BYTES {
            return Err(AuditError::RecordTooLarge {
                len: leaf.len(),
                max: MAX_LEAF_BYTES,
            });
        }
        Ok(leaf)
    }

    /// Parses a leaf written by [`AuditRecord::to_leaf`].
    pub fn from_leaf(leaf: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(leaf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_encoded_only_when_there_are_some() {
        let mut r = AuditRecord::new(RecordKind::Decision, 1);
        r.risk = Some(0.0);
        let plain = r.to_leaf().unwrap();
        assert!(!plain.contains("signals"), "{plain}");
        assert_eq!(AuditRecord::from_leaf(&plain).unwrap(), r);
        r.signals.insert("out_of_intent".into(), 2);
        let leaf = r.to_leaf().unwrap();
        assert!(
            leaf.contains(r#""risk":0.0,"signals":{"out_of_intent":2},"trace_id""#),
            "{leaf}"
        );
        assert_eq!(AuditRecord::from_leaf(&leaf).unwrap(), r);
    }

    #[test]
    fn leaf_is_deterministic_and_round_trips() {
        let mut r = AuditRecord::new(RecordKind::SessionEnd, 1_700_000_000_000);
        r.session_id = "s-1".into();
        r.policy_ids = vec!["a".into(), "b".into()];
        r.risk = Some(0.25);
        let leaf = r.to_leaf().unwrap();
        assert_eq!(leaf, r.to_leaf().unwrap());
        assert!(
            leaf.starts_with(r#"{"time_ms":1700000000000,"kind":"session_end","agent":"""#),
            "{leaf}"
        );
        assert_eq!(AuditRecord::from_leaf(&leaf).unwrap(), r);
    }

    #[test]
    fn detail_is_clipped_and_bad_records_refused() {
        let mut r = AuditRecord::new(RecordKind::Failure, 0);
        r.detail = "x\n".repeat(500);
        let back = AuditRecord::from_leaf(&r.to_leaf().unwrap()).unwrap();
        assert_eq!(back.detail, tether_runtime::clip(&r.detail));
        assert!(!back.detail.contains('\n'));

        r.risk = Some(f64::NAN);
        assert!(matches!(r.to_leaf(), Err(AuditError::InvalidRecord(_))));
        r.risk = None;
        r.resource = "r".repeat(MAX_LEAF_BYTES);
        assert!(matches!(
            r.to_leaf(),
            Err(AuditError::RecordTooLarge { .. })
        ));
        assert!(AuditRecord::from_leaf(r#"{"time_ms":0,"token":"x"}"#).is_err());
    }
}
