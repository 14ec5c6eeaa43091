//! The facade's side of the audit log (`tether-audit`): which records a
//! request writes, which must be durable before the agent has its answer,
//! and what happens when the log cannot be written (a deny).
//!
//! | kind          | written for                                            | before the answer |
//! |---------------|--------------------------------------------------------|-------------------|
//! | `decision`    | each Authorize / AcquireCredential decision: `allow`, `deny`, `approval_required` | committed before a credential is issued (flushed with the issuance); durable when it comes with an approval record; otherwise queued |
//! | `approval`    | `grant_used` (an approval grant allowed it), `ticket_pending` (a ticket asks the user) | durable |
//! | `issuance`    | a credential issued: lease id, profile, granted TTL     | durable |
//! | `denial`      | a request refused for another reason than the policy (bad argument, profile, limits, session ended) | queued |
//! | `failure`     | a dependency failed or timed out (the request was denied) | queued |
//! | `revocation`  | leases, grants and tickets ended with the session; a lease that was not delivered | with the session end / queued |
//! | `session_end` | EndSession (its `receipt_id`); an operator's SessionAdmin.EndSession names the operator as `agent` | durable |
//! | `quarantine`  | the monitoring quarantined a session or an agent (`quarantined`), an operator lifted one (`lifted`) | durable |
//!
//! Every record names the agent, the user (IdP and subject), the action and
//! resource in Cedar uid form, the policy ids and version, the session,
//! lease and ticket, the risk score (with, on decisions, the signals that
//! made it) and the OpenTelemetry trace id. Never a token, password or
//! credential.
//!
//! The ids the agent is given, `decision_id` (`dec_<uuid>`) and
//! `receipt_id` (`rcpt_<uuid>`), are the `request_id` of every record the
//! request wrote: `tether audit proof --record dec_…` finds them.
//!
//! One writer task appends. Queued records are written behind the answer:
//! the writer waits up to 10 ms for company and commits them together in
//! one transaction, flushed to disk with the next durable commit
//! (`Flush::Deferred`: safe from a crash of this process, not from a power
//! loss). A durable record goes through the same queue, so it lands after
//! every record queued before it, and the request waits for the commit
//! and the flush (`Flush::Disk`). A request is denied (UNAVAILABLE, `DEPENDENCY_UNAVAILABLE`,
//! dependency `audit`) when its durable records cannot be committed, when
//! the queue is full, or while the store is failing: after a failed write
//! the writer keeps the queued records, retries them every second (a
//! checkpoint is the probe when nothing waits), and lets requests through
//! again once the store takes writes.
//!
//! An issuance is recorded after the credential exists. If that record
//! cannot be committed, or the agent is gone when it is, the credential is
//! never delivered: its lease is revoked at once (`RevokeLease`), and a
//! `revocation` record is queued (it reaches the log when the store takes
//! writes again). Because the `allow` decision that precedes an issuance
//! is committed first (the issuance's flush takes it to disk: one flush
//! per credential, not two), a store that is already failing denies before
//! anything is issued.
//!
//! The writer also publishes a signed checkpoint in the store every
//! `checkpoint_interval_secs` and once more when the facade stops; that is
//! the checkpoint `tether audit verify` checks.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tether_audit::{AuditKey, AuditLog, AuditRecord, Flush, RecordKind};
use tether_proto::approval::v1 as approval_pb;
use tether_proto::credentials::v1 as credentials_pb;
use tether_proto::credentials::v1::credential_issuer_client::CredentialIssuerClient;
use tether_proto::facade::v1 as pb;
use tether_proto::policy::v1 as policy_pb;
use tether_runtime::ServiceError as _;
use tether_runtime::client::InternalChannel;
use tether_runtime::clock::unix_now_ms as now_ms;
use tether_token::DelegatedClaims;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::metadata::AsciiMetadataValue;

use crate::config::AuditConfig;
use crate::decision::Uid;
use crate::error::{Dependency, FacadeError};
use crate::monitoring::{Quarantine, Risk};
use crate::service::{EndedBy, SessionOwner};

/// Records written in one transaction at most.
const MAX_BATCH: usize = 256;
/// How often a failing store is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How long records written behind their answers wait for company before
/// they are committed.
const LINGER: Duration = Duration::from_millis(10);

/// The audit log as the handlers use it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    /// `None`: `[audit] enabled = false`.
    shared: Option<Arc<Shared>>,
}

#[derive(Debug)]
struct Shared {
    queue: mpsc::Sender<Job>,
    /// Wakes the writer when a job that someone waits for is queued.
    urgent: Arc<tokio::sync::Notify>,
    /// Set while the store refuses writes.
    failing: Arc<AtomicBool>,
}

/// Records to append, in order; `ack` waits for their commit.
#[derive(Debug)]
struct Job {
    records: Vec<AuditRecord>,
    ack: Option<oneshot::Sender<Result<Range<u64>, String>>>,
    /// What the waiting request needs (queued records: `Deferred`).
    flush: Flush,
}

fn unavailable(detail: impl Into<String>) -> FacadeError {
    FacadeError::Dependency {
        dependency: Dependency::Audit,
        detail: detail.into(),
    }
}

/// The current span's OpenTelemetry trace id, empty when there is none
/// (no OpenTelemetry layer, or no valid context).
fn current_trace_id() -> String {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    if span_context.is_valid() {
        span_context.trace_id().to_string()
    } else {
        String::new()
    }
}

fn decision_name(decision: pb::Decision) -> &'static str {
    match decision {
        pb::Decision::Allow => "allow",
        pb::Decision::ApprovalRequired => "approval_required",
        pb::Decision::Deny | pb::Decision::Unspecified => "deny",
    }
}

/// What every record of one request shares: who, on what, which request,
/// which trace.
#[derive(Debug, Clone)]
pub struct Story {
    base: AuditRecord,
}

impl Story {
    /// A request of the session `claims` name (`None`: not known, e.g. a
    /// failure before the token was checked), known to the agent as
    /// `request_id` (empty when the agent got no id).
    pub fn new(claims: Option<&DelegatedClaims>, request_id: &str) -> Self {
        let mut base = AuditRecord::new(RecordKind::Decision, 0);
        if let Some(claims) = claims {
            base.agent.clone_from(&claims.act.sub);
            base.user_idp = claims
                .user
                .get("idp")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned();
            base.user_sub.clone_from(&claims.sub);
            base.session_id.clone_from(&claims.sid);
        }
        base.request_id = request_id.to_owned();
        base.trace_id = current_trace_id();
        Self { base }
    }

    /// A decision of the session `claims` name on `action` and `resource`,
    /// known to the agent as `decision_id`, with the risk it saw (score and
    /// signals).
    pub fn decision(
        claims: &DelegatedClaims,
        decision_id: &str,
        action: &Uid,
        resource: &Uid,
        risk: &Risk,
    ) -> Self {
        let mut story = Self::new(Some(claims), decision_id)
            .target(action.cedar(), resource.cedar())
            .risk(risk.score);
        story.base.signals = risk.nonzero_signals();
        story
    }

    /// A request about the session `owner` names, made by `by`, known as
    /// `request_id`. The record's `agent` is whoever acted: the session's
    /// agent, or the operator (their SPIFFE ID) who ended it; the user is
    /// always the session's.
    pub fn of_session(owner: &SessionOwner, by: &EndedBy, request_id: &str) -> Self {
        let mut story = Self::new(None, request_id);
        story.base.agent = match by {
            EndedBy::Agent => owner.agent.clone(),
            EndedBy::Operator(operator) | EndedBy::Monitoring(operator) => operator.clone(),
        };
        story.base.user_idp.clone_from(&owner.user_idp);
        story.base.user_sub.clone_from(&owner.user_sub);
        story.base.session_id.clone_from(&owner.sid);
        story
    }

    /// The action and resource, in Cedar uid form (`Action::"read"`).
    pub fn target(mut self, action: String, resource: String) -> Self {
        self.base.action = action;
        self.base.resource = resource;
        self
    }

    /// The risk score the decision saw.
    pub fn risk(mut self, score: i64) -> Self {
        self.base.risk = Some(score as f64);
        self
    }

    fn record(&self, kind: RecordKind) -> AuditRecord {
        AuditRecord {
            kind,
            time_ms: now_ms(),
            ..self.base.clone()
        }
    }

    fn decided(&self, kind: RecordKind, check: &policy_pb::CheckResponse) -> AuditRecord {
        let mut record = self.record(kind);
        record.policy_ids.clone_from(&check.policy_ids);
        record.policy_version.clone_from(&check.policy_version);
        record
    }
}

/// `Type::"id"` of an entity uid as the agent sent it (before it is
/// validated), for the records of refused requests.
pub fn cedar_uid(uid: Option<&pb::EntityUid>) -> String {
    uid.map(|u| {
        tether_runtime::clip(&format!(
            "{}::{}",
            u.r#type,
            serde_json::to_string(&u.id).unwrap_or_default()
        ))
    })
    .unwrap_or_default()
}

impl Audit {
    /// No audit log (`[audit] enabled = false`): everything is allowed
    /// through unrecorded.
    pub fn disabled() -> Self {
        Self { shared: None }
    }

    /// Opens the log (generating its key on first start), checks that the
    /// store's published checkpoint is this key's, and starts the writer,
    /// which runs until `stop` says so, then writes what is queued and
    /// publishes a last checkpoint.
    pub async fn start(
        config: &AuditConfig,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<(Self, Option<JoinHandle<()>>)> {
        if !config.enabled {
            tracing::warn!(
                "the audit log is disabled (`[audit] enabled = false`): no decision is recorded"
            );
            return Ok((Self::disabled(), None));
        }
        let key_file = config.effective_key_file();
        let key = load_or_generate_key(&key_file)?;
        let vkey = key.verifier_key(&config.origin);
        let url = config.effective_url();
        let shown = tether_store::redact_url(&url);
        let log = AuditLog::open(&url, key, &config.origin)
            .await
            .with_context(|| format!("opening the audit log at `{shown}`"))?;
        if let Some(published) = log
            .reader()
            .published_checkpoint()
            .await
            .context("reading the audit log's published checkpoint")?
        {
            tether_audit::verify::checkpoint(&published, &vkey).map_err(|e| {
                anyhow::anyhow!(
                    "the audit log at `{shown}` has a checkpoint this key and origin do not verify ({e}): every facade writing one log needs the same `audit.key_file` and `audit.origin`"
                )
            })?;
        }
        let vkey_file = key_file.with_extension("vkey");
        if let Err(e) = std::fs::write(&vkey_file, format!("{vkey}\n")) {
            tracing::warn!(path = %vkey_file.display(), error = %e, "could not write the audit verifier key file");
        }
        tracing::info!(store = %shown, origin = %config.origin, verifier_key = %vkey, "audit log open");

        let (queue, jobs) = mpsc::channel(config.queue_capacity);
        let failing = Arc::new(AtomicBool::new(false));
        let urgent = Arc::new(tokio::sync::Notify::new());
        let writer = Writer {
            log,
            jobs,
            urgent: Arc::clone(&urgent),
            failing: Arc::clone(&failing),
            retry: Vec::new(),
            retry_limit: config.queue_capacity.max(MAX_BATCH),
            checkpoint_interval: config.checkpoint_interval(),
        };
        let task = tokio::spawn(writer.run(stop));
        Ok((
            Self {
                shared: Some(Arc::new(Shared {
                    queue,
                    urgent,
                    failing,
                })),
            },
            Some(task),
        ))
    }

    /// Denies at once while the store is failing, before anything is asked
    /// of anyone (a user prompted for a request that is then denied).
    pub fn ready(&self) -> Result<(), FacadeError> {
        match &self.shared {
            Some(shared) if shared.failing.load(Ordering::Acquire) => {
                Err(unavailable("the audit store is refusing writes"))
            }
            _ => Ok(()),
        }
    }

    /// Appends `records` and returns once they are committed and on disk.
    async fn commit(&self, records: Vec<AuditRecord>) -> Result<(), FacadeError> {
        self.commit_with(records, Flush::Disk).await
    }

    /// Appends `records` and returns once they are committed with `flush`.
    async fn commit_with(
        &self,
        records: Vec<AuditRecord>,
        flush: Flush,
    ) -> Result<(), FacadeError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        self.ready()?;
        check(&records)?;
        let (ack, acked) = oneshot::channel();
        let job = Job {
            records,
            ack: Some(ack),
            flush,
        };
        if shared.queue.send(job).await.is_err() {
            return Err(unavailable("the audit writer has stopped"));
        }
        shared.urgent.notify_one();
        match acked.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(detail)) => Err(unavailable(detail)),
            Err(_) => Err(unavailable("the audit writer has stopped")),
        }
    }

    /// Queues `records` to be written behind the answer; a full queue or a
    /// failing store is a deny.
    fn enqueue(&self, records: Vec<AuditRecord>) -> Result<(), FacadeError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        self.ready()?;
        check(&records)?;
        shared
            .queue
            .try_send(Job {
                records,
                ack: None,
                flush: Flush::Deferred,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => unavailable("the audit queue is full"),
                mpsc::error::TrySendError::Closed(_) => unavailable("the audit writer has stopped"),
            })
    }

    /// Queues a record of something that already went wrong; if even that
    /// fails, the log line is all there is.
    fn enqueue_regardless(&self, record: AuditRecord) {
        let Some(shared) = &self.shared else {
            return;
        };
        let (kind, session_id) = (record.kind, record.session_id.clone());
        let outcome = check(std::slice::from_ref(&record)).and_then(|()| {
            shared
                .queue
                .try_send(Job {
                    records: vec![record],
                    ack: None,
                    flush: Flush::Deferred,
                })
                .map_err(|_| unavailable("the audit queue is full or closed"))
        });
        if let Err(e) = outcome {
            tracing::error!(?kind, session_id = %session_id, error = %e, "an audit record could not be queued");
        }
    }

    /// A decision and what came with it: the approval grant it used, or
    /// the ticket now asking the user. `before_issue`: the caller is about
    /// to act on it (issue), so it is committed first, and reaches the disk
    /// with the issuance record's flush before anything is delivered;
    /// otherwise records that come with an approval are committed and
    /// flushed before the answer, a lone decision is queued.
    pub async fn decided(
        &self,
        story: &Story,
        decision: pb::Decision,
        check: &policy_pb::CheckResponse,
        ticket_id: Option<&str>,
        grant: Option<&approval_pb::Grant>,
        before_issue: bool,
    ) -> Result<(), FacadeError> {
        if self.shared.is_none() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(2);
        if let Some(grant) = grant {
            let mut used = story.decided(RecordKind::Approval, check);
            used.decision = "grant_used".into();
            used.ticket_id.clone_from(&grant.ticket_id);
            used.detail = format!("grant {}", grant.grant_id);
            records.push(used);
        }
        let mut record = story.decided(RecordKind::Decision, check);
        record.decision = decision_name(decision).into();
        if let Some(ticket) = ticket_id.or(grant.map(|g| g.ticket_id.as_str())) {
            record.ticket_id = ticket.to_owned();
        }
        record.detail = check.reasons.join("; ");
        records.push(record);
        if let Some(ticket) = ticket_id {
            let mut pending = story.decided(RecordKind::Approval, check);
            pending.decision = "ticket_pending".into();
            pending.ticket_id = ticket.to_owned();
            records.push(pending);
        }
        if before_issue {
            self.commit_with(records, Flush::Deferred).await
        } else if records.len() > 1 {
            self.commit(records).await
        } else {
            self.enqueue(records)
        }
    }

    /// The issuance of `lease`, committed before the credential is handed
    /// over. When it cannot be committed, or the agent is gone by then,
    /// the lease is revoked at once and the credential never delivered.
    #[expect(
        clippy::too_many_arguments,
        reason = "the record's facts, and what revoking an undelivered lease needs"
    )]
    pub async fn issued(
        &self,
        story: &Story,
        check: &policy_pb::CheckResponse,
        lease: &credentials_pb::Lease,
        profile: &str,
        ticket_id: Option<&str>,
        credentials: CredentialIssuerClient<InternalChannel>,
        bearer: AsciiMetadataValue,
    ) -> Result<(), FacadeError> {
        if self.shared.is_none() {
            return Ok(());
        }
        let mut record = story.decided(RecordKind::Issuance, check);
        record.decision = "allow".into();
        record.lease_id.clone_from(&lease.lease_id);
        record.ticket_id = ticket_id.unwrap_or_default().to_owned();
        let ttl = lease.granted_ttl.map(|d| d.seconds).unwrap_or_default();
        record.detail = format!("profile {profile}, ttl {ttl}s");

        // On a task of its own: if this handler is dropped (the agent went
        // away) while the record is being written, the lease is still
        // revoked.
        let (deliver, delivered) = oneshot::channel();
        let audit = self.clone();
        let story = story.clone();
        let lease_id = lease.lease_id.clone();
        let task = async move {
            let committed = audit.commit(vec![record]).await;
            let why = match deliver.send(committed) {
                Ok(()) => return,
                Err(Ok(())) => "not delivered: the agent went away",
                Err(Err(_)) => "not delivered: the audit log could not record its issuance",
            };
            audit
                .revoke_undelivered(&story, &lease_id, why, credentials, bearer)
                .await;
        };
        tokio::spawn(tracing::Instrument::instrument(
            task,
            tracing::Span::current(),
        ));
        let committed = delivered
            .await
            .unwrap_or_else(|_| Err(unavailable("the audit task stopped")));
        if let Err(e) = &committed {
            tracing::error!(lease_id = %lease.lease_id, error = %e, "the issuance could not be recorded; the credential is revoked, not delivered");
        }
        committed
    }

    async fn revoke_undelivered(
        &self,
        story: &Story,
        lease_id: &str,
        why: &str,
        mut credentials: CredentialIssuerClient<InternalChannel>,
        bearer: AsciiMetadataValue,
    ) {
        let mut request = tonic::Request::new(credentials_pb::RevokeLeaseRequest {
            lease_id: lease_id.to_owned(),
            reason: why.to_owned(),
        });
        request.metadata_mut().insert("authorization", bearer);
        let status = match credentials.revoke_lease(request).await {
            Ok(response) => response
                .into_inner()
                .lease
                .map(|l| l.status().as_str_name())
                .unwrap_or_default(),
            // The issuer still ends it with the session.
            Err(e) => {
                tracing::warn!(lease_id, code = ?e.code(), "revoking an undelivered credential failed; it ends with its session");
                "revocation failed"
            }
        };
        tracing::info!(lease_id, status, why, "undelivered credential revoked");
        let mut record = story.record(RecordKind::Revocation);
        record.decision = "revoked".into();
        record.lease_id = lease_id.to_owned();
        record.detail = format!("{why} ({status})");
        self.enqueue_regardless(record);
    }

    /// The session's end and everything it revoked, committed before the
    /// receipt (whose `receipt_id` they carry) is returned. The records
    /// name the session's user and, as the actor (`agent`), whoever ended
    /// it: the session's agent, or the operator.
    pub async fn session_ended(
        &self,
        owner: &SessionOwner,
        by: &EndedBy,
        receipt: &pb::SessionReceipt,
        reason: &str,
    ) -> Result<(), FacadeError> {
        if self.shared.is_none() {
            return Ok(());
        }
        let story = Story::of_session(owner, by, &receipt.receipt_id);
        let mut records = Vec::new();
        for (leases, outcome) in [
            (&receipt.revoked_leases, "revoked"),
            (&receipt.pending_leases, "revoking"),
        ] {
            for lease in leases {
                let mut record = story.record(RecordKind::Revocation);
                record.decision = outcome.into();
                record.lease_id.clone_from(&lease.lease_id);
                record.detail = format!("lease of profile {}", lease.profile);
                records.push(record);
            }
        }
        for grant in &receipt.revoked_grant_ids {
            let mut record = story.record(RecordKind::Revocation);
            record.decision = "revoked".into();
            record.detail = format!("grant {grant}");
            records.push(record);
        }
        for ticket in &receipt.cancelled_ticket_ids {
            let mut record = story.record(RecordKind::Revocation);
            record.decision = "cancelled".into();
            record.ticket_id.clone_from(ticket);
            record.detail = "approval ticket cancelled".into();
            records.push(record);
        }
        let mut end = story.record(RecordKind::SessionEnd);
        end.decision = if receipt.already_ended {
            "already_ended"
        } else {
            "ended"
        }
        .into();
        end.detail = reason.to_owned();
        records.push(end);
        self.commit(records).await
    }

    /// A quarantine the monitoring imposed (`lifted_by` empty) or an
    /// operator lifted, durable before anyone is told. The record's `agent`
    /// is the quarantined agent (or the session's), or the operator who
    /// lifted it; `request_id` is the quarantine's id.
    pub async fn quarantine(
        &self,
        q: &Quarantine,
        risk: Option<&Risk>,
        lifted_by: Option<&str>,
    ) -> Result<(), FacadeError> {
        if self.shared.is_none() {
            return Ok(());
        }
        let mut story = Self::story_of_quarantine(q);
        if let Some(risk) = risk {
            story = story.risk(risk.score);
            story.base.signals = risk.nonzero_signals();
        }
        let mut record = story.record(RecordKind::Quarantine);
        match lifted_by {
            None => {
                record.decision = "quarantined".into();
                record.detail = format!(
                    "{} quarantined by rule {}: {}{}",
                    q.kind.as_str(),
                    q.rule,
                    q.reason,
                    q.until_ms
                        .map(|u| format!(", until {u} (Unix ms)"))
                        .unwrap_or_default()
                );
            }
            Some(operator) => {
                record.decision = "lifted".into();
                record.agent = operator.to_owned();
                record.detail = format!(
                    "{} quarantine of {} lifted: {}",
                    q.kind.as_str(),
                    q.subject,
                    q.lift_reason
                );
            }
        }
        self.commit(vec![record]).await
    }

    fn story_of_quarantine(q: &Quarantine) -> Story {
        let mut story = Story::new(None, &q.id);
        story.base.agent.clone_from(&q.agent);
        story.base.user_sub.clone_from(&q.user_sub);
        story.base.session_id.clone_from(&q.session_id);
        story
    }

    /// A request that failed with `error` after (`claims` known) or before
    /// its token was checked: a `failure` record when a dependency failed,
    /// a `denial` record when it was refused for another reason than its
    /// policy decision (which has its own record). Refusals of callers not
    /// yet identified are not recorded (nobody to attribute them to).
    pub fn refused(
        &self,
        claims: Option<&DelegatedClaims>,
        action: Option<&pb::EntityUid>,
        resource: Option<&pb::EntityUid>,
        error: &FacadeError,
    ) {
        if self.shared.is_none() {
            return;
        }
        let kind = match error {
            FacadeError::PolicyDenied { .. }
            | FacadeError::Dependency {
                dependency: Dependency::Audit,
                ..
            } => return,
            FacadeError::Dependency { .. }
            | FacadeError::DeadlineExceeded(_)
            | FacadeError::Internal(_) => RecordKind::Failure,
            FacadeError::Token(e) if e.is_unavailable() => RecordKind::Failure,
            _ if claims.is_none() => return,
            _ => RecordKind::Denial,
        };
        let story = Story::new(claims, "").target(cedar_uid(action), cedar_uid(resource));
        let mut record = story.record(kind);
        record.decision = "deny".into();
        let dependency = error
            .error_metadata()
            .remove("dependency")
            .map(|d| format!(" (dependency `{d}`)"))
            .unwrap_or_default();
        record.detail = format!(
            "{}{dependency}: {error}",
            error.reason().unwrap_or_else(|| "ERROR".into())
        );
        self.enqueue_regardless(record);
    }
}

/// A record that cannot be encoded (too large, a non-finite risk) is a
/// bug; it is refused here rather than poisoning a batch in the writer.
fn check(records: &[AuditRecord]) -> Result<(), FacadeError> {
    for record in records {
        record
            .to_leaf()
            .map_err(|e| FacadeError::Internal(format!("an audit record was refused: {e}")))?;
    }
    Ok(())
}

/// Loads the log's key, or generates and saves one when the file does not
/// exist (first start).
fn load_or_generate_key(path: &Path) -> anyhow::Result<AuditKey> {
    if path.exists() {
        return AuditKey::load(path).context("loading the audit log's checkpoint key");
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the directory `{}`", dir.display()))?;
    }
    let key = AuditKey::generate();
    key.save(path)
        .context("saving the new audit log checkpoint key")?;
    tracing::info!(path = %path.display(), "generated the audit log's checkpoint key");
    Ok(key)
}

/// The one task that appends to the log and publishes its checkpoints.
struct Writer {
    log: AuditLog,
    jobs: mpsc::Receiver<Job>,
    urgent: Arc<tokio::sync::Notify>,
    failing: Arc<AtomicBool>,
    /// Queued records a failed write left behind, oldest first.
    retry: Vec<AuditRecord>,
    retry_limit: usize,
    checkpoint_interval: Duration,
}

impl Writer {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut checkpoints = tokio::time::interval(self.checkpoint_interval);
        checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retries = tokio::time::interval(RETRY_EVERY);
        retries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let failing = self.failing.load(Ordering::Acquire);
            tokio::select! {
                biased;
                () = async { drop(stop.wait_for(|stopped| *stopped).await) } => break,
                job = self.jobs.recv() => match job {
                    Some(job) => self.write(job).await,
                    None => break,
                },
                _ = retries.tick(), if failing => self.recover().await,
                _ = checkpoints.tick() => self.publish().await,
            }
        }
        // What was queued before the stop, then a last checkpoint.
        while let Ok(job) = self.jobs.try_recv() {
            self.write(job).await;
        }
        if !self.retry.is_empty() {
            self.recover().await;
        }
        self.publish().await;
        if !self.retry.is_empty() {
            tracing::error!(
                records = self.retry.len(),
                "the facade stopped with audit records the store would not take; they are lost"
            );
        }
    }

    /// Appends `first` and whatever else is queued, in one transaction.
    /// When nobody waits for the commit (records written behind their
    /// answers), it lingers a moment to gather more: fewer, larger
    /// commits, less work beside the request path. A waiting request ends
    /// the lingering at once.
    async fn write(&mut self, first: Job) {
        let waited_for = first.ack.is_some();
        let mut flush = first.flush;
        if !waited_for {
            // One wake-up per batch, not one per record.
            tokio::select! {
                () = tokio::time::sleep(LINGER) => {}
                () = self.urgent.notified() => {}
            }
        }
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            let Ok(job) = self.jobs.try_recv() else {
                break;
            };
            if job.flush == Flush::Disk {
                flush = Flush::Disk;
            }
            jobs.push(job);
        }
        let mut records = std::mem::take(&mut self.retry);
        let retried = records.len();
        let mut acks = Vec::with_capacity(jobs.len());
        for job in jobs {
            acks.push((job.records.len(), job.ack));
            records.extend(job.records);
        }
        // On disk when a waiting request needs it; records written behind
        // their answers, and a decision whose issuance record will flush
        // it, only need to be committed (in order, safe from a crash of
        // this process) and reach the disk with the next flush.
        match self.log.append_all_with(&records, flush).await {
            Ok(appended) => {
                if self.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!("the audit store takes writes again");
                }
                let mut next = appended.start + retried as u64;
                for (n, ack) in acks {
                    let n = n as u64;
                    if let Some(ack) = ack {
                        let _ = ack.send(Ok(next..next + n));
                    }
                    next += n;
                }
            }
            Err(e) => {
                self.failed(&e);
                // The requests waiting for a commit are denied; what was
                // queued behind an answer already given is kept.
                let mut rest = records.split_off(retried).into_iter();
                for (n, ack) in acks {
                    let job_records = rest.by_ref().take(n);
                    match ack {
                        Some(ack) => {
                            job_records.for_each(drop);
                            let _ = ack.send(Err("the audit store refused the write".into()));
                        }
                        None => records.extend(job_records),
                    }
                }
                self.keep(records);
            }
        }
    }

    fn failed(&self, error: &tether_audit::AuditError) {
        if !self.failing.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %error, "the audit store refused a write; requests are denied until it takes writes again");
        } else {
            tracing::debug!(error = %error, "the audit store still refuses writes");
        }
    }

    fn keep(&mut self, mut records: Vec<AuditRecord>) {
        if records.len() > self.retry_limit {
            let lost = records.len() - self.retry_limit;
            for record in records.drain(..lost) {
                tracing::error!(
                    kind = ?record.kind,
                    session_id = %record.session_id,
                    request_id = %record.request_id,
                    time_ms = record.time_ms,
                    "audit record lost: the store refused writes for too long"
                );
            }
        }
        self.retry = records;
    }

    /// While failing: writes what was kept, or probes with a checkpoint.
    async fn recover(&mut self) {
        if self.retry.is_empty() {
            self.publish().await;
            return;
        }
        let records = std::mem::take(&mut self.retry);
        match self.log.append_all_with(&records, Flush::Deferred).await {
            Ok(_) => {
                self.failing.store(false, Ordering::Release);
                tracing::info!(
                    records = records.len(),
                    "the audit store takes writes again"
                );
            }
            Err(e) => {
                self.failed(&e);
                self.keep(records);
            }
        }
    }

    /// Publishes a signed checkpoint in the store (a write: it also tells
    /// whether the store takes writes).
    async fn publish(&mut self) {
        match self.log.publish_checkpoint().await {
            Ok(checkpoint) => {
                if self.failing.load(Ordering::Acquire) && self.retry.is_empty() {
                    self.failing.store(false, Ordering::Release);
                    tracing::info!("the audit store takes writes again");
                }
                tracing::debug!(size = checkpoint.size(), "audit checkpoint published");
            }
            Err(e) => self.failed(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> AuditConfig {
        AuditConfig {
            data_dir: dir.to_owned(),
            checkpoint_interval_secs: 1,
            ..AuditConfig::default()
        }
    }

    fn check_response() -> policy_pb::CheckResponse {
        policy_pb::CheckResponse {
            policy_ids: vec!["hr-read".into()],
            policy_version: "sha256:00".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn records_are_written_in_order_and_checkpointed_at_stop() {
        let dir = tempfile::tempdir().unwrap();
        let (stop, stopped) = watch::channel(false);
        let (audit, task) = Audit::start(&config(dir.path()), stopped).await.unwrap();
        // The key was generated, its verifier key written next to it.
        let key = AuditKey::load(&dir.path().join("audit-key.pem")).unwrap();
        let vkey = std::fs::read_to_string(dir.path().join("audit-key.vkey")).unwrap();
        assert_eq!(vkey.trim(), key.verifier_key("audit.tether.local"));

        let story = Story::new(None, "dec_1")
            .target(r#"Action::"read""#.into(), r#"Employee::"1""#.into())
            .risk(0);
        let check = check_response();
        audit
            .decided(&story, pb::Decision::Deny, &check, None, None, false)
            .await
            .unwrap();
        audit
            .decided(&story, pb::Decision::Allow, &check, None, None, true)
            .await
            .unwrap();
        let grant = approval_pb::Grant {
            grant_id: "g-1".into(),
            ticket_id: "t-1".into(),
            ..Default::default()
        };
        audit
            .decided(
                &story,
                pb::Decision::Allow,
                &check,
                None,
                Some(&grant),
                false,
            )
            .await
            .unwrap();
        stop.send(true).unwrap();
        task.unwrap().await.unwrap();

        let reader = tether_audit::AuditReader::open(&config(dir.path()).effective_url())
            .await
            .unwrap();
        let found = reader.request("dec_1").await.unwrap();
        let got: Vec<(RecordKind, &str)> = found
            .iter()
            .map(|e| (e.record.kind, e.record.decision.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (RecordKind::Decision, "deny"),
                (RecordKind::Decision, "allow"),
                (RecordKind::Approval, "grant_used"),
                (RecordKind::Decision, "allow"),
            ]
        );
        assert_eq!(found[3].record.ticket_id, "t-1");
        assert_eq!(found[0].record.policy_ids, ["hr-read"]);
        // The last checkpoint covers everything.
        let published = reader.published_checkpoint().await.unwrap().unwrap();
        let checkpoint = tether_audit::verify::checkpoint(&published, vkey.trim()).unwrap();
        assert_eq!(checkpoint.size(), 4);
    }

    #[tokio::test]
    async fn a_store_with_another_keys_checkpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_stop, stopped) = watch::channel(false);
        let (_audit, _task) = Audit::start(&config(dir.path()), stopped.clone())
            .await
            .unwrap();
        // Wait for the first checkpoint (the writer publishes at once).
        let reader = tether_audit::AuditReader::open(&config(dir.path()).effective_url())
            .await
            .unwrap();
        for _ in 0..100 {
            if reader.published_checkpoint().await.unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let other = AuditConfig {
            key_file: Some(dir.path().join("other.pem")),
            ..config(dir.path())
        };
        let err = Audit::start(&other, stopped).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("same `audit.key_file`"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn disabled_records_nothing_and_allows() {
        let audit = Audit::disabled();
        audit.ready().unwrap();
        let story = Story::new(None, "dec_x");
        audit
            .decided(
                &story,
                pb::Decision::Allow,
                &check_response(),
                None,
                None,
                true,
            )
            .await
            .unwrap();
    }

    #[test]
    fn uids_as_sent_are_quoted_and_clipped() {
        let uid = pb::EntityUid {
            r#type: "Employee".into(),
            id: "10\"42\n".into(),
        };
        assert_eq!(cedar_uid(Some(&uid)), r#"Employee::"10\"42\n""#);
        assert_eq!(cedar_uid(None), "");
    }
}
