use super::*;

fn counts(pairs: &[(&str, i64)]) -> Counts {
    Counts {
        window: pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        ..Counts::default()
    }
}

fn scoring() -> Scoring {
    Scoring::new(&MonitoringConfig::default(), 0)
}

fn signal(risk: &Risk, name: &str) -> i64 {
    risk.signals
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| *v)
        .unwrap()
}

#[test]
fn nothing_done_is_low_risk_with_every_signal_zero() {
    let risk = scoring().risk(&Counts::default(), &Counts::default());
    assert_eq!((risk.score, risk.level), (0, "low"));
    assert_eq!(risk.signals.len(), SIGNALS.len());
    assert!(risk.signals.iter().all(|(_, v)| *v == 0));
    assert!(risk.nonzero_signals().is_empty());
    let context = risk.to_context();
    assert_eq!(context["level"], "low");
    assert_eq!(context["signals"]["out_of_intent"], 0);
}

#[test]
fn the_score_is_the_weighted_sum_and_explains_itself() {
    // 1 denied approval (30) + 1 out-of-intent attempt (25) + 1 denial (10).
    let session = counts(&[
        ("decisions", 3),
        ("denials", 1),
        ("out_of_intent", 1),
        ("approvals_denied", 1),
    ]);
    let risk = scoring().risk(&session, &Counts::default());
    assert_eq!((risk.score, risk.level), (65, "medium"));
    assert_eq!(
        risk.nonzero_signals(),
        BTreeMap::from([
            ("approvals_denied".to_owned(), 1),
            ("denials".to_owned(), 1),
            ("out_of_intent".to_owned(), 1),
        ])
    );
    // One more out-of-intent attempt: high, and capped at 100 beyond.
    let session = counts(&[
        ("denials", 2),
        ("out_of_intent", 2),
        ("approvals_denied", 1),
    ]);
    assert_eq!(scoring().risk(&session, &Counts::default()).level, "high");
    let session = counts(&[("denials", 50)]);
    assert_eq!(scoring().risk(&session, &Counts::default()).score, 100);
}

#[test]
fn the_worse_of_session_and_agent_counts() {
    let session = counts(&[("denials", 1)]);
    let agent = counts(&[("denials", 3), ("token_failures", 1)]);
    let risk = scoring().risk(&session, &agent);
    assert_eq!(signal(&risk, "denials"), 3);
    assert_eq!(signal(&risk, "token_failures"), 1);
    assert_eq!(risk.score, 40);
}

#[test]
fn rates_score_only_above_their_allowance() {
    let mut busy = counts(&[("decisions", 20), ("denials", 12)]);
    busy.credential_requests_last_min = 12;
    busy.distinct_resources_last_min = 10;
    let risk = scoring().risk(&busy, &Counts::default());
    assert_eq!(signal(&risk, "denial_rate_pct"), 60);
    assert_eq!(signal(&risk, "credential_requests_per_min"), 12);
    // denials 12×10 caps it anyway; check the parts with denials weighed 0.
    let config = MonitoringConfig {
        weights: BTreeMap::from([("denials".to_owned(), 0)]),
        ..MonitoringConfig::default()
    };
    let risk = Scoring::new(&config, 0).risk(&busy, &Counts::default());
    // (60 - 50) × 1 + (12 - 10) × 2 + (10 - 10) × 3
    assert_eq!(risk.score, 14);
    // Too few decisions for a rate.
    let few = counts(&[("decisions", 2), ("denials", 2)]);
    assert_eq!(
        signal(&scoring().risk(&few, &Counts::default()), "denial_rate_pct"),
        0
    );
}

#[test]
fn a_packs_own_signals_score_with_their_weight_and_the_baseline_adds() {
    let config = MonitoringConfig {
        weights: BTreeMap::from([("bulk_export".to_owned(), 15)]),
        ..MonitoringConfig::default()
    };
    let session = counts(&[("bulk_export", 2)]);
    let risk = Scoring::new(&config, 5).risk(&session, &Counts::default());
    assert_eq!(risk.score, 35);
    assert!(!risk.signals.iter().any(|(k, _)| *k == "bulk_export"));
}

#[test]
fn windows_cover_whole_buckets_never_less_than_asked() {
    // At 12:00:25 a 60 s window starts in the bucket of 11:59:25.
    let now = 1_800_000_025_000;
    let first = first_bucket(now, 60_000);
    assert_eq!(first, (now - 60_000) / BUCKET_MS);
    assert!(first * BUCKET_MS <= now - 60_000);
    assert!(first * BUCKET_MS > now - 60_000 - BUCKET_MS);
    assert_eq!(first_bucket(BUCKET_MS * 7, 0), 7);
}

#[test]
fn decision_events_count_what_happened() {
    let deny = Events::decision(
        "deny",
        &["out_of_intent".into(), "Bad Name".into()],
        "Employee::\"1043\"".into(),
        true,
        false,
    );
    assert_eq!(
        deny.counts,
        BTreeMap::from([
            ("credential_requests".to_owned(), 1),
            ("decisions".to_owned(), 1),
            ("denials".to_owned(), 1),
            ("out_of_intent".to_owned(), 1),
        ])
    );
    let asked = Events::decision("approval_required", &[], "E::\"1\"".into(), false, true);
    assert_eq!(asked.counts.get("approvals_requested"), Some(&1));
    assert_eq!(asked.counts.get("denials"), None);
}

fn parse(toml_text: &str) -> Result<MonitoringConfig, String> {
    let config: MonitoringConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

#[test]
fn configuration_is_checked() {
    let config = parse("enabled = true").unwrap();
    assert_eq!(config.effective_rules(), default_rules());
    assert_eq!(config.effective_weights()["out_of_intent"], 25);
    parse(
        "[[rules]]\nname = \"agent-burst\"\nsignal = \"denials\"\ncount = 20\nwindow_secs = 600\nquarantine = \"agent\"\nduration_secs = 3600",
    )
    .unwrap();
    for (text, what) in [
        ("medium_at = 70\nhigh_at = 40", "medium_at"),
        ("session_window_secs = 1", "session_window_secs"),
        ("refresh_ms = 60000", "refresh_ms"),
        ("weights = { \"Bad Name\" = 1 }", "weights"),
        ("weights = { denials = 1000 }", "weights.denials"),
        ("url = \"mysql://x\"", "monitoring.url"),
        (
            "[[rules]]\nname = \"a\"\nsignal = \"denials\"\ncount = 1\nwindow_secs = 60\nquarantine = \"agent\"",
            "duration_secs",
        ),
        (
            "[[rules]]\nname = \"a\"\nsignal = \"denials\"\ncount = 1\nwindow_secs = 60\nquarantine = \"session\"\nduration_secs = 5",
            "duration_secs",
        ),
        (
            "[[rules]]\nname = \"a\"\nsignal = \"denial_rate_pct\"\ncount = 1\nwindow_secs = 60\nquarantine = \"session\"",
            "rate",
        ),
        (
            "[[rules]]\nname = \"a\"\nsignal = \"denials\"\ncount = 0\nwindow_secs = 60\nquarantine = \"session\"",
            "count",
        ),
        (
            "[[rules]]\nname = \"a\"\nsignal = \"denials\"\ncount = 1\nwindow_secs = 60\nquarantine = \"session\"\n[[rules]]\nname = \"a\"\nsignal = \"denials\"\ncount = 2\nwindow_secs = 60\nquarantine = \"session\"",
            "unique name",
        ),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.contains(what), "{text}: {e}");
    }
}

async fn monitor(dir: &std::path::Path, rules: Vec<Rule>) -> (Monitor, watch::Sender<bool>) {
    monitor_with(dir, rules, MonitoringConfig::default().refresh_ms).await
}

/// A monitor on `dir`'s SQLite store that re-reads it after `refresh_ms`
/// (two of them on one directory are two replicas).
async fn monitor_with(
    dir: &std::path::Path,
    rules: Vec<Rule>,
    refresh_ms: u64,
) -> (Monitor, watch::Sender<bool>) {
    let config = MonitoringConfig {
        enabled: true,
        data_dir: dir.to_owned(),
        rules: Some(rules),
        refresh_ms,
        ..MonitoringConfig::default()
    };
    let (stop, stopped) = watch::channel(false);
    let (monitor, _task) = Monitor::start(&config, 0, stopped).await.unwrap();
    (monitor, stop)
}

fn rule(name: &str, signal: &str, count: i64, kind: QuarantineKind) -> Rule {
    Rule {
        name: name.into(),
        signal: signal.into(),
        count,
        window_secs: 60,
        quarantine: kind,
        duration_secs: (kind == QuarantineKind::Agent).then_some(600),
    }
}

fn deny_out_of_intent(resource: &str) -> Events {
    Events::decision(
        "deny",
        &["out_of_intent".into()],
        resource.into(),
        true,
        false,
    )
}

#[tokio::test]
async fn counts_persist_and_rules_fire_on_the_nth_event() {
    let dir = tempfile::tempdir().unwrap();
    let (monitor, _stop) = monitor(
        dir.path(),
        vec![rule("ooi", "out_of_intent", 2, QuarantineKind::Session)],
    )
    .await;
    let first = monitor
        .record("s_1", "agent-a", &deny_out_of_intent("E::\"1\""))
        .await
        .unwrap();
    assert!(first.is_empty());
    let risk = monitor.assess("s_1", "agent-a").await.unwrap();
    assert_eq!((risk.score, signal(&risk, "out_of_intent")), (35, 1));
    assert_eq!(signal(&risk, "distinct_resources_per_min"), 1);
    // Another session of the same agent sees the agent's count.
    let other = monitor.assess("s_2", "agent-a").await.unwrap();
    assert_eq!(signal(&other, "out_of_intent"), 1);
    // A different agent sees nothing.
    let clean = monitor.assess("s_3", "agent-b").await.unwrap();
    assert_eq!(clean.score, 0);
    let second = monitor
        .record("s_1", "agent-a", &deny_out_of_intent("E::\"2\""))
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!((second[0].rule.name.as_str(), second[0].count), ("ooi", 2));
    // A rule counts only its own scope: session s_2 has none of its own.
    let third = monitor
        .record(
            "s_2",
            "agent-a",
            &Events::decision("allow", &[], "E::\"3\"".into(), false, false),
        )
        .await
        .unwrap();
    assert!(third.is_empty());
}

#[tokio::test]
async fn a_ticket_outcome_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let (monitor, _stop) = monitor(
        dir.path(),
        vec![rule(
            "denied",
            "approvals_denied",
            2,
            QuarantineKind::Session,
        )],
    )
    .await;
    let mut denied = Events {
        once: Some("ticket:t_1:approvals_denied".into()),
        ..Events::default()
    };
    denied.add("approvals_denied", 1);
    for _ in 0..3 {
        assert!(
            monitor
                .record("s_1", "a", &denied)
                .await
                .unwrap()
                .is_empty()
        );
    }
    let risk = monitor.assess("s_1", "a").await.unwrap();
    assert_eq!(signal(&risk, "approvals_denied"), 1);
}

fn quarantine(kind: QuarantineKind, subject: &str, until_ms: Option<i64>) -> Quarantine {
    Quarantine {
        id: format!("q_{}", uuid::Uuid::new_v4().simple()),
        kind,
        subject: subject.into(),
        rule: "r".into(),
        reason: "test".into(),
        session_id: "s_1".into(),
        agent: "agent-a".into(),
        user_sub: "alice".into(),
        created_at_ms: tether_runtime::clock::unix_now_ms(),
        until_ms,
        lifted_at_ms: None,
        lifted_by: String::new(),
        lift_reason: String::new(),
    }
}

#[tokio::test]
async fn one_open_quarantine_per_subject_and_lifting_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let (monitor, _stop) = monitor(dir.path(), default_rules()).await;
    let now = tether_runtime::clock::unix_now_ms();
    let first = monitor
        .quarantine(quarantine(
            QuarantineKind::Agent,
            "agent-a",
            Some(now + 60_000),
        ))
        .await
        .unwrap()
        .expect("the first is recorded");
    // A second, as another replica would try: not recorded, no alert.
    assert!(
        monitor
            .quarantine(quarantine(
                QuarantineKind::Agent,
                "agent-a",
                Some(now + 60_000)
            ))
            .await
            .unwrap()
            .is_none()
    );
    let held = monitor.agent_quarantine("agent-a").await.unwrap().unwrap();
    assert_eq!(held.id, first.id);
    assert!(monitor.agent_quarantine("agent-b").await.unwrap().is_none());
    assert_eq!(monitor.list(true, 10).await.unwrap().len(), 1);

    let (lifted, now_lifted) = monitor
        .lift(&first.id, "spiffe://t/tether/admin", "false alarm")
        .await
        .unwrap();
    assert!(now_lifted);
    assert_eq!(lifted.lifted_by, "spiffe://t/tether/admin");
    assert!(!lifted.active(tether_runtime::clock::unix_now_ms()));
    assert!(monitor.agent_quarantine("agent-a").await.unwrap().is_none());
    // Lifting again changes nothing; an unknown id is NOT_FOUND.
    let (_, again) = monitor.lift(&first.id, "x", "y").await.unwrap();
    assert!(!again);
    assert!(matches!(
        monitor.lift("q_nope", "x", "y").await,
        Err(FacadeError::QuarantineNotFound(_))
    ));
    // A new quarantine can be imposed after the lift; one that ran out is
    // closed by the next.
    assert!(
        monitor
            .quarantine(quarantine(QuarantineKind::Agent, "agent-a", Some(now - 1)))
            .await
            .unwrap()
            .is_some()
    );
    assert!(monitor.agent_quarantine("agent-a").await.unwrap().is_none());
    assert!(
        monitor
            .quarantine(quarantine(
                QuarantineKind::Agent,
                "agent-a",
                Some(now + 60_000)
            ))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(monitor.list(false, 10).await.unwrap().len(), 3);
}

#[tokio::test]
async fn an_unreachable_store_is_a_dependency_failure_never_a_zero_score() {
    let dir = tempfile::tempdir().unwrap();
    let (monitor, _stop) = monitor(dir.path(), default_rules()).await;
    if let Some(shared) = &monitor.inner {
        shared.pool.close().await;
    }
    for result in [
        monitor.assess("s_1", "a").await.map(|_| ()),
        monitor
            .record("s_1", "a", &deny_out_of_intent("E::\"1\""))
            .await
            .map(|_| ()),
        monitor.agent_quarantine("a").await.map(|_| ()),
    ] {
        assert!(
            matches!(
                result,
                Err(FacadeError::Dependency {
                    dependency: Dependency::Monitoring,
                    ..
                })
            ),
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn disabled_monitoring_gives_the_baseline() {
    let config = MonitoringConfig::default();
    let monitor = Monitor::disabled(&config, 45);
    let risk = monitor.assess("s", "a").await.unwrap();
    assert_eq!((risk.score, risk.level), (45, "medium"));
    assert!(
        monitor
            .record("s", "a", &deny_out_of_intent("E::\"1\""))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        monitor.list(false, 1).await,
        Err(FacadeError::MonitoringDisabled)
    ));
}

#[tokio::test]
async fn events_no_rule_counts_count_here_at_once_and_reach_the_store_behind_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let rules = vec![rule("ooi", "out_of_intent", 2, QuarantineKind::Session)];
    let (here, _stop) = monitor(dir.path(), rules.clone()).await;
    let (other_replica, _stop_other) = monitor_with(dir.path(), rules, 0).await;
    assert_eq!(here.assess("s_1", "a").await.unwrap().score, 0);
    let allow = Events::decision("allow", &[], "E::\"1\"".into(), true, false);
    assert!(here.record("s_1", "a", &allow).await.unwrap().is_empty());
    assert!(here.record("s_1", "a", &allow).await.unwrap().is_empty());
    let risk = here.assess("s_1", "a").await.unwrap();
    assert_eq!(signal(&risk, "credential_requests_per_min"), 2);
    assert_eq!(signal(&risk, "distinct_resources_per_min"), 1);
    let mut seen = 0;
    for _ in 0..200 {
        let risk = other_replica.assess("s_1", "a").await.unwrap();
        seen = signal(&risk, "credential_requests_per_min");
        if seen == 2 {
            assert_eq!(signal(&risk, "distinct_resources_per_min"), 1);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, 2, "the allowed decisions never reached the store");
}

#[tokio::test]
async fn another_replicas_events_count_after_refresh_or_at_once_after_a_rule_counted_event() {
    let dir = tempfile::tempdir().unwrap();
    let rules = vec![rule("ooi", "out_of_intent", 5, QuarantineKind::Session)];
    // Here: decisions on what was read for a minute, unless told otherwise.
    let (here, _stop) = monitor_with(dir.path(), rules.clone(), 60_000).await;
    let (other_replica, _stop_other) = monitor_with(dir.path(), rules.clone(), 0).await;
    assert_eq!(here.assess("s_1", "a").await.unwrap().score, 0);
    other_replica
        .record("s_1", "a", &deny_out_of_intent("E::\"1\""))
        .await
        .unwrap();
    // Not read again yet: the other replica's event is not seen here...
    assert_eq!(
        signal(&here.assess("s_1", "a").await.unwrap(), "out_of_intent"),
        0
    );
    // ...until this replica counts an event a rule counts for the agent (in
    // any of its sessions): then every session of the agent is read again.
    here.record("s_2", "a", &deny_out_of_intent("E::\"2\""))
        .await
        .unwrap();
    let risk = here.assess("s_1", "a").await.unwrap();
    assert_eq!(signal(&risk, "out_of_intent"), 2, "{risk:?}");

    // With a short refresh the other replica's events count once it passed.
    let (soon, _stop_soon) = monitor_with(dir.path(), rules, 50).await;
    assert_eq!(
        signal(&soon.assess("s_3", "a").await.unwrap(), "out_of_intent"),
        2
    );
    other_replica
        .record("s_3", "a", &deny_out_of_intent("E::\"3\""))
        .await
        .unwrap();
    let mut seen = 0;
    for _ in 0..200 {
        seen = signal(&soon.assess("s_3", "a").await.unwrap(), "out_of_intent");
        if seen == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, 3, "another replica's event was never read");
}

#[tokio::test]
async fn a_failed_write_behind_the_answer_denies_every_decision_even_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (monitor, _stop) = monitor_with(dir.path(), default_rules(), 60_000).await;
    assert_eq!(monitor.assess("s_1", "a").await.unwrap().score, 0);
    if let Some(shared) = &monitor.inner {
        shared.pool.close().await;
    }
    let allow = Events::decision("allow", &[], "E::\"1\"".into(), false, false);
    assert!(monitor.record("s_1", "a", &allow).await.unwrap().is_empty());
    let mut result = monitor.assess("s_1", "a").await;
    for _ in 0..500 {
        if result.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        result = monitor.assess("s_1", "a").await;
    }
    assert!(
        matches!(
            result,
            Err(FacadeError::Dependency {
                dependency: Dependency::Monitoring,
                ..
            })
        ),
        "{result:?}"
    );
    assert!(!monitor.knows("s_1", "a"));
}
