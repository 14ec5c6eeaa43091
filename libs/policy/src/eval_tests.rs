use std::path::PathBuf;

use super::*;
use crate::pack::PackSources;

fn hr_pack() -> PolicyPack {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hr");
    PolicyPack::load_dir(&dir).expect("example pack loads")
}

fn inline_pack(schema: &str, policies: &str) -> PolicyPack {
    PolicyPack::from_sources(PackSources {
        schema: ("s.cedarschema".into(), schema.into()),
        policies: vec![("p.cedar".into(), policies.into())],
        entities: None,
        source: "test".into(),
    })
    .expect("inline pack loads")
}

const HR_ENTITIES: &str = r#"[
  {"uid":{"type":"Agent","id":"hr-assistant"},"attrs":{"delegator":{"__entity":{"type":"User","id":"alice"}}},"parents":[]},
  {"uid":{"type":"User","id":"alice"},"attrs":{"department":"people"},"parents":[{"type":"Group","id":"hr"}]},
  {"uid":{"type":"Employee","id":"1042"},"attrs":{"department":"sales"},"parents":[]}
]"#;

fn context(hour: i64, approval: Option<bool>) -> String {
    let mut ctx = serde_json::json!({
        "now": {"hour": hour, "weekday": 3, "unix": 1_795_000_000},
        "network": {"ip": "10.0.0.1", "trusted": true, "zone": "corp"},
        "session": {"id": "s-1", "age_seconds": 5, "intent": "x", "in_intent": true},
        "risk": {"score": 0, "level": "low", "signals": {"denials": 0, "denial_rate_pct": 0, "out_of_intent": 0, "other_users_resources": 0, "approvals_requested": 0, "approvals_denied": 0, "approvals_ignored": 0, "credential_requests_per_min": 0, "distinct_resources_per_min": 0, "token_failures": 0}}
    });
    if let Some(granted) = approval {
        ctx["approval"] = serde_json::json!({"granted": granted});
    }
    ctx.to_string()
}

fn query<'a>(action: &'a str, ctx: &'a str, entities: &'a str) -> Query<'a> {
    Query {
        principal: ("Agent", "hr-assistant"),
        action: ("Action", action),
        resource: ("Employee", "1042"),
        context_json: ctx,
        entities_json: entities,
    }
}

#[test]
fn allow_names_the_permit() {
    let ctx = context(10, None);
    let d = hr_pack()
        .evaluate(&query("read", &ctx, HR_ENTITIES), &Limits::default())
        .unwrap();
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(d.policy_ids, ["hr-read-business-hours"]);
}

#[test]
fn default_deny_has_no_policy_and_says_so() {
    let ctx = context(22, None);
    let d = hr_pack()
        .evaluate(&query("read", &ctx, HR_ENTITIES), &Limits::default())
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(d.policy_ids.is_empty());
    assert!(d.reasons[0].contains("default deny"));
}

#[test]
fn step_up_becomes_approval_required_with_binding_message() {
    let ctx = context(10, None);
    let d = hr_pack()
        .evaluate(&query("offboard", &ctx, HR_ENTITIES), &Limits::default())
        .unwrap();
    let Outcome::ApprovalRequired(step_up) = d.outcome else {
        panic!("expected approval required, got {d:?}");
    };
    assert_eq!(step_up.method, "ciba");
    assert_eq!(step_up.binding_message, "Offboard employee 1042?");
    assert_eq!(step_up.policy_ids, ["offboard-needs-approval"]);
}

#[test]
fn explicit_false_approval_still_asks_and_true_allows() {
    let pack = hr_pack();
    let ctx = context(10, Some(false));
    let d = pack
        .evaluate(&query("offboard", &ctx, HR_ENTITIES), &Limits::default())
        .unwrap();
    assert!(matches!(d.outcome, Outcome::ApprovalRequired(_)));
    let ctx = context(10, Some(true));
    let d = pack
        .evaluate(&query("offboard", &ctx, HR_ENTITIES), &Limits::default())
        .unwrap();
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(d.policy_ids, ["hr-offboard"]);
}

#[test]
fn step_up_is_not_offered_when_approval_would_not_help() {
    // Untrusted network: no permit applies, so approving would still deny.
    let ctx = context(10, None).replace("\"trusted\":true", "\"trusted\":false");
    let d = hr_pack()
        .evaluate(&query("offboard", &ctx, HR_ENTITIES), &Limits::default())
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny);
}

#[test]
fn step_up_is_not_offered_next_to_an_ordinary_forbid() {
    let ctx = context(10, None).replace("\"level\":\"low\"", "\"level\":\"high\"");
    let d = hr_pack()
        .evaluate(&query("offboard", &ctx, HR_ENTITIES), &Limits::default())
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(d.policy_ids.contains(&"deny-high-risk".to_string()));
}

const ERR_SCHEMA: &str = r#"
entity User;
entity Doc;
action "read" appliesTo { principal: User, resource: Doc, context: { n: Long } };
"#;

#[test]
fn an_erroring_forbid_never_lets_a_permit_through() {
    let pack = inline_pack(
        ERR_SCHEMA,
        r#"
        @id("everyone-reads") permit(principal, action, resource);
        @id("overflowing-forbid") forbid(principal, action, resource)
            when { context.n * 4611686018427387904 > 0 };
        "#,
    );
    let q = Query {
        principal: ("User", "u"),
        action: ("Action", "read"),
        resource: ("Doc", "d"),
        context_json: r#"{"n": 7}"#,
        entities_json: "",
    };
    // Prove the premise: raw Cedar skips the erroring forbid and allows.
    let principal = uid("p", q.principal).unwrap();
    let action = uid("a", q.action).unwrap();
    let resource = uid("r", q.resource).unwrap();
    let req = pack
        .request(&principal, &action, &resource, &serde_json::json!({"n": 7}))
        .unwrap();
    let raw = Authorizer::new().is_authorized(&req, &pack.policies, &pack.entities);
    assert_eq!(raw.decision(), CedarDecision::Allow);

    let d = pack.evaluate(&q, &Limits::default()).unwrap();
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.errors.len(), 1);
    assert_eq!(d.errors[0].policy_id, "overflowing-forbid");
    assert!(d.errors[0].message.contains("overflow"), "{:?}", d.errors);
}

#[test]
fn an_erroring_step_up_is_a_plain_deny() {
    let pack = inline_pack(
        r#"
        entity User;
        entity Doc;
        type A = { granted: Bool };
        action "read" appliesTo { principal: User, resource: Doc, context: { n: Long, approval?: A } };
        "#,
        r#"
        @id("reads") permit(principal, action, resource);
        @id("step") @step_up("ciba")
        forbid(principal, action, resource)
            unless { (context has approval && context.approval.granted) || context.n * 4611686018427387904 > 0 };
        "#,
    );
    let q = Query {
        principal: ("User", "u"),
        action: ("Action", "read"),
        resource: ("Doc", "d"),
        context_json: r#"{"n": 7}"#,
        entities_json: "",
    };
    let d = pack.evaluate(&q, &Limits::default()).unwrap();
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(!d.errors.is_empty());
}

#[test]
fn missing_delegator_entity_is_an_evaluation_error_and_a_deny() {
    let entities = r#"[
      {"uid":{"type":"Agent","id":"hr-assistant"},"attrs":{"delegator":{"__entity":{"type":"User","id":"ghost"}}},"parents":[]}
    ]"#;
    let ctx = context(10, None);
    let d = hr_pack()
        .evaluate(&query("read", &ctx, entities), &Limits::default())
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny);
}

#[test]
fn bad_requests_are_refused_before_evaluation() {
    let pack = hr_pack();
    let ctx = context(10, None);
    let limits = Limits::default();
    let cases: Vec<(Query<'_>, &str)> = vec![
        (
            query("fly", &ctx, HR_ENTITIES),
            "unknown action `Action::\"fly\"`",
        ),
        (
            Query {
                principal: ("Robot", "r2"),
                ..query("read", &ctx, HR_ENTITIES)
            },
            "unknown principal entity type `Robot`",
        ),
        (
            Query {
                principal: ("", "x"),
                ..query("read", &ctx, HR_ENTITIES)
            },
            "principal type is required",
        ),
        (
            Query {
                resource: ("Employee", ""),
                ..query("read", &ctx, HR_ENTITIES)
            },
            "resource id is required",
        ),
        (
            Query {
                principal: ("Not A Type", "x"),
                ..query("read", &ctx, HR_ENTITIES)
            },
            "not a valid Cedar type name",
        ),
        (
            query("read", "{not json", HR_ENTITIES),
            "context is not valid JSON",
        ),
        (
            query("read", "[1]", HR_ENTITIES),
            "context must be a JSON object",
        ),
        (
            query("read", r#"{"now": 1}"#, HR_ENTITIES),
            "invalid context",
        ),
        (query("read", &ctx, "{}"), "entities must be a JSON array"),
        (
            query(
                "read",
                &ctx,
                r#"[{"uid":{"type":"Spaceship","id":"x"},"attrs":{},"parents":[]}]"#,
            ),
            "invalid entities",
        ),
    ];
    for (q, expect) in cases {
        let err = pack.evaluate(&q, &limits).unwrap_err();
        assert!(matches!(err, RequestError::Invalid(_)), "{err:?}");
        assert!(
            err.to_string().contains(expect),
            "`{err}` should contain `{expect}`"
        );
    }
}

#[test]
fn request_entity_may_not_redefine_a_static_one() {
    // The pack's static `Group::"hr"` has no parents; a request may not
    // redefine it (e.g. to smuggle in membership of another group).
    let entities = r#"[{"uid":{"type":"Group","id":"hr"},"attrs":{},"parents":[{"type":"Group","id":"engineering"}]}]"#;
    let ctx = context(10, None);
    let err = hr_pack()
        .evaluate(&query("read", &ctx, entities), &Limits::default())
        .unwrap_err();
    assert!(matches!(err, RequestError::Invalid(_)), "{err:?}");
}

#[test]
fn limits_are_enforced() {
    let pack = hr_pack();
    let ctx = context(10, None);
    let tight = Limits {
        max_entities: 2,
        ..Limits::default()
    };
    assert!(matches!(
        pack.evaluate(&query("read", &ctx, HR_ENTITIES), &tight),
        Err(RequestError::TooLarge(_))
    ));
    let tight = Limits {
        max_json_bytes: 64,
        ..Limits::default()
    };
    assert!(matches!(
        pack.evaluate(&query("read", &ctx, HR_ENTITIES), &tight),
        Err(RequestError::TooLarge(_))
    ));
    let deep = r#"{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":1}}}}}}}}}"#;
    let err = pack
        .evaluate(&query("read", deep, HR_ENTITIES), &Limits::default())
        .unwrap_err();
    assert!(err.to_string().contains("nested 9 levels"), "{err}");
}

#[test]
fn action_groups_are_honoured_by_the_per_action_slices() {
    let pack = inline_pack(
        r#"
        entity User;
        entity Doc;
        action "hr_ops";
        action "offboard" in ["hr_ops"] appliesTo { principal: User, resource: Doc };
        action "read" appliesTo { principal: User, resource: Doc };
        "#,
        r#"@id("ops") permit(principal, action in Action::"hr_ops", resource);
           @id("listed") permit(principal, action in [Action::"read"], resource);"#,
    );
    let q = user_reads_doc;
    let d = pack.evaluate(&q("offboard"), &Limits::default()).unwrap();
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(d.policy_ids, ["ops"]);
    // `action in [Action::"read"]` holds for `read` itself.
    let d = pack.evaluate(&q("read"), &Limits::default()).unwrap();
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(d.policy_ids, ["listed"]);
}

#[test]
fn forms_the_fast_path_leaves_to_cedar_decide_the_same() {
    let pack = inline_pack(
        r#"
        entity User;
        entity Doc = { owner: User };
        action "read" appliesTo { principal: User, resource: Doc, context: { ip: ipaddr, level: decimal } };
        "#,
        r#"@id("owner-from-lan") permit(principal, action, resource)
           when { resource.owner == principal && context.ip.isInRange(ip("10.0.0.0/8")) && context.level.greaterThan(decimal("0.5")) };"#,
    );
    // Extension values and an implicit entity reference (no `__entity`):
    // only Cedar's schema-directed parser understands these.
    let entities = r#"[{"uid":{"type":"Doc","id":"d"},"attrs":{"owner":{"type":"User","id":"u"}},"parents":[]}]"#;
    let q = |ctx| Query {
        principal: ("User", "u"),
        action: ("Action", "read"),
        resource: ("Doc", "d"),
        context_json: ctx,
        entities_json: entities,
    };
    let allow = r#"{"ip":{"__extn":{"fn":"ip","arg":"10.1.2.3"}},"level":{"__extn":{"fn":"decimal","arg":"0.75"}}}"#;
    let deny = r#"{"ip":{"__extn":{"fn":"ip","arg":"192.168.1.1"}},"level":{"__extn":{"fn":"decimal","arg":"0.75"}}}"#;
    assert_eq!(
        pack.evaluate(&q(allow), &Limits::default())
            .unwrap()
            .outcome,
        Outcome::Allow
    );
    assert_eq!(
        pack.evaluate(&q(deny), &Limits::default()).unwrap().outcome,
        Outcome::Deny
    );
    // A value the fast path could build but the schema forbids is refused.
    let wrong = r#"{"ip":"10.1.2.3","level":1}"#;
    assert!(matches!(
        pack.evaluate(&q(wrong), &Limits::default()),
        Err(RequestError::Invalid(_))
    ));
}

#[test]
fn a_forbid_listing_its_actions_is_never_sliced_away() {
    let pack = inline_pack(
        r#"
        entity User;
        entity Doc;
        action "read" appliesTo { principal: User, resource: Doc };
        action "delete" appliesTo { principal: User, resource: Doc };
        "#,
        r#"@id("all") permit(principal, action, resource);
           @id("no-delete") forbid(principal, action in [Action::"delete"], resource);"#,
    );
    let q = user_reads_doc;
    let d = pack.evaluate(&q("delete"), &Limits::default()).unwrap();
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.policy_ids, ["no-delete"]);
    assert_eq!(
        pack.evaluate(&q("read"), &Limits::default())
            .unwrap()
            .outcome,
        Outcome::Allow
    );
}

/// The direct path and Cedar's parsers must decide alike wherever the
/// direct path answers at all.
#[test]
fn the_direct_path_decides_like_cedars_parsers() {
    let pack = hr_pack();
    let limits = Limits::default();
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hr/cases.yaml"),
    )
    .unwrap();
    let file = yaml_to_json(&text);
    let mut answered = 0;
    for case in file["cases"].as_array().unwrap() {
        let context = case
            .get("context")
            .map(ToString::to_string)
            .unwrap_or_default();
        let entities = case
            .get("entities")
            .map(ToString::to_string)
            .unwrap_or_default();
        let q = Query {
            principal: ("Agent", "hr-assistant"),
            action: ("Action", case["action"]["id"].as_str().unwrap()),
            resource: ("Employee", "1042"),
            context_json: &context,
            entities_json: &entities,
        };
        let Ok(principal) = pack.uid("p", q.principal) else {
            continue;
        };
        let Ok(action) = pack.uid("a", q.action) else {
            continue;
        };
        let resource = pack.uid("r", q.resource).unwrap();
        if !pack.actions.contains(&action) {
            continue;
        }
        let uids = (&principal, &action, &resource);
        let general = pack.evaluate_general(&q, &limits, uids);
        if let Some(direct) = pack.evaluate_direct(&q, &limits, uids) {
            answered += 1;
            assert_eq!(Ok(direct), general, "{}", case["name"]);
        }
    }
    assert!(
        answered >= 8,
        "the direct path answered only {answered} cases"
    );

    // Inputs the direct path must leave to Cedar (and Cedar decides).
    let ctx = context(10, None);
    for (context_json, entities_json) in [
        (
            r#"{"now":{"hour":10,"hour":11}}"#.to_string(),
            HR_ENTITIES.to_string(),
        ),
        (
            ctx.clone(),
            HR_ENTITIES.replace("\"parents\":[]}", "\"parents\":[],\"tags\":{}}"),
        ),
        (
            ctx.clone(),
            HR_ENTITIES.replace(
                r#"{"__entity":{"type":"User","id":"alice"}}"#,
                r#"{"type":"User","id":"alice"}"#,
            ),
        ),
    ] {
        let q = query("read", &context_json, &entities_json);
        let principal = pack.uid("p", q.principal).unwrap();
        let action = pack.uid("a", q.action).unwrap();
        let resource = pack.uid("r", q.resource).unwrap();
        assert!(
            pack.evaluate_direct(&q, &limits, (&principal, &action, &resource))
                .is_none(),
            "{context_json} / {entities_json}"
        );
    }
}

/// The YAML case file as JSON (anchors and aliases resolved).
fn yaml_to_json(text: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(text).unwrap()
}

/// `User::"u"` doing `action` on `Doc::"d"`, no context or entities.
fn user_reads_doc(action: &str) -> Query<'_> {
    Query {
        principal: ("User", "u"),
        action: ("Action", action),
        resource: ("Doc", "d"),
        context_json: "",
        entities_json: "",
    }
}

/// Both paths' answers for `q`: the direct path's (`None` when it
/// declines) and Cedar's own.
fn both_paths(
    pack: &PolicyPack,
    q: &Query<'_>,
    limits: &Limits,
) -> (Option<Decision>, Result<Decision, RequestError>) {
    let principal = pack.uid("principal", q.principal).unwrap();
    let action = pack.uid("action", q.action).unwrap();
    let resource = pack.uid("resource", q.resource).unwrap();
    let uids = (&principal, &action, &resource);
    (
        pack.evaluate_direct(q, limits, uids),
        pack.evaluate_general(q, limits, uids),
    )
}

#[test]
fn request_entities_without_attrs_or_parents_are_refused() {
    // Cedar's entity format requires both keys, even when empty; a request
    // entity missing one is malformed, whichever path reads it.
    let pack = hr_pack();
    let ctx = context(10, None);
    let no_attrs = HR_ENTITIES.replace(
        "\n]",
        ",\n  {\"uid\":{\"type\":\"Group\",\"id\":\"people\"},\"parents\":[]}\n]",
    );
    let no_parents = HR_ENTITIES.replace(
        r#"{"department":"sales"},"parents":[]}"#,
        r#"{"department":"sales"}}"#,
    );
    assert_ne!(no_parents, HR_ENTITIES);
    for (entities, missing) in [(no_attrs, "attrs"), (no_parents, "parents")] {
        let q = query("read", &ctx, &entities);
        let err = pack.evaluate(&q, &Limits::default()).unwrap_err();
        assert!(matches!(err, RequestError::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains(missing), "{err}");
        assert_eq!(both_paths(&pack, &q, &Limits::default()).0, None);
    }
}

const OWNER_SCHEMA: &str = r#"
entity User;
entity Doc;
action "read" appliesTo { principal: User, resource: Doc, context: { owner: User } };
"#;

#[test]
fn an_entity_escape_is_two_levels_of_context_depth() {
    // `{"owner": {"__entity": {…}}}` is nested three levels deep: the
    // general path counts the escape as the two objects it is.
    let pack = inline_pack(
        OWNER_SCHEMA,
        r#"@id("owner-reads") permit(principal, action, resource) when { context.owner == principal };"#,
    );
    let ctx = r#"{"owner":{"__entity":{"type":"User","id":"u"}}}"#;
    let q = Query {
        context_json: ctx,
        ..user_reads_doc("read")
    };
    let two = Limits {
        max_context_depth: 2,
        ..Limits::default()
    };
    let err = pack.evaluate(&q, &two).unwrap_err();
    assert!(err.to_string().contains("nested 3 levels"), "{err}");
    assert_eq!(both_paths(&pack, &q, &two).0, None);

    // One level more and both paths allow; the direct path still answers.
    let three = Limits {
        max_context_depth: 3,
        ..Limits::default()
    };
    let (direct, general) = both_paths(&pack, &q, &three);
    assert_eq!(general.as_ref().unwrap().outcome, Outcome::Allow);
    assert_eq!(direct.as_ref(), general.as_ref().ok());
}

#[test]
fn reserved_keys_are_left_to_cedar_at_every_level() {
    let pack = inline_pack(
        r#"
        entity User;
        entity Doc;
        type Call = { "fn": String, arg: String };
        action "read" appliesTo { principal: User, resource: Doc,
            context: { "__extn"?: Call, rec?: { "__expr"?: String, "__x"?: Long } } };
        "#,
        r#"@id("anyone") permit(principal, action, resource);"#,
    );
    // A top-level `__extn` key is an extension escape to Cedar (here an
    // unknown function), not a context attribute of that name.
    let extn = r#"{"__extn":{"fn":"unknown","arg":"x"}}"#;
    let q = Query {
        context_json: extn,
        ..user_reads_doc("read")
    };
    assert!(matches!(
        pack.evaluate(&q, &Limits::default()),
        Err(RequestError::Invalid(_))
    ));
    // Whatever Cedar makes of the others, it is Cedar that decides.
    for ctx in [
        extn,
        r#"{"rec":{"__expr":"1 == 1"}}"#,
        r#"{"rec":{"__x":1}}"#,
        r#"{"rec":{"__entity":{"type":"User","id":"u"},"__x":1}}"#,
    ] {
        let q = Query {
            context_json: ctx,
            ..user_reads_doc("read")
        };
        let (direct, general) = both_paths(&pack, &q, &Limits::default());
        assert_eq!(direct, None, "{ctx}");
        assert_eq!(pack.evaluate(&q, &Limits::default()), general, "{ctx}");
    }
}

#[test]
fn a_blank_context_is_an_empty_object_under_every_depth_limit() {
    let pack = inline_pack(
        ERR_SCHEMA
            .replace("context: { n: Long }", "context: {}")
            .as_str(),
        r#"@id("anyone") permit(principal, action, resource);"#,
    );
    let zero = Limits {
        max_context_depth: 0,
        ..Limits::default()
    };
    for ctx in ["", "{}", " \n\t\r"] {
        let q = Query {
            context_json: ctx,
            ..user_reads_doc("read")
        };
        let err = pack.evaluate(&q, &zero).unwrap_err();
        assert!(
            err.to_string().contains("nested 1 levels"),
            "{ctx:?}: {err}"
        );
        let one = Limits {
            max_context_depth: 1,
            ..Limits::default()
        };
        assert_eq!(pack.evaluate(&q, &one).unwrap().outcome, Outcome::Allow);
    }
}

#[test]
fn only_json_whitespace_counts_as_empty() {
    let pack = inline_pack(
        ERR_SCHEMA
            .replace("context: { n: Long }", "context: {}")
            .as_str(),
        r#"@id("anyone") permit(principal, action, resource);"#,
    );
    for blank in ["", " ", "\t\r\n "] {
        let q = Query {
            context_json: blank,
            entities_json: blank,
            ..user_reads_doc("read")
        };
        assert_eq!(
            pack.evaluate(&q, &Limits::default()).unwrap().outcome,
            Outcome::Allow,
            "{blank:?}"
        );
    }
    // Unicode spaces are not JSON whitespace: Cedar refuses them as
    // invalid JSON, and so does every path.
    for space in ["\u{a0}", "\u{2028}", "\u{3000}", " \u{85} ", "\u{feff}"] {
        for (context_json, entities_json, what) in [(space, "", "context"), ("", space, "entities")]
        {
            let q = Query {
                context_json,
                entities_json,
                ..user_reads_doc("read")
            };
            let err = pack.evaluate(&q, &Limits::default()).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("{what} is not valid JSON")),
                "{space:?}: {err}"
            );
            assert_eq!(both_paths(&pack, &q, &Limits::default()).0, None);
        }
    }
}

const TWO_STEP_UPS: &str = r#"
@id("permit-all") permit(principal, action, resource);
@id("zz-large-export") @step_up("ciba") @binding_message("Export all of {resource.id}?")
forbid(principal, action, resource) unless { context has approval && context.approval.granted };
@id("aa-after-hours") @step_up("ciba") @binding_message("Read {resource.id} after hours?")
forbid(principal, action, resource) unless { context has approval && context.approval.granted };
@id("mm-no-message") @step_up("ciba")
forbid(principal, action, resource) unless { context has approval && context.approval.granted };
"#;

const APPROVAL_SCHEMA: &str = r#"
entity User;
entity Doc;
type A = { granted: Bool };
action "read" appliesTo { principal: User, resource: Doc, context: { approval?: A } };
"#;

#[test]
fn the_approval_prompt_names_every_step_up_policy_it_lifts() {
    let pack = inline_pack(APPROVAL_SCHEMA, TWO_STEP_UPS);
    let q = user_reads_doc("read");
    let first = pack.evaluate(&q, &Limits::default()).unwrap();
    let Outcome::ApprovalRequired(step_up) = &first.outcome else {
        panic!("expected approval required, got {first:?}");
    };
    let ids = ["aa-after-hours", "mm-no-message", "zz-large-export"];
    assert_eq!(step_up.policy_ids, ids);
    assert_eq!(first.policy_ids, ids);
    assert_eq!(
        step_up.binding_message,
        "Read d after hours? + mm-no-message + Export all of d?"
    );
    for _ in 0..20 {
        assert_eq!(pack.evaluate(&q, &Limits::default()).unwrap(), first);
    }
    // The one approval lifts all three.
    let q = Query {
        context_json: r#"{"approval":{"granted":true}}"#,
        ..q
    };
    let d = pack.evaluate(&q, &Limits::default()).unwrap();
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(d.policy_ids, ["permit-all"]);
}

#[test]
fn a_long_prompt_keeps_a_part_for_every_step_up_policy() {
    let pack = inline_pack(
        APPROVAL_SCHEMA,
        r#"
        @id("permit-all") permit(principal, action, resource);
        @id("b") @step_up("ciba") @binding_message("Second: {resource.id}")
        forbid(principal, action, resource) unless { context has approval && context.approval.granted };
        @id("a") @step_up("ciba") @binding_message("First: {resource.id}")
        forbid(principal, action, resource) unless { context has approval && context.approval.granted };
        @id("c") @step_up("ciba") @binding_message("Third")
        forbid(principal, action, resource) unless { context has approval && context.approval.granted };
        "#,
    );
    let long = "x".repeat(300);
    let q = Query {
        resource: ("Doc", &long),
        ..user_reads_doc("read")
    };
    let d = pack.evaluate(&q, &Limits::default()).unwrap();
    let Outcome::ApprovalRequired(step_up) = d.outcome else {
        panic!("expected approval required, got {d:?}");
    };
    let message = step_up.binding_message;
    assert!(message.chars().count() <= 100, "{message}");
    let parts: Vec<&str> = message.split(" + ").collect();
    assert_eq!(parts.len(), 3, "{message}");
    assert!(
        parts[0].starts_with("First: xxx") && parts[0].ends_with('…'),
        "{message}"
    );
    assert!(
        parts[1].starts_with("Second: xxx") && parts[1].ends_with('…'),
        "{message}"
    );
    assert_eq!(parts[2], "Third");
}

#[test]
fn determining_policy_ids_and_reasons_are_sorted_on_every_call() {
    // Cedar reports the determining policies as a hash set; twelve of them
    // come back in a different order from call to call unless sorted.
    let mut policies = String::new();
    let ids: Vec<String> = (0..12)
        .map(|i| format!("forbid-{:02}", (i * 7) % 12))
        .collect();
    for id in &ids {
        policies.push_str(&format!(
            "@id(\"{id}\") forbid(principal, action, resource);\n"
        ));
    }
    policies.push_str("@id(\"permit-all\") permit(principal, action, resource);\n");
    let pack = inline_pack(APPROVAL_SCHEMA, &policies);
    let mut sorted = ids.clone();
    sorted.sort();
    let q = user_reads_doc("read");
    for _ in 0..20 {
        let d = pack.evaluate(&q, &Limits::default()).unwrap();
        assert_eq!(d.outcome, Outcome::Deny);
        assert_eq!(d.policy_ids, sorted);
        let reasons: Vec<String> = sorted
            .iter()
            .map(|id| format!("forbidden by `{id}`"))
            .collect();
        assert_eq!(d.reasons, reasons);
    }
}
