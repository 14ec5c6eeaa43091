//! Alerts when the monitoring quarantines a session or an agent: a
//! structured log line, an OpenTelemetry event on the request's span, a
//! metric, and an optional webhook.
//!
//! The webhook never holds up a request: alerts go into a bounded queue
//! that one background task drains, POSTing each as JSON with
//! `x-tether-signature: sha256=<hex HMAC-SHA256 of the body>` (the key read
//! from `secret_file`, never logged), retried with exponential backoff. A
//! full queue drops the alert, counts it (`tether.alerts.dropped`) and logs
//! it at ERROR; an alert that still fails after every attempt is counted
//! (`tether.alerts.failed`) and logged the same way. Nothing in an alert
//! is a secret: ids, names, the rule and the score.

use std::path::PathBuf;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use serde::Deserialize;
use tether_runtime::ConfigError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::monitoring::Quarantine;

/// `[monitoring.webhook]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where alerts are POSTed (`https://…`; `http://` only to a loopback
    /// address).
    pub url: String,
    /// The HMAC-SHA256 key, the file's bytes with surrounding whitespace
    /// trimmed (at least 32 bytes). Never logged.
    pub secret_file: PathBuf,
    /// Alerts waiting to be sent at most; more are dropped (and counted).
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// Attempts per alert, the first included.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Deadline of one attempt.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret_file", &self.secret_file)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

fn default_queue() -> usize {
    256
}

fn default_attempts() -> u32 {
    6
}

fn default_timeout_ms() -> u64 {
    5_000
}

/// The first retry's delay; each next one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The smallest key accepted.
const MIN_SECRET_BYTES: usize = 32;

impl WebhookConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let url = match url::Url::parse(&self.url) {
            Ok(url) => url,
            Err(_) => {
                return invalid(format!(
                    "monitoring.webhook.url `{}` is not a URL",
                    tether_runtime::clip(&self.url)
                ));
            }
        };
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        if !(url.scheme() == "https" || (url.scheme() == "http" && loopback))
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return invalid(
                "monitoring.webhook.url must be https:// (http:// only to a loopback address), without credentials".into(),
            );
        }
        if !(1..=100_000).contains(&self.queue_capacity) {
            return invalid(
                "monitoring.webhook.queue_capacity must be between 1 and 100000".into(),
            );
        }
        if !(1..=20).contains(&self.max_attempts) {
            return invalid("monitoring.webhook.max_attempts must be between 1 and 20".into());
        }
        if !(100..=60_000).contains(&self.timeout_ms) {
            return invalid("monitoring.webhook.timeout_ms must be between 100 and 60000".into());
        }
        Ok(())
    }
}

/// Signs `body` with `key`: `sha256=<hex>`, the value of
/// `x-tether-signature`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    format!(
        "sha256={}",
        hex::encode(aws_lc_rs::hmac::sign(&key, body).as_ref())
    )
}

/// The alert body (JSON).
pub fn body(q: &Quarantine, score: Option<i64>) -> serde_json::Value {
    serde_json::json!({
        "type": "tether.quarantine",
        "quarantine_id": q.id,
        "kind": q.kind.as_str(),
        "subject": q.subject,
        "rule": q.rule,
        "reason": q.reason,
        "session_id": q.session_id,
        "agent": q.agent,
        "user": q.user_sub,
        "created_at_ms": q.created_at_ms,
        "until_ms": q.until_ms,
        "risk_score": score,
    })
}

/// The alert channels. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Alerts {
    quarantines: Counter<u64>,
    dropped: Counter<u64>,
    queue: Option<mpsc::Sender<Vec<u8>>>,
}

struct Sender {
    client: reqwest::Client,
    url: String,
    key: Vec<u8>,
    max_attempts: u32,
    failed: Counter<u64>,
}

impl Alerts {
    /// The metrics, and the webhook's sender task when one is configured
    /// (it runs until `stop`, then sends what is queued once more).
    pub fn start(
        webhook: Option<&WebhookConfig>,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<(Self, Option<JoinHandle<()>>)> {
        use anyhow::Context as _;
        let meter = tether_runtime::metrics::meter();
        let quarantines = meter
            .u64_counter("tether.quarantines")
            .with_description("sessions and agents quarantined by the facade's monitoring")
            .build();
        let dropped = meter
            .u64_counter("tether.alerts.dropped")
            .with_description("quarantine alerts not sent: the webhook queue was full")
            .build();
        let failed = meter
            .u64_counter("tether.alerts.failed")
            .with_description("quarantine alerts the webhook did not accept after every attempt")
            .build();
        let Some(webhook) = webhook else {
            return Ok((
                Self {
                    quarantines,
                    dropped,
                    queue: None,
                },
                None,
            ));
        };
        let key = std::fs::read(&webhook.secret_file).with_context(|| {
            format!(
                "reading the webhook secret `{}`",
                webhook.secret_file.display()
            )
        })?;
        let key = key.trim_ascii().to_vec();
        anyhow::ensure!(
            key.len() >= MIN_SECRET_BYTES,
            "the webhook secret `{}` must be at least {MIN_SECRET_BYTES} bytes",
            webhook.secret_file.display()
        );
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(webhook.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the webhook client")?;
        let (queue, jobs) = mpsc::channel(webhook.queue_capacity);
        let sender = Sender {
            client,
            url: webhook.url.clone(),
            key,
            max_attempts: webhook.max_attempts,
            failed,
        };
        tracing::info!(url = %webhook.url, "quarantine alerts also go to a webhook");
        let task = tokio::spawn(sender.run(jobs, stop));
        Ok((
            Self {
                quarantines,
                dropped,
                queue: Some(queue),
            },
            Some(task),
        ))
    }

    /// Raises the alert of a new quarantine: log line, span event, metric,
    /// webhook (queued; never waits).
    pub fn quarantined(&self, q: &Quarantine, score: Option<i64>) {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        tracing::warn!(
            alert = "quarantine",
            quarantine_id = %q.id,
            kind = q.kind.as_str(),
            subject = %q.subject,
            rule = %q.rule,
            session_id = %q.session_id,
            agent = %q.agent,
            user = %q.user_sub,
            until_ms = q.until_ms,
            risk_score = score,
            "quarantined by the monitoring rule"
        );
        tracing::Span::current().add_event(
            "tether.quarantine",
            vec![
                KeyValue::new("quarantine.id", q.id.clone()),
                KeyValue::new("quarantine.kind", q.kind.as_str()),
                KeyValue::new("quarantine.subject", q.subject.clone()),
                KeyValue::new("quarantine.rule", q.rule.clone()),
            ],
        );
        self.quarantines.add(
            1,
            &[
                KeyValue::new("kind", q.kind.as_str()),
                KeyValue::new("rule", q.rule.clone()),
            ],
        );
        let Some(queue) = &self.queue else {
            return;
        };
        let body = body(q, score).to_string().into_bytes();
        if let Err(e) = queue.try_send(body) {
            self.dropped
                .add(1, &[KeyValue::new("kind", q.kind.as_str())]);
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "the webhook queue is full",
                mpsc::error::TrySendError::Closed(_) => "the webhook sender has stopped",
            };
            tracing::error!(quarantine_id = %q.id, why, "quarantine alert dropped: not sent to the webhook");
        }
    }
}

impl Sender {
    async fn run(self, mut jobs: mpsc::Receiver<Vec<u8>>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                biased;
                () = async { drop(stop.wait_for(|s| *s).await) } => break,
                job = jobs.recv() => match job {
                    Some(body) => self.deliver(&body, &mut stop).await,
                    None => break,
                },
            }
        }
        // What was queued before the stop: one attempt each.
        while let Ok(body) = jobs.try_recv() {
            if let Err(e) = self.attempt(&body).await {
                self.give_up(&body, &e);
            }
        }
    }

    async fn deliver(&self, body: &[u8], stop: &mut watch::Receiver<bool>) {
        let mut delay = FIRST_BACKOFF;
        for attempt in 1..=self.max_attempts {
            match self.attempt(body).await {
                Ok(()) => return,
                Err(e) if attempt == self.max_attempts || *stop.borrow() => {
                    self.give_up(body, &e);
                    return;
                }
                Err(e) => {
                    tracing::warn!(attempt, error = %e, retry_in_ms = delay.as_millis(), "quarantine alert not accepted by the webhook; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = async { drop(stop.wait_for(|s| *s).await) } => {}
                    }
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn attempt(&self, body: &[u8]) -> Result<(), String> {
        let response = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-tether-signature", sign(&self.key, body))
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| tether_runtime::clip(&e.without_url().to_string()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", response.status().as_u16()))
        }
    }

    fn give_up(&self, body: &[u8], error: &str) {
        self.failed.add(1, &[]);
        let id = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["quarantine_id"].as_str().map(str::to_owned))
            .unwrap_or_default();
        tracing::error!(quarantine_id = %id, error, "quarantine alert not delivered to the webhook after every attempt");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn webhook(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            secret_file: "/nonexistent".into(),
            queue_capacity: 8,
            max_attempts: 3,
            timeout_ms: 1000,
        }
    }

    #[test]
    fn webhook_urls_are_https_or_loopback() {
        for ok in [
            "https://alerts.example.com/x",
            "http://127.0.0.1:9000/hook",
            "http://[::1]:1/",
        ] {
            webhook(ok).validate().unwrap();
        }
        for bad in [
            "http://alerts.example.com/x",
            "ftp://127.0.0.1/",
            "https://user:pw@alerts.example.com/",
            "not a url",
        ] {
            assert!(webhook(bad).validate().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_never_blocks() {
        let (queue, _jobs) = mpsc::channel(1);
        let meter = opentelemetry::global::meter("tether-test");
        let alerts = Alerts {
            quarantines: meter.u64_counter("q").build(),
            dropped: meter.u64_counter("d").build(),
            queue: Some(queue.clone()),
        };
        let q = Quarantine {
            id: "q_1".into(),
            kind: crate::monitoring::QuarantineKind::Session,
            subject: "s_1".into(),
            rule: "r".into(),
            reason: String::new(),
            session_id: "s_1".into(),
            agent: "a".into(),
            user_sub: "u".into(),
            created_at_ms: 1,
            until_ms: None,
            lifted_at_ms: None,
            lifted_by: String::new(),
            lift_reason: String::new(),
        };
        alerts.quarantined(&q, Some(50));
        alerts.quarantined(&q, Some(50));
        // The first is queued, the second dropped (the call returned).
        assert_eq!(queue.capacity(), 0);
    }
}
