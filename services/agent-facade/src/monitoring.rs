//! Real-time monitoring: risk from the agent's own recent behaviour, and
//! quarantine when a rule says so (docs/design/011-monitoring.md).
//!
//! Every decision the facade takes (the same events its audit records
//! describe) adds to counters of the session and of the agent: decisions,
//! denials, attempts a policy marks `@signal("out_of_intent")` (or any other
//! signal name the pack uses), approvals requested, denied and ignored,
//! credential requests, resources touched, token failures. Counters live in
//! the monitoring store in buckets of [`BUCKET_MS`]; a sliding window sums
//! the buckets it covers. The store is SQLite for one replica or PostgreSQL
//! shared by every replica (schema `facade_monitoring`), so replicas count
//! together and agree on who is quarantined.
//!
//! Before each decision the counters are turned into
//! `context.risk = {score, level, signals}` ([`Risk`]): each signal times its
//! weight (rates only above their allowance), plus `[risk] baseline_score`,
//! capped at 100; the level from the `medium_at` and `high_at` thresholds.
//! After the decision its events are added, and each rule whose signal grew
//! is checked: a rule that fires quarantines the session or the agent
//! (`service.rs` acts on it). A quarantine is one row, inserted once (a
//! partial unique index), so across replicas exactly one facade raises its
//! alert.
//!
//! What a replica knows of a session is the store's counts as it last read
//! them plus its own events since, at once; it reads the store again after
//! `refresh_ms` (other replicas' events), and at once after it counted an
//! event a rule counts for the agent. Events no rule counts are written
//! behind the answer, many decisions in one statement.
//!
//! INVARIANT: a store that cannot be read or written is an error the
//! request is denied with (DEPENDENCY_UNAVAILABLE, dependency
//! `monitoring`), never a score of 0; after a failed write behind the
//! answer, every decision is denied until a write succeeds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::AnyPool;
use tether_runtime::ConfigError;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Dependency, FacadeError};

/// The width of one counter bucket. A window of W counts the buckets that
/// overlap the last W: events up to one bucket older than W may count
/// (never fewer than W's).
pub const BUCKET_MS: i64 = 10_000;
/// The window of the per-minute rates.
const RATE_WINDOW_MS: i64 = 60_000;
/// How often old buckets are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long a ticket outcome's "already counted" mark is kept.
const ONCE_RETENTION_MS: i64 = 24 * 3600 * 1000;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The signals `context.risk.signals` carries, in this order. Other names
/// a policy pack's `@signal` annotations use are counted and may have a
/// weight and rules, but only these reach the policy (the schema fixes the
/// record's shape).
pub const SIGNALS: &[&str] = &[
    "denials",
    "denial_rate_pct",
    "out_of_intent",
    "other_users_resources",
    "approvals_requested",
    "approvals_denied",
    "approvals_ignored",
    "credential_requests_per_min",
    "distinct_resources_per_min",
    "token_failures",
];

/// Counter names that are not signals of their own.
const DECISIONS: &str = "decisions";
const CREDENTIAL_REQUESTS: &str = "credential_requests";
/// The read's name for the distinct resources of the last minute.
const RESOURCES: &str = "@";

/// `[monitoring]`: signals, score, quarantine rules and alerts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    /// Count behaviour, score it and quarantine. Off: `context.risk` is
    /// `[risk] baseline_score` with its level and every signal 0.
    pub enabled: bool,
    /// `sqlite:…` or `postgres://…` (schema `facade_monitoring`; shared by
    /// every replica). Unset: SQLite at `<data_dir>/monitoring.db` (one
    /// replica only).
    pub url: Option<String>,
    /// Directory of the default SQLite file.
    pub data_dir: PathBuf,
    /// Connections to the store at most.
    pub max_connections: u32,
    /// How long a replica decides on the counts it read (plus its own
    /// events since, which count at once) before it reads the store again:
    /// the delay before other replicas' events raise a score here. 0: the
    /// store is read before every decision.
    pub refresh_ms: u64,
    /// The window over which one session's signals are counted.
    pub session_window_secs: u64,
    /// The window over which one agent's signals (all its sessions) are
    /// counted. The published signals are the larger of the two counts.
    pub agent_window_secs: u64,
    /// Score at which the level is `medium` (below: `low`).
    pub medium_at: i64,
    /// Score at which the level is `high`.
    pub high_at: i64,
    /// Points per unit of each signal (per denial, per percent of denial
    /// rate above its allowance, ...). Names not given keep their default;
    /// a pack's own `@signal` names may be added.
    pub weights: BTreeMap<String, i64>,
    /// Denial rate (percent of the window's decisions) that scores nothing.
    pub allow_denial_rate_pct: i64,
    /// The denial rate counts once the window holds this many decisions.
    pub min_decisions_for_rate: i64,
    /// Credential requests per minute that score nothing.
    pub allow_credential_requests_per_min: i64,
    /// Distinct resources per minute that score nothing.
    pub allow_distinct_resources_per_min: i64,
    /// Quarantine rules. Unset: [`default_rules`].
    pub rules: Option<Vec<Rule>>,
    /// Where quarantine alerts are also POSTed (optional).
    pub webhook: Option<crate::alerts::WebhookConfig>,
}

/// One quarantine rule: `count` or more of `signal` within `window_secs`,
/// counted for the session (`quarantine = "session"`) or for the agent
/// across its sessions (`"agent"`, for `duration_secs`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Named in the audit record, the alert and `tether quarantine list`.
    pub name: String,
    /// A counter: `denials`, `out_of_intent`, `approvals_denied`,
    /// `approvals_ignored`, `approvals_requested`, `credential_requests`,
    /// `token_failures`, `other_users_resources`, or a pack's `@signal`.
    pub signal: String,
    pub count: i64,
    pub window_secs: u64,
    pub quarantine: QuarantineKind,
    /// How long an agent quarantine lasts (agent rules only).
    #[serde(default)]
    pub duration_secs: Option<u64>,
}

/// What a rule quarantines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineKind {
    /// The session is ended exactly as EndSession ends it.
    Session,
    /// The agent may start no session for a while; its live sessions are
    /// ended.
    Agent,
}

impl QuarantineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Agent => "agent",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "session" => Some(Self::Session),
            "agent" => Some(Self::Agent),
            _ => None,
        }
    }
}

/// The examples: 5 denials in 60 s, 2 out-of-intent attempts (in
/// 10 minutes), or an approval the user denied, each ends the session.
pub fn default_rules() -> Vec<Rule> {
    let rule = |name: &str, signal: &str, count, window_secs| Rule {
        name: name.into(),
        signal: signal.into(),
        count,
        window_secs,
        quarantine: QuarantineKind::Session,
        duration_secs: None,
    };
    vec![
        rule("denial-burst", "denials", 5, 60),
        rule("repeated-out-of-intent", "out_of_intent", 2, 600),
        rule("approval-denied-by-user", "approvals_denied", 1, 600),
    ]
}

/// Default weights (points per unit).
pub fn default_weights() -> BTreeMap<String, i64> {
    [
        ("denials", 10),
        ("denial_rate_pct", 1),
        ("out_of_intent", 25),
        ("other_users_resources", 20),
        ("approvals_requested", 0),
        ("approvals_denied", 30),
        ("approvals_ignored", 10),
        ("credential_requests_per_min", 2),
        ("distinct_resources_per_min", 3),
        ("token_failures", 10),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            url: None,
            data_dir: PathBuf::from("data"),
            max_connections: 8,
            refresh_ms: 100,
            session_window_secs: 300,
            agent_window_secs: 900,
            medium_at: 40,
            high_at: 70,
            weights: BTreeMap::new(),
            allow_denial_rate_pct: 50,
            min_decisions_for_rate: 5,
            allow_credential_requests_per_min: 10,
            allow_distinct_resources_per_min: 10,
            rules: None,
            webhook: None,
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

impl MonitoringConfig {
    /// The store URL actually used.
    pub fn effective_url(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| tether_store::sqlite_url(&self.data_dir.join("monitoring.db")))
    }

    /// Weights: the defaults with the configured ones over them.
    pub fn effective_weights(&self) -> BTreeMap<String, i64> {
        let mut weights = default_weights();
        weights.extend(self.weights.clone());
        weights
    }

    pub fn effective_rules(&self) -> Vec<Rule> {
        self.rules.clone().unwrap_or_else(default_rules)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if let Some(url) = &self.url
            && tether_store::Backend::of(url).is_none()
        {
            return invalid(format!(
                "monitoring.url `{}` must be sqlite:… or postgres://…",
                tether_store::redact_url(url)
            ));
        }
        if self.max_connections == 0 {
            return invalid("monitoring.max_connections must be at least 1".into());
        }
        if self.refresh_ms > 10_000 {
            return invalid(format!(
                "monitoring.refresh_ms must be at most 10000, got {}",
                self.refresh_ms
            ));
        }
        for (key, secs) in [
            ("session_window_secs", self.session_window_secs),
            ("agent_window_secs", self.agent_window_secs),
        ] {
            if !(10..=86_400).contains(&secs) {
                return invalid(format!(
                    "monitoring.{key} must be between 10 and 86400, got {secs}"
                ));
            }
        }
        if !(1..=100).contains(&self.medium_at)
            || !(1..=100).contains(&self.high_at)
            || self.medium_at >= self.high_at
        {
            return invalid(format!(
                "monitoring thresholds need 1 <= medium_at < high_at <= 100, got medium_at = {} and high_at = {}",
                self.medium_at, self.high_at
            ));
        }
        for (name, weight) in &self.weights {
            if !valid_name(name) {
                return invalid(format!(
                    "monitoring.weights: `{}` is not a signal name",
                    tether_runtime::clip(name)
                ));
            }
            if !(0..=100).contains(weight) {
                return invalid(format!(
                    "monitoring.weights.{name} must be between 0 and 100, got {weight}"
                ));
            }
        }
        for (key, value) in [
            ("allow_denial_rate_pct", self.allow_denial_rate_pct),
            ("min_decisions_for_rate", self.min_decisions_for_rate),
            (
                "allow_credential_requests_per_min",
                self.allow_credential_requests_per_min,
            ),
            (
                "allow_distinct_resources_per_min",
                self.allow_distinct_resources_per_min,
            ),
        ] {
            if !(0..=100_000).contains(&value) {
                return invalid(format!(
                    "monitoring.{key} must be between 0 and 100000, got {value}"
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for rule in self.effective_rules() {
            let at = format!("monitoring.rules `{}`", tether_runtime::clip(&rule.name));
            if !valid_name(&rule.name) || !names.insert(rule.name.clone()) {
                return invalid(format!(
                    "{at}: a rule needs a unique name of a-z, 0-9, `_` and `-`"
                ));
            }
            if !valid_name(&rule.signal) || rule.signal.contains('-') {
                return invalid(format!("{at}: `signal` is not a signal name"));
            }
            if rule.signal.ends_with("_per_min") || rule.signal == "denial_rate_pct" {
                return invalid(format!(
                    "{at}: rules count events; use `credential_requests` or `denials`, not a rate"
                ));
            }
            if !(1..=100_000).contains(&rule.count) {
                return invalid(format!("{at}: `count` must be between 1 and 100000"));
            }
            if !(1..=86_400).contains(&rule.window_secs) {
                return invalid(format!("{at}: `window_secs` must be between 1 and 86400"));
            }
            match (rule.quarantine, rule.duration_secs) {
                (QuarantineKind::Agent, Some(d)) if (1..=30 * 86_400).contains(&d) => {}
                (QuarantineKind::Agent, _) => {
                    return invalid(format!(
                        "{at}: an agent quarantine needs `duration_secs` between 1 and 2592000"
                    ));
                }
                (QuarantineKind::Session, None) => {}
                (QuarantineKind::Session, Some(_)) => {
                    return invalid(format!(
                        "{at}: `duration_secs` is for agent quarantines (a session quarantine ends the session)"
                    ));
                }
            }
        }
        if let Some(webhook) = &self.webhook {
            webhook.validate()?;
        }
        Ok(())
    }

    /// The longest window anything reads (what pruning keeps).
    fn longest_window_ms(&self) -> i64 {
        let rules = self
            .effective_rules()
            .iter()
            .map(|r| r.window_secs)
            .max()
            .unwrap_or(0);
        let secs = self
            .session_window_secs
            .max(self.agent_window_secs)
            .max(rules)
            .max(60);
        i64::try_from(secs).unwrap_or(86_400) * 1000
    }
}

/// `context.risk` of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Risk {
    pub score: i64,
    pub level: &'static str,
    /// Every name of [`SIGNALS`], in that order.
    pub signals: Vec<(&'static str, i64)>,
}

impl Risk {
    /// A score without behaviour (monitoring off).
    pub fn baseline(score: i64, medium_at: i64, high_at: i64) -> Self {
        Self {
            score,
            level: level(score, medium_at, high_at),
            signals: SIGNALS.iter().map(|s| (*s, 0)).collect(),
        }
    }

    /// `{score, level, signals}` as Cedar's context JSON.
    pub fn to_context(&self) -> Value {
        let signals: serde_json::Map<String, Value> = self
            .signals
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        json!({ "score": self.score, "level": self.level, "signals": signals })
    }

    /// The signals that are not 0, for the audit record.
    pub fn nonzero_signals(&self) -> BTreeMap<String, i64> {
        self.signals
            .iter()
            .filter(|(_, v)| *v != 0)
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect()
    }
}

fn level(score: i64, medium_at: i64, high_at: i64) -> &'static str {
    if score >= high_at {
        "high"
    } else if score >= medium_at {
        "medium"
    } else {
        "low"
    }
}

/// What one scope (a session, or an agent) did in its windows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Counter name → events in the scope's window.
    pub window: BTreeMap<String, i64>,
    /// Credential requests in the last minute.
    pub credential_requests_last_min: i64,
    /// Distinct resources in the last minute.
    pub distinct_resources_last_min: i64,
}

impl Counts {
    fn get(&self, name: &str) -> i64 {
        self.window.get(name).copied().unwrap_or(0)
    }

    /// The published signal values of this scope.
    fn signals(&self, min_decisions_for_rate: i64) -> BTreeMap<&'static str, i64> {
        let decisions = self.get(DECISIONS);
        let denials = self.get("denials");
        let rate = if decisions >= min_decisions_for_rate.max(1) {
            denials.saturating_mul(100) / decisions
        } else {
            0
        };
        SIGNALS
            .iter()
            .map(|name| {
                let value = match *name {
                    "denial_rate_pct" => rate,
                    "credential_requests_per_min" => self.credential_requests_last_min,
                    "distinct_resources_per_min" => self.distinct_resources_last_min,
                    other => self.get(other),
                };
                (*name, value)
            })
            .collect()
    }
}

/// One scope's counts as a replica knows them: the store's, as last read,
/// and this replica's own events since.
#[derive(Debug, Clone, Default)]
struct Tally {
    counts: Counts,
    /// The resources of the last minute known by name: the read lists up
    /// to [`LISTED_RESOURCES`] (past that a resource not listed counts once
    /// more, too many rather than too few).
    resources: HashSet<String>,
}

impl Tally {
    /// Adds `n` of counter `signal` (`@<resource>`: a resource touched).
    fn add(&mut self, signal: &str, n: i64, last_minute: bool) {
        if let Some(resource) = signal.strip_prefix('@') {
            if last_minute && self.resources.insert(resource.to_owned()) {
                self.counts.distinct_resources_last_min += 1;
            }
            return;
        }
        *self.counts.window.entry(signal.to_owned()).or_insert(0) += n;
        if signal == CREDENTIAL_REQUESTS && last_minute {
            self.counts.credential_requests_last_min += n;
        }
    }

    fn add_events(&mut self, events: &Events) {
        for (signal, n) in &events.counts {
            self.add(signal, *n, true);
        }
        if let Some(resource) = &events.resource {
            self.add(&format!("@{resource}"), 1, true);
        }
    }
}

/// What a replica knows of one session.
#[derive(Debug, Clone)]
struct Known {
    agent: String,
    /// Until when decisions are taken on it without reading the store.
    fresh_until: Instant,
    session: Tally,
    agent_tally: Tally,
}

impl Known {
    fn risk(&self, scoring: &Scoring) -> Risk {
        scoring.risk(&self.session.counts, &self.agent_tally.counts)
    }

    /// Decisions of `agent` may be taken on it without a read.
    fn fresh_for(&self, agent: &str) -> bool {
        self.agent == agent && Instant::now() < self.fresh_until
    }
}

/// A counter row: scope, subject, signal, bucket.
type Key = (&'static str, String, String, i64);

/// A replica's memory: what it knows of recent sessions, and the events
/// written behind the answer that are not in the store yet.
#[derive(Debug, Default)]
struct Local {
    known: HashMap<String, Known>,
    /// Events not yet taken by a write.
    pending: HashMap<Key, i64>,
    /// Events being written (counted by a read until their commit).
    writing: HashMap<Key, i64>,
    /// Why the last write behind the answer failed; every decision is
    /// denied while this is set.
    failure: Option<String>,
    /// Writes behind the answer committed so far: a read that saw this
    /// change may have missed a write's events (committed after the read
    /// but no longer in `writing`), so it is not taken as fresh.
    writes: u64,
}

impl Local {
    /// Adds the events not in the store yet to a fresh read of `sid` and
    /// `agent`.
    fn add_unwritten(
        &self,
        sid: &str,
        agent: &str,
        now: i64,
        known: &mut Known,
        windows: (i64, i64),
    ) {
        let (session_from, agent_from) =
            (first_bucket(now, windows.0), first_bucket(now, windows.1));
        let minute_from = first_bucket(now, RATE_WINDOW_MS);
        for ((scope, subject, signal, bucket), n) in self.pending.iter().chain(&self.writing) {
            let (tally, from) = match *scope {
                "session" if subject == sid => (&mut known.session, session_from),
                "agent" if subject == agent => (&mut known.agent_tally, agent_from),
                _ => continue,
            };
            // As the read counts: resources over the last minute, the
            // rest over the scope's window.
            let last_minute = *bucket >= minute_from;
            if signal.starts_with('@') || *bucket >= from {
                tally.add(signal, *n, last_minute);
            }
        }
    }
}

/// The scoring: weights, allowances and thresholds.
#[derive(Debug, Clone)]
pub struct Scoring {
    weights: BTreeMap<String, i64>,
    baseline: i64,
    medium_at: i64,
    high_at: i64,
    allow_denial_rate_pct: i64,
    allow_credential_requests_per_min: i64,
    allow_distinct_resources_per_min: i64,
    min_decisions_for_rate: i64,
}

impl Scoring {
    pub fn new(config: &MonitoringConfig, baseline: i64) -> Self {
        Self {
            weights: config.effective_weights(),
            baseline,
            medium_at: config.medium_at,
            high_at: config.high_at,
            allow_denial_rate_pct: config.allow_denial_rate_pct,
            allow_credential_requests_per_min: config.allow_credential_requests_per_min,
            allow_distinct_resources_per_min: config.allow_distinct_resources_per_min,
            min_decisions_for_rate: config.min_decisions_for_rate,
        }
    }

    fn allowance(&self, signal: &str) -> i64 {
        match signal {
            "denial_rate_pct" => self.allow_denial_rate_pct,
            "credential_requests_per_min" => self.allow_credential_requests_per_min,
            "distinct_resources_per_min" => self.allow_distinct_resources_per_min,
            _ => 0,
        }
    }

    /// The risk of a request by an agent whose session counted `session`
    /// and whose agent counted `agent`: each published signal is the
    /// larger of the two; the score is the baseline plus each signal above
    /// its allowance times its weight, plus the pack's own signals (agent
    /// or session, the larger) times theirs; capped at 100.
    pub fn risk(&self, session: &Counts, agent: &Counts) -> Risk {
        let (s, a) = (
            session.signals(self.min_decisions_for_rate),
            agent.signals(self.min_decisions_for_rate),
        );
        let signals: Vec<(&'static str, i64)> = SIGNALS
            .iter()
            .map(|name| {
                let value = s
                    .get(name)
                    .copied()
                    .unwrap_or(0)
                    .max(a.get(name).copied().unwrap_or(0));
                (*name, value)
            })
            .collect();
        let mut score = self.baseline;
        for (name, value) in &signals {
            let weight = self.weights.get(*name).copied().unwrap_or(0);
            let over = value.saturating_sub(self.allowance(name)).max(0);
            score = score.saturating_add(weight.saturating_mul(over));
        }
        // A pack's own signal names: counted like denials.
        for (name, weight) in &self.weights {
            if SIGNALS.contains(&name.as_str()) {
                continue;
            }
            let value = session.get(name).max(agent.get(name));
            score = score.saturating_add(weight.saturating_mul(value));
        }
        let score = score.clamp(0, 100);
        Risk {
            score,
            level: level(score, self.medium_at, self.high_at),
            signals,
        }
    }
}

/// The first bucket a window of `window_ms` ending at `now_ms` covers.
pub fn first_bucket(now_ms: i64, window_ms: i64) -> i64 {
    now_ms.saturating_sub(window_ms).div_euclid(BUCKET_MS)
}

/// What one decision (or one approval outcome) adds.
#[derive(Debug, Clone, Default)]
pub struct Events {
    /// Counter name → how many (`decisions`, `denials`, a pack's signals...).
    pub counts: BTreeMap<String, i64>,
    /// The resource touched, Cedar uid form.
    pub resource: Option<String>,
    /// Counted at most once ever (e.g. `ticket:<id>:denied`): replicas and
    /// repeated watches of one ticket count its outcome once.
    pub once: Option<String>,
}

impl Events {
    pub fn add(&mut self, name: &str, n: i64) {
        if n != 0 {
            *self.counts.entry(name.to_owned()).or_insert(0) += n;
        }
    }

    /// A decision: `decision` is `allow`, `deny` or `approval_required`;
    /// `signals` are the determining policies' `@signal` names.
    pub fn decision(
        decision: &str,
        signals: &[String],
        resource: String,
        credential_request: bool,
        ticket_created: bool,
    ) -> Self {
        let mut events = Self {
            resource: Some(resource),
            ..Self::default()
        };
        events.add(DECISIONS, 1);
        if decision == "deny" {
            events.add("denials", 1);
        }
        for signal in signals {
            if valid_name(signal) {
                events.add(signal, 1);
            }
        }
        if credential_request {
            events.add(CREDENTIAL_REQUESTS, 1);
        }
        if ticket_created {
            events.add("approvals_requested", 1);
        }
        events
    }
}

/// A rule that fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub rule: Rule,
    /// What it counted.
    pub count: i64,
}

/// One quarantine, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    pub id: String,
    pub kind: QuarantineKind,
    /// The session id or the agent id.
    pub subject: String,
    pub rule: String,
    pub reason: String,
    pub session_id: String,
    pub agent: String,
    pub user_sub: String,
    pub created_at_ms: i64,
    /// Agent quarantines: when they end by themselves.
    pub until_ms: Option<i64>,
    pub lifted_at_ms: Option<i64>,
    pub lifted_by: String,
    pub lift_reason: String,
}

impl Quarantine {
    /// In force at `now_ms`.
    pub fn active(&self, now_ms: i64) -> bool {
        self.lifted_at_ms.is_none() && self.until_ms.is_none_or(|until| until > now_ms)
    }
}

type QuarantineRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    String,
    String,
);

/// The columns of a [`QuarantineRow`], for `concat!`.
macro_rules! quarantine_columns {
    () => {
        "id, kind, subject, rule, reason, session_id, agent, user_sub, created_at, until_at, lifted_at, lifted_by, lift_reason"
    };
}

fn quarantine_of(row: QuarantineRow) -> Option<Quarantine> {
    Some(Quarantine {
        kind: QuarantineKind::parse(&row.1)?,
        id: row.0,
        subject: row.2,
        rule: row.3,
        reason: row.4,
        session_id: row.5,
        agent: row.6,
        user_sub: row.7,
        created_at_ms: row.8,
        until_ms: row.9,
        lifted_at_ms: row.10,
        lifted_by: row.11,
        lift_reason: row.12,
    })
}

/// The monitoring store and scoring, as the handlers use them. Cheap to
/// clone. `None` inside: monitoring is off.
#[derive(Debug, Clone)]
pub struct Monitor {
    inner: Option<std::sync::Arc<Shared>>,
    baseline: Risk,
}

#[derive(Debug)]
struct Shared {
    pool: AnyPool,
    scoring: Scoring,
    rules: Vec<Rule>,
    session_window_ms: i64,
    agent_window_ms: i64,
    refresh: Duration,
    local: std::sync::Mutex<Local>,
    /// Wakes the writer when events wait to be written.
    wake: tokio::sync::Notify,
}

/// Sessions a replica remembers; past that the memory starts over (a
/// forgotten session costs one read).
const MAX_REMEMBERED: usize = 10_000;

/// Counter rows waiting to be written behind the answer at most; past
/// that a decision's events are written before its answer.
const MAX_PENDING: usize = 50_000;

/// How long the writer waits for more events before it writes: other
/// replicas see an allowed decision's events this much later (this one
/// counts them at once), and the store takes one write per this period.
const LINGER: Duration = Duration::from_millis(50);

/// How often a failed write behind the answer is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Counter rows per upsert statement (5 parameters each, far below every
/// backend's limit).
const ROWS_PER_STATEMENT: usize = 500;

/// Resources of the last minute a read lists by name at most.
const LISTED_RESOURCES: i64 = 1_000;

fn unavailable(e: impl std::fmt::Display) -> FacadeError {
    tracing::warn!(error = %e, "the monitoring store failed");
    FacadeError::Dependency {
        dependency: Dependency::Monitoring,
        detail: tether_runtime::clip(&e.to_string()),
    }
}

fn secs_ms(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(86_400).saturating_mul(1000)
}

impl Monitor {
    /// Monitoring off: every request carries the baseline.
    pub fn disabled(config: &MonitoringConfig, baseline: i64) -> Self {
        Self {
            inner: None,
            baseline: Risk::baseline(baseline, config.medium_at, config.high_at),
        }
    }

    /// Opens (and migrates) the store and starts the task that writes the
    /// events behind the answers and prunes old buckets; it runs until
    /// `stop` says so, and writes what is left before it ends.
    pub async fn start(
        config: &MonitoringConfig,
        baseline: i64,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<(Self, Option<JoinHandle<()>>)> {
        use anyhow::Context as _;
        if !config.enabled {
            return Ok((Self::disabled(config, baseline), None));
        }
        let url = config.effective_url();
        let shown = tether_store::redact_url(&url);
        let pool = tether_store::open(
            &url,
            "facade_monitoring",
            &tether_store::PoolSettings {
                max_connections: config.max_connections,
                ..tether_store::PoolSettings::default()
            },
        )
        .await
        .with_context(|| format!("opening the monitoring store at `{shown}`"))?;
        tether_store::migrate(&pool, &MIGRATOR)
            .await
            .context("migrating the monitoring store")?;
        let rules = config.effective_rules();
        tracing::info!(store = %shown, rules = rules.len(), "risk monitoring on");
        let keep_ms = config.longest_window_ms() + 2 * BUCKET_MS;
        let shared = std::sync::Arc::new(Shared {
            pool,
            scoring: Scoring::new(config, baseline),
            rules,
            session_window_ms: secs_ms(config.session_window_secs),
            agent_window_ms: secs_ms(config.agent_window_secs),
            refresh: Duration::from_millis(config.refresh_ms),
            local: std::sync::Mutex::default(),
            wake: tokio::sync::Notify::new(),
        });
        let writer = std::sync::Arc::clone(&shared);
        let task = tokio::spawn(async move {
            let mut prune_every = tokio::time::interval(PRUNE_EVERY);
            prune_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut retry = tokio::time::interval(RETRY_EVERY);
            retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = async { drop(stop.wait_for(|s| *s).await) } => break,
                    () = writer.wake.notified() => {
                        tokio::time::sleep(LINGER).await;
                        writer.write_behind().await;
                    }
                    _ = retry.tick() => {
                        if writer.failing() {
                            writer.write_behind().await;
                        }
                    }
                    _ = prune_every.tick() => {
                        if let Err(e) = prune(&writer.pool, keep_ms).await {
                            tracing::warn!(error = %e, "pruning the monitoring store failed; tried again in a minute");
                        }
                    }
                }
            }
            writer.write_behind().await;
            writer.pool.close().await;
        });
        Ok((
            Self {
                inner: Some(shared),
                baseline: Risk::baseline(baseline, config.medium_at, config.high_at),
            },
            Some(task),
        ))
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The risk of the next decision of `agent` in session `sid`: from
    /// what this replica knows when it read the store less than
    /// `refresh_ms` ago, from a read of the store otherwise.
    pub async fn assess(&self, sid: &str, agent: &str) -> Result<Risk, FacadeError> {
        let Some(shared) = &self.inner else {
            return Ok(self.baseline.clone());
        };
        if let Some(risk) = shared.known(sid, agent)? {
            return Ok(risk);
        }
        let (started, writes) = (Instant::now(), shared.lock()?.writes);
        let now = tether_runtime::clock::unix_now_ms();
        let (session, agent_tally) = shared.counts(sid, agent, now).await?;
        let mut local = shared.lock()?;
        let mut known = Known {
            agent: agent.to_owned(),
            fresh_until: if local.writes == writes {
                started + shared.refresh
            } else {
                started
            },
            session,
            agent_tally,
        };
        local.add_unwritten(
            sid,
            agent,
            now,
            &mut known,
            (shared.session_window_ms, shared.agent_window_ms),
        );
        let risk = known.risk(&shared.scoring);
        if local.known.len() >= MAX_REMEMBERED && !local.known.contains_key(sid) {
            local.known.clear();
        }
        local.known.insert(sid.to_owned(), known);
        Ok(risk)
    }

    /// Whether [`Monitor::assess`] answers from memory (no store read).
    pub fn knows(&self, sid: &str, agent: &str) -> bool {
        self.inner.as_ref().is_some_and(|shared| {
            shared.local.lock().is_ok_and(|local| {
                local.failure.is_none() && local.known.get(sid).is_some_and(|k| k.fresh_for(agent))
            })
        })
    }

    /// The risk without behaviour: `[risk] baseline_score`.
    pub fn baseline(&self) -> &Risk {
        &self.baseline
    }

    /// The risk session `sid` was last assessed at on this replica (the
    /// baseline for one not seen): a guess to ask the policy with while
    /// [`Monitor::assess`] reads the store, kept only when the two agree.
    pub fn guess(&self, sid: &str) -> Risk {
        self.inner
            .as_ref()
            .and_then(|shared| {
                let local = shared.local.lock().ok()?;
                Some(local.known.get(sid)?.risk(&shared.scoring))
            })
            .unwrap_or_else(|| self.baseline.clone())
    }

    /// Adds `events` to the session's and the agent's counters; the rules
    /// whose signal grew and now fire. Events marked `once` that were
    /// already counted add nothing.
    ///
    /// Events no rule counts (an allowed decision: `decisions`, the
    /// resource) only feed later scores: this replica counts them at once,
    /// and they are written behind the answer with the other decisions'
    /// of the next [`LINGER`] (beyond [`MAX_PENDING`] rows waiting, before
    /// it). A write that fails is logged at ERROR and denies every
    /// decision until one succeeds. Events a rule counts are written
    /// before the answer, and this replica reads the agent's counts again
    /// at its next decision in any session.
    pub async fn record(
        &self,
        sid: &str,
        agent: &str,
        events: &Events,
    ) -> Result<Vec<Hit>, FacadeError> {
        let Some(shared) = &self.inner else {
            return Ok(Vec::new());
        };
        let now = tether_runtime::clock::unix_now_ms();
        let counted_by_a_rule = shared
            .rules
            .iter()
            .any(|rule| events.counts.contains_key(&rule.signal));
        if !counted_by_a_rule
            && events.once.is_none()
            && shared.add_behind(sid, agent, events, now)?
        {
            return Ok(Vec::new());
        }
        let added = shared.add(sid, agent, events, now).await;
        {
            // Written or not, every session of the agent reads the store
            // at its next decision on this replica; until then the events
            // counted here are part of what it guesses with.
            let (mut local, at) = (shared.lock()?, Instant::now());
            for (known_sid, known) in local.known.iter_mut().filter(|(_, k)| k.agent == agent) {
                known.fresh_until = at;
                if matches!(added, Ok(true)) {
                    if known_sid == sid {
                        known.session.add_events(events);
                    }
                    known.agent_tally.add_events(events);
                }
            }
        }
        if !added? {
            return Ok(Vec::new());
        }
        let mut hits = Vec::new();
        for rule in &shared.rules {
            if !events.counts.contains_key(&rule.signal) {
                continue;
            }
            let (scope, subject) = match rule.quarantine {
                QuarantineKind::Session => ("session", sid),
                QuarantineKind::Agent => ("agent", agent),
            };
            let count = shared
                .count(scope, subject, &rule.signal, secs_ms(rule.window_secs), now)
                .await?;
            if count >= rule.count {
                hits.push(Hit {
                    rule: rule.clone(),
                    count,
                });
            }
        }
        Ok(hits)
    }

    /// Records a quarantine unless one of the same kind and subject is in
    /// force. `Some` when this call created it (then, and only then, its
    /// alert is raised), `None` when one already was.
    pub async fn quarantine(&self, mut q: Quarantine) -> Result<Option<Quarantine>, FacadeError> {
        let Some(shared) = &self.inner else {
            return Ok(None);
        };
        let now = q.created_at_ms;
        let mut tx = shared.pool.begin().await.map_err(unavailable)?;
        // An agent quarantine that ran out is closed first, so a new one
        // can be recorded (one open row per kind and subject).
        sqlx::query(
            "UPDATE quarantines SET lifted_at = until_at, lifted_by = 'expired' \
             WHERE kind = $1 AND subject = $2 AND lifted_at IS NULL AND until_at IS NOT NULL AND until_at <= $3",
        )
        .bind(q.kind.as_str())
        .bind(q.subject.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        q.lifted_at_ms = None;
        let inserted = sqlx::query(
            "INSERT INTO quarantines (id, kind, subject, rule, reason, session_id, agent, user_sub, created_at, until_at, lifted_by, lift_reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, '', '') ON CONFLICT DO NOTHING",
        )
        .bind(q.id.as_str())
        .bind(q.kind.as_str())
        .bind(q.subject.as_str())
        .bind(q.rule.as_str())
        .bind(q.reason.as_str())
        .bind(q.session_id.as_str())
        .bind(q.agent.as_str())
        .bind(q.user_sub.as_str())
        .bind(now)
        .bind(q.until_ms)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        tx.commit().await.map_err(unavailable)?;
        Ok((inserted == 1).then_some(q))
    }

    /// The agent quarantine in force for `agent`, if any.
    pub async fn agent_quarantine(&self, agent: &str) -> Result<Option<Quarantine>, FacadeError> {
        let Some(shared) = &self.inner else {
            return Ok(None);
        };
        let now = tether_runtime::clock::unix_now_ms();
        let row: Option<QuarantineRow> = sqlx::query_as(concat!(
            "SELECT ",
            quarantine_columns!(),
            " FROM quarantines \
             WHERE kind = 'agent' AND subject = $1 AND lifted_at IS NULL AND until_at > $2"
        ))
        .bind(agent)
        .bind(now)
        .fetch_optional(&shared.pool)
        .await
        .map_err(unavailable)?;
        Ok(row.and_then(quarantine_of))
    }

    /// Quarantines, newest first: all, or those in force.
    pub async fn list(
        &self,
        active_only: bool,
        limit: u32,
    ) -> Result<Vec<Quarantine>, FacadeError> {
        let Some(shared) = &self.inner else {
            return Err(FacadeError::MonitoringDisabled);
        };
        let now = tether_runtime::clock::unix_now_ms();
        let sql = if active_only {
            concat!(
                "SELECT ",
                quarantine_columns!(),
                " FROM quarantines WHERE lifted_at IS NULL AND (until_at IS NULL OR until_at > $1) \
                 ORDER BY created_at DESC, id DESC LIMIT $2"
            )
        } else {
            concat!(
                "SELECT ",
                quarantine_columns!(),
                " FROM quarantines WHERE created_at <= $1 ORDER BY created_at DESC, id DESC LIMIT $2"
            )
        };
        // Listing everything: any row, however far another replica's clock
        // is ahead.
        let bound = if active_only { now } else { i64::MAX };
        let rows: Vec<QuarantineRow> = sqlx::query_as(sql)
            .bind(bound)
            .bind(i64::from(limit))
            .fetch_all(&shared.pool)
            .await
            .map_err(unavailable)?;
        Ok(rows.into_iter().filter_map(quarantine_of).collect())
    }

    /// Lifts quarantine `id` (an operator's word). `(quarantine, lifted
    /// now)`: a quarantine lifted before (or run out) is returned as it is.
    pub async fn lift(
        &self,
        id: &str,
        by: &str,
        reason: &str,
    ) -> Result<(Quarantine, bool), FacadeError> {
        let Some(shared) = &self.inner else {
            return Err(FacadeError::MonitoringDisabled);
        };
        let now = tether_runtime::clock::unix_now_ms();
        let changed = sqlx::query(
            "UPDATE quarantines SET lifted_at = $2, lifted_by = $3, lift_reason = $4 \
             WHERE id = $1 AND lifted_at IS NULL AND (until_at IS NULL OR until_at > $2)",
        )
        .bind(id)
        .bind(now)
        .bind(by)
        .bind(reason)
        .execute(&shared.pool)
        .await
        .map_err(unavailable)?
        .rows_affected();
        let row: Option<QuarantineRow> = sqlx::query_as(concat!(
            "SELECT ",
            quarantine_columns!(),
            " FROM quarantines WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&shared.pool)
        .await
        .map_err(unavailable)?;
        let q = row
            .and_then(quarantine_of)
            .ok_or_else(|| FacadeError::QuarantineNotFound(tether_runtime::clip(id)))?;
        Ok((q, changed == 1))
    }
}

impl Shared {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Local>, FacadeError> {
        self.local
            .lock()
            .map_err(|_| unavailable("the monitoring's memory was poisoned by a panic"))
    }

    /// The risk from memory when this replica read `sid`'s counts less
    /// than `refresh` ago for the same agent; an error while a write
    /// behind the answer is failing.
    fn known(&self, sid: &str, agent: &str) -> Result<Option<Risk>, FacadeError> {
        let local = self.lock()?;
        if let Some(failure) = &local.failure {
            return Err(unavailable(failure));
        }
        Ok(local
            .known
            .get(sid)
            .filter(|known| known.fresh_for(agent))
            .map(|known| known.risk(&self.scoring)))
    }

    fn failing(&self) -> bool {
        self.local.lock().is_ok_and(|local| local.failure.is_some())
    }

    /// Counts `events` in memory and queues them to be written behind the
    /// answer; `false` (nothing done) when too many rows wait already.
    fn add_behind(
        &self,
        sid: &str,
        agent: &str,
        events: &Events,
        now: i64,
    ) -> Result<bool, FacadeError> {
        let mut local = self.lock()?;
        if local.pending.len() >= MAX_PENDING {
            return Ok(false);
        }
        let bucket = now.div_euclid(BUCKET_MS);
        for (scope, subject, signal, n) in rows_of(sid, agent, events) {
            *local
                .pending
                .entry((scope, subject.to_owned(), signal, bucket))
                .or_insert(0) += n;
        }
        if let Some(known) = local.known.get_mut(sid).filter(|k| k.agent == agent) {
            known.session.add_events(events);
            known.agent_tally.add_events(events);
        }
        drop(local);
        self.wake.notify_one();
        Ok(true)
    }

    /// Writes the events waiting behind their answers, in one transaction;
    /// on failure they wait for the next try and every decision is denied
    /// meanwhile.
    async fn write_behind(&self) {
        let rows: Vec<(Key, i64)> = {
            let Ok(mut local) = self.local.lock() else {
                return;
            };
            if local.pending.is_empty() {
                local.failure = None;
                return;
            }
            let pending = std::mem::take(&mut local.pending);
            let mut rows: Vec<(Key, i64)> = pending.iter().map(|(k, n)| (k.clone(), *n)).collect();
            local.writing = pending;
            // One order for every replica's upserts: no deadlock between
            // them on PostgreSQL.
            rows.sort();
            rows
        };
        let written = self.upsert_all(&rows).await;
        let Ok(mut local) = self.local.lock() else {
            return;
        };
        let writing = std::mem::take(&mut local.writing);
        match written {
            Ok(()) => {
                local.failure = None;
                local.writes += 1;
            }
            Err(e) => {
                tracing::error!(error = %e, rows = rows.len(), "decisions' events could not be counted; every decision is denied until they are");
                for (key, n) in writing {
                    *local.pending.entry(key).or_insert(0) += n;
                }
                local.failure = Some(tether_runtime::clip(&e.to_string()));
            }
        }
    }

    async fn upsert_all(&self, rows: &[(Key, i64)]) -> Result<(), sqlx::Error> {
        let rows: Vec<Row<'_>> = rows
            .iter()
            .map(|((scope, subject, signal, bucket), n)| {
                (*scope, subject.as_str(), signal.as_str(), *bucket, *n)
            })
            .collect();
        if rows.len() <= ROWS_PER_STATEMENT {
            // One statement commits by itself: one round trip.
            return upsert(&rows).execute(&self.pool).await.map(drop);
        }
        let mut tx = self.pool.begin().await?;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            upsert(chunk).execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// The session's and the agent's counts: one query (the counters of
    /// both windows, and the distinct resources of the last minute).
    async fn counts(
        &self,
        sid: &str,
        agent: &str,
        now: i64,
    ) -> Result<(Tally, Tally), FacadeError> {
        let session_from = first_bucket(now, self.session_window_ms);
        let agent_from = first_bucket(now, self.agent_window_ms);
        let minute_from = first_bucket(now, RATE_WINDOW_MS);
        // The counters of both windows; the number of distinct resources of
        // the last minute (signal `@`); and up to LISTED_RESOURCES of them
        // by name (`@<resource>`).
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT scope, signal, CAST(SUM(count) AS BIGINT), \
                    CAST(SUM(CASE WHEN bucket >= $5 THEN count ELSE 0 END) AS BIGINT) \
             FROM monitoring_counts \
             WHERE ((scope = 'session' AND subject = $1 AND bucket >= $3) \
                 OR (scope = 'agent' AND subject = $2 AND bucket >= $4)) \
               AND signal NOT LIKE '@%' \
             GROUP BY scope, signal \
             UNION ALL \
             SELECT scope, '@', COUNT(DISTINCT signal), 0 \
             FROM monitoring_counts \
             WHERE ((scope = 'session' AND subject = $1) OR (scope = 'agent' AND subject = $2)) \
               AND bucket >= $5 AND signal LIKE '@%' \
             GROUP BY scope \
             UNION ALL \
             SELECT scope, signal, 0, 0 FROM ( \
               SELECT DISTINCT scope, signal FROM monitoring_counts \
               WHERE ((scope = 'session' AND subject = $1) OR (scope = 'agent' AND subject = $2)) \
                 AND bucket >= $5 AND signal LIKE '@%' \
               LIMIT $6) AS listed",
        )
        .bind(sid)
        .bind(agent)
        .bind(session_from)
        .bind(agent_from)
        .bind(minute_from)
        .bind(LISTED_RESOURCES)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let (mut session, mut agent) = (Tally::default(), Tally::default());
        for (scope, signal, total, last_minute) in rows {
            let tally = if scope == "session" {
                &mut session
            } else {
                &mut agent
            };
            if signal == RESOURCES {
                tally.counts.distinct_resources_last_min = total;
            } else if let Some(resource) = signal.strip_prefix('@') {
                tally.resources.insert(resource.to_owned());
            } else {
                if signal == CREDENTIAL_REQUESTS {
                    tally.counts.credential_requests_last_min = last_minute;
                }
                tally.counts.window.insert(signal, total);
            }
        }
        Ok((session, agent))
    }

    /// Adds the events to both scopes in one statement (in one transaction
    /// with their "counted once" mark, when they have one); `false` when
    /// they were `once` and counted before.
    async fn add(
        &self,
        sid: &str,
        agent: &str,
        events: &Events,
        now: i64,
    ) -> Result<bool, FacadeError> {
        let bucket = now.div_euclid(BUCKET_MS);
        let rows = rows_of(sid, agent, events);
        if rows.is_empty() && events.once.is_none() {
            return Ok(true);
        }
        let rows: Vec<Row<'_>> = rows
            .iter()
            .map(|(scope, subject, signal, n)| (*scope, *subject, signal.as_str(), bucket, *n))
            .collect();
        let upsert = upsert(&rows);
        let Some(key) = &events.once else {
            upsert.execute(&self.pool).await.map_err(unavailable)?;
            return Ok(true);
        };
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let fresh = sqlx::query(
            "INSERT INTO monitoring_once (key, at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(key.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        if fresh == 0 {
            return Ok(false);
        }
        if !rows.is_empty() {
            upsert.execute(&mut *tx).await.map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    async fn count(
        &self,
        scope: &str,
        subject: &str,
        signal: &str,
        window_ms: i64,
        now: i64,
    ) -> Result<i64, FacadeError> {
        let (total,): (Option<i64>,) = sqlx::query_as(
            "SELECT CAST(SUM(count) AS BIGINT) FROM monitoring_counts \
             WHERE scope = $1 AND subject = $2 AND signal = $3 AND bucket >= $4",
        )
        .bind(scope)
        .bind(subject)
        .bind(signal)
        .bind(first_bucket(now, window_ms))
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(total.unwrap_or(0))
    }
}

/// One counter row to add to: scope, subject, signal, bucket, count.
type Row<'a> = (&'static str, &'a str, &'a str, i64, i64);

/// The counters `events` add to, for the session and for the agent. A
/// resource is a counter named `@<resource>` ('@' is never in a signal
/// name): distinct resources are distinct such names.
fn rows_of<'a>(
    sid: &'a str,
    agent: &'a str,
    events: &Events,
) -> Vec<(&'static str, &'a str, String, i64)> {
    let resource = events.resource.as_ref().map(|r| (format!("@{r}"), 1));
    [("session", sid), ("agent", agent)]
        .into_iter()
        .flat_map(|(scope, subject)| {
            events
                .counts
                .iter()
                .map(|(signal, n)| (signal.clone(), *n))
                .chain(resource.clone())
                .map(move |(signal, n)| (scope, subject, signal, n))
        })
        .collect()
}

/// One statement adding `rows` (their keys distinct) to the counters.
fn upsert<'q>(rows: &[Row<'q>]) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let mut sql = String::from(
        "INSERT INTO monitoring_counts (scope, subject, signal, bucket, count) VALUES ",
    );
    for i in 0..rows.len() {
        let p = i * 5;
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${}, ${})",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5
        ));
    }
    sql.push_str(
        " ON CONFLICT (scope, subject, signal, bucket) \
         DO UPDATE SET count = monitoring_counts.count + excluded.count",
    );
    // INVARIANT: only placeholders are generated; every value is bound.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (scope, subject, signal, bucket, n) in rows {
        query = query
            .bind(*scope)
            .bind(*subject)
            .bind(*signal)
            .bind(*bucket)
            .bind(*n);
    }
    query
}

async fn prune(pool: &AnyPool, keep_ms: i64) -> Result<(), sqlx::Error> {
    let now = tether_runtime::clock::unix_now_ms();
    let before = first_bucket(now, keep_ms);
    sqlx::query("DELETE FROM monitoring_counts WHERE bucket < $1")
        .bind(before)
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM monitoring_once WHERE at < $1")
        .bind(now - ONCE_RETENTION_MS)
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
#[path = "monitoring_tests.rs"]
mod tests;
