//! The policy decision point over real gRPC on loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::time::Duration;

use serde_json::json;
use tether_integration_tests::pdp::{
    PdpSandbox, hr_context as context, hr_entities, hr_request as request, uid,
};
use tether_integration_tests::{eventually, workspace_root};
use tether_policy::{CaseFile, Expected};
use tether_policy_decision::RequestLimits;
use tether_proto::policy::v1::{
    BatchCheckRequest, CheckRequest, CheckResponse, Decision, GetPolicySetRequest, LoadStatus,
};
use tonic::Code;

async fn check(pdp: &PdpSandbox, req: CheckRequest) -> Result<CheckResponse, tonic::Status> {
    pdp.client()
        .check(req)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn every_decision_kind_with_its_policies_and_version() {
    let pdp = PdpSandbox::builder().start().await.unwrap();
    let version = pdp
        .client()
        .get_policy_set(GetPolicySetRequest {})
        .await
        .unwrap()
        .into_inner()
        .version;
    assert!(version.starts_with("sha256:"));

    let allow = check(&pdp, request("read", &context(10, None)))
        .await
        .unwrap();
    assert_eq!(allow.decision(), Decision::Allow);
    assert_eq!(allow.policy_ids, ["hr-read-business-hours"]);
    assert_eq!(allow.policy_version, version);
    assert_eq!(allow.request_id, "req-1");

    let deny = check(&pdp, request("update_salary", &context(10, None)))
        .await
        .unwrap();
    assert_eq!(deny.decision(), Decision::Deny);
    assert_eq!(deny.policy_ids, ["no-agent-salary-changes"]);
    assert!(deny.step_up.is_none());

    let default_deny = check(&pdp, request("read", &context(23, None)))
        .await
        .unwrap();
    assert_eq!(default_deny.decision(), Decision::Deny);
    assert!(default_deny.policy_ids.is_empty());
    assert!(default_deny.reasons[0].contains("default deny"));

    let step_up = check(&pdp, request("offboard", &context(10, None)))
        .await
        .unwrap();
    assert_eq!(step_up.decision(), Decision::ApprovalRequired);
    assert_eq!(step_up.policy_ids, ["offboard-needs-approval"]);
    let s = step_up.step_up.unwrap();
    assert_eq!(s.method, "ciba");
    assert_eq!(s.binding_message, "Offboard employee 1042?");

    let approved = check(&pdp, request("offboard", &context(10, Some(true))))
        .await
        .unwrap();
    assert_eq!(approved.decision(), Decision::Allow);
    assert_eq!(approved.policy_ids, ["hr-offboard"]);

    // An engineer's agent cannot offboard: deny, and nobody's phone buzzes.
    let mut req = request("offboard", &context(10, None));
    req.entities_json = hr_entities("engineering");
    let engineer = check(&pdp, req).await.unwrap();
    assert_eq!(engineer.decision(), Decision::Deny);
    assert!(engineer.step_up.is_none());
}

#[tokio::test]
async fn the_example_cases_pass_over_grpc() {
    let pdp = PdpSandbox::builder().start().await.unwrap();
    let text = std::fs::read_to_string(workspace_root().join("examples/hr/cases.yaml")).unwrap();
    let file: CaseFile = serde_yaml_ng::from_str(&text).unwrap();
    assert!(file.cases.len() >= 10);
    for case in &file.cases {
        let (context_json, entities_json) = case.json();
        let req = CheckRequest {
            principal: uid(&case.principal.type_name, &case.principal.id),
            action: uid(&case.action.type_name, &case.action.id),
            resource: uid(&case.resource.type_name, &case.resource.id),
            context_json,
            entities_json,
            request_id: String::new(),
        };
        let result = match check(&pdp, req).await {
            Ok(resp) => {
                let observed = match resp.decision() {
                    Decision::Allow => Expected::Allow,
                    Decision::ApprovalRequired => Expected::ApprovalRequired,
                    _ => Expected::Deny,
                };
                let message = resp.step_up.map(|s| s.binding_message).unwrap_or_default();
                case.check(observed, &resp.policy_ids, &message)
            }
            Err(status) => {
                assert_eq!(
                    status.code(),
                    Code::InvalidArgument,
                    "{}: {status:?}",
                    case.name
                );
                case.check(Expected::Rejected, &[], "")
            }
        };
        assert_eq!(result.failure, None, "case `{}`", case.name);
    }
}

#[tokio::test]
async fn an_erroring_forbid_is_a_deny_with_the_error_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("s.cedarschema"),
        "entity User; entity Doc;\naction \"read\" appliesTo { principal: User, resource: Doc, context: { n: Long } };",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        "@id(\"all-read\") permit(principal, action, resource);\n\
         @id(\"overflow\") forbid(principal, action, resource) when { context.n * 4611686018427387904 > 0 };",
    )
    .unwrap();
    let pdp = PdpSandbox::builder()
        .pack(dir.path())
        .start()
        .await
        .unwrap();
    let mut req = CheckRequest {
        principal: uid("User", "u"),
        action: uid("Action", "read"),
        resource: uid("Doc", "d"),
        context_json: r#"{"n": 0}"#.into(),
        ..Default::default()
    };
    // No error: the permit applies.
    assert_eq!(
        check(&pdp, req.clone()).await.unwrap().decision(),
        Decision::Allow
    );
    // The forbid errors (overflow): Cedar would skip it and allow; we deny.
    req.context_json = r#"{"n": 3}"#.into();
    let resp = check(&pdp, req).await.unwrap();
    assert_eq!(resp.decision(), Decision::Deny);
    assert_eq!(resp.errors.len(), 1);
    assert_eq!(resp.errors[0].policy_id, "overflow");
    assert_eq!(resp.policy_ids, ["overflow"]);
}

#[tokio::test]
async fn one_approval_prompt_names_every_step_up_policy_in_a_stable_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("s.cedarschema"),
        "entity User; entity Doc;\ntype A = { granted: Bool };\n\
         action \"export\" appliesTo { principal: User, resource: Doc, context: { approval?: A } };",
    )
    .unwrap();
    let lifted = "unless { context has approval && context.approval.granted };";
    std::fs::write(
        dir.path().join("p.cedar"),
        format!(
            "@id(\"all-export\") permit(principal, action, resource);\n\
             @id(\"zz-bulk-export\") @step_up(\"ciba\") @binding_message(\"Export all of {{resource.id}}?\")\n\
             forbid(principal, action, resource) {lifted}\n\
             @id(\"aa-personal-data\") @step_up(\"ciba\") @binding_message(\"Share personal data in {{resource.id}}?\")\n\
             forbid(principal, action, resource) {lifted}\n"
        ),
    )
    .unwrap();
    let pdp = PdpSandbox::builder()
        .pack(dir.path())
        .start()
        .await
        .unwrap();
    let req = CheckRequest {
        principal: uid("User", "u"),
        action: uid("Action", "export"),
        resource: uid("Doc", "payroll"),
        ..Default::default()
    };
    let first = check(&pdp, req.clone()).await.unwrap();
    assert_eq!(first.decision(), Decision::ApprovalRequired);
    assert_eq!(first.policy_ids, ["aa-personal-data", "zz-bulk-export"]);
    assert_eq!(
        first.reasons,
        [
            "`aa-personal-data` requires the user's approval",
            "`zz-bulk-export` requires the user's approval"
        ]
    );
    let step_up = first.step_up.clone().unwrap();
    assert_eq!(step_up.policy_ids, first.policy_ids);
    // One approval lifts both forbids, so the prompt names both.
    assert_eq!(
        step_up.binding_message,
        "Share personal data in payroll? + Export all of payroll?"
    );
    for _ in 0..10 {
        assert_eq!(check(&pdp, req.clone()).await.unwrap(), first);
    }

    let approved = CheckRequest {
        context_json: json!({"approval": {"granted": true}}).to_string(),
        ..req
    };
    let resp = check(&pdp, approved).await.unwrap();
    assert_eq!(resp.decision(), Decision::Allow);
    assert_eq!(resp.policy_ids, ["all-export"]);
}

#[tokio::test]
async fn bad_input_is_refused_with_the_right_code() {
    let limits = RequestLimits {
        max_request_bytes: 64 * 1024,
        ..RequestLimits::default()
    };
    let pdp = PdpSandbox::builder().limits(limits).start().await.unwrap();
    let ok = request("read", &context(10, None));

    let mut cases: Vec<(&str, CheckRequest, Code, &str)> = Vec::new();
    let mut r = ok.clone();
    r.principal = None;
    cases.push((
        "missing principal",
        r,
        Code::InvalidArgument,
        "missing `principal`",
    ));
    let mut r = ok.clone();
    r.action = uid("Action", "launch_missiles");
    cases.push((
        "unknown action",
        r,
        Code::InvalidArgument,
        "unknown action `Action::\"launch_missiles\"`",
    ));
    let mut r = ok.clone();
    r.principal = uid("Robot", "r2");
    cases.push((
        "unknown principal type",
        r,
        Code::InvalidArgument,
        "unknown principal entity type `Robot`",
    ));
    let mut r = ok.clone();
    r.resource = uid("Employee::\"x\"", "1");
    cases.push((
        "malformed type",
        r,
        Code::InvalidArgument,
        "not a valid Cedar type name",
    ));
    let mut r = ok.clone();
    r.context_json = "{\"now\":".into();
    cases.push((
        "malformed context JSON",
        r,
        Code::InvalidArgument,
        "context is not valid JSON",
    ));
    let mut r = ok.clone();
    r.context_json = json!({"now": {"hour": "ten", "weekday": 2, "unix": 0}}).to_string();
    cases.push((
        "context against schema",
        r,
        Code::InvalidArgument,
        "invalid context",
    ));
    let mut r = ok.clone();
    r.entities_json =
        json!([{"uid": {"type": "Spaceship", "id": "x"}, "attrs": {}, "parents": []}]).to_string();
    cases.push((
        "unknown entity type in entities",
        r,
        Code::InvalidArgument,
        "invalid entities",
    ));
    let mut r = ok.clone();
    r.entities_json = "{\"not\": \"an array\"}".into();
    cases.push((
        "entities not an array",
        r,
        Code::InvalidArgument,
        "entities must be a JSON array",
    ));
    let mut r = ok.clone();
    let mut deep = json!(1);
    for _ in 0..20 {
        deep = json!({ "x": deep });
    }
    r.context_json = deep.to_string();
    cases.push((
        "context too deep",
        r,
        Code::InvalidArgument,
        "nested 20 levels deep",
    ));
    let mut r = ok.clone();
    let many: Vec<_> = (0..300)
        .map(|i| json!({"uid": {"type": "Employee", "id": format!("e{i}")}, "attrs": {"department": "x"}, "parents": []}))
        .collect();
    r.entities_json = serde_json::Value::Array(many).to_string();
    cases.push((
        "too many entities",
        r,
        Code::ResourceExhausted,
        "300 request entities, the limit is 256",
    ));
    let mut r = ok.clone();
    r.request_id = "x".repeat(70 * 1024);
    cases.push((
        "request over max_request_bytes",
        r,
        Code::ResourceExhausted,
        "the limit is 65536",
    ));
    // Read by neither path: only JSON whitespace is an empty context, and
    // Cedar's entity format requires `attrs` and `parents`.
    let mut r = ok.clone();
    r.context_json = "\u{3000}".into();
    cases.push((
        "unicode space as the context",
        r,
        Code::InvalidArgument,
        "context is not valid JSON",
    ));
    let mut r = ok.clone();
    r.entities_json = r#"[{"uid":{"type":"Group","id":"people"},"parents":[]}]"#.into();
    cases.push((
        "request entity without attrs",
        r,
        Code::InvalidArgument,
        "missing field `attrs`",
    ));
    let mut r = ok.clone();
    r.request_id = "x".repeat(200);
    cases.push((
        "request id too long",
        r,
        Code::InvalidArgument,
        "request_id is 200 bytes",
    ));

    for (name, req, code, message) in cases {
        let status = check(&pdp, req).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(message),
            "{name}: `{}` lacks `{message}`",
            status.message()
        );
    }

    // Beyond the transport's message limit the request is not even decoded.
    let mut r = ok.clone();
    r.context_json = "x".repeat(5 * 1024 * 1024);
    let status = check(&pdp, r).await.unwrap_err();
    // libs/runtime's message limit: RESOURCE_EXHAUSTED (tonic's own
    // decoder would say OUT_OF_RANGE).
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // The server is unaffected and still answers correctly.
    assert_eq!(check(&pdp, ok).await.unwrap().decision(), Decision::Allow);
}

#[tokio::test]
async fn batch_check_answers_in_order_and_denies_bad_items() {
    let limits = RequestLimits {
        max_batch_size: 4,
        ..RequestLimits::default()
    };
    let pdp = PdpSandbox::builder().limits(limits).start().await.unwrap();
    let mut bad = request("read", &context(10, None));
    bad.context_json = "[]".into();
    bad.request_id = "bad".into();
    let resp = pdp
        .client()
        .batch_check(BatchCheckRequest {
            requests: vec![
                request("read", &context(10, None)),
                request("update_salary", &context(10, None)),
                bad,
                request("offboard", &context(10, None)),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let decisions: Vec<Decision> = resp.responses.iter().map(CheckResponse::decision).collect();
    assert_eq!(
        decisions,
        [
            Decision::Allow,
            Decision::Deny,
            Decision::Deny,
            Decision::ApprovalRequired
        ]
    );
    assert_eq!(resp.responses[2].request_id, "bad");
    assert!(
        resp.responses[2].errors[0]
            .message
            .contains("context must be a JSON object")
    );
    assert!(
        resp.responses
            .iter()
            .all(|r| r.policy_version == resp.policy_version)
    );

    let status = pdp
        .client()
        .batch_check(BatchCheckRequest {
            requests: vec![request("read", &context(10, None)); 5],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .message()
            .contains("batch has 5 requests, the limit is 4")
    );
}

#[tokio::test]
async fn hot_reload_swaps_good_updates_and_keeps_serving_through_bad_ones() {
    let pdp = PdpSandbox::builder().start().await.unwrap();
    let mut client = pdp.client();
    let before = client
        .get_policy_set(GetPolicySetRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.policy_count, 7);
    assert_eq!(before.last_load_status(), LoadStatus::Ok);
    let late = request("read", &context(20, None));
    assert_eq!(
        check(&pdp, late.clone()).await.unwrap().decision(),
        Decision::Deny
    );

    // A good update: evening reads are now allowed.
    std::fs::write(
        pdp.pack_dir().join("evening.cedar"),
        "@id(\"hr-read-evenings\")\npermit (principal is Agent, action == Action::\"read\", resource is Employee)\n\
         when { principal.delegator in Group::\"hr\" && context.network.trusted && context.now.hour < 22 };\n",
    )
    .unwrap();
    let after = eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        let old = before.version.clone();
        async move {
            let set = client
                .get_policy_set(GetPolicySetRequest {})
                .await?
                .into_inner();
            if set.version == old {
                Err(tonic::Status::unavailable("not yet"))
            } else {
                Ok(set)
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(after.policy_count, 8);
    let resp = check(&pdp, late.clone()).await.unwrap();
    assert_eq!(resp.decision(), Decision::Allow);
    assert_eq!(resp.policy_ids, ["hr-read-evenings"]);
    assert_eq!(resp.policy_version, after.version);

    // A bad update: rejected with file and line; the last good set serves on.
    std::fs::write(
        pdp.pack_dir().join("broken.cedar"),
        "// a typo\n@id(\"broken\")\npermit (principal is Agnt, action, resource);\n",
    )
    .unwrap();
    let rejected = eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            let set = client
                .get_policy_set(GetPolicySetRequest {})
                .await?
                .into_inner();
            if set.last_load_status() == LoadStatus::Rejected {
                Ok(set)
            } else {
                Err(tonic::Status::unavailable("not yet"))
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(rejected.version, after.version);
    assert_eq!(rejected.policy_count, 8);
    assert!(
        rejected.last_load_error.contains("broken.cedar:3"),
        "{}",
        rejected.last_load_error
    );
    assert!(
        rejected.last_load_error.contains("Agnt"),
        "{}",
        rejected.last_load_error
    );
    let resp = check(&pdp, late.clone()).await.unwrap();
    assert_eq!(resp.decision(), Decision::Allow);
    assert_eq!(resp.policy_version, after.version);

    // Removing a policy by a bad edit of an existing file is rejected too:
    // the salary forbid must not silently disappear.
    let hr = std::fs::read_to_string(pdp.pack_dir().join("hr.cedar")).unwrap();
    std::fs::remove_file(pdp.pack_dir().join("broken.cedar")).unwrap();
    std::fs::write(
        pdp.pack_dir().join("hr.cedar"),
        hr.replace(
            "forbid (\n  principal is Agent,",
            "forbid (\n  principal is Agent",
        ),
    )
    .unwrap();
    let resp = eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            let set = client
                .get_policy_set(GetPolicySetRequest {})
                .await?
                .into_inner();
            if set.last_load_status() == LoadStatus::Rejected
                && set.last_load_error.contains("hr.cedar")
            {
                Ok(set)
            } else {
                Err(tonic::Status::unavailable("not yet"))
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(resp.version, after.version);
    let salary = check(&pdp, request("update_salary", &context(10, None)))
        .await
        .unwrap();
    assert_eq!(salary.decision(), Decision::Deny);
    assert_eq!(salary.policy_ids, ["no-agent-salary-changes"]);

    // Fixing it loads again.
    std::fs::write(pdp.pack_dir().join("hr.cedar"), &hr).unwrap();
    eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            let set = client
                .get_policy_set(GetPolicySetRequest {})
                .await?
                .into_inner();
            if set.last_load_status() == LoadStatus::Ok {
                Ok(set)
            } else {
                Err(tonic::Status::unavailable("not yet"))
            }
        }
    })
    .await
    .unwrap();
    pdp.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let pdp = PdpSandbox::builder().start().await.unwrap();
    let mut health = HealthClient::new(pdp.channel());
    for service in ["", "tether.policy.v1.PolicyDecision"] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.status(), ServingStatus::Serving, "`{service}`");
    }

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    // Reflection describes the API: operators only.
    let refused = ServerReflectionClient::new(pdp.channel())
        .server_reflection_info(futures::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let admin = pdp
        .pki()
        .channel("admin", pdp.addr(), "policy-decision")
        .unwrap();
    let mut reflection = ServerReflectionClient::new(admin);
    let mut stream = reflection
        .server_reflection_info(futures::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection response {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"tether.policy.v1.PolicyDecision".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn shutdown_drains_and_closes_the_port() {
    let pdp = PdpSandbox::builder().start().await.unwrap();
    let addr = pdp.addr();
    assert_eq!(
        check(&pdp, request("read", &context(10, None)))
            .await
            .unwrap()
            .decision(),
        Decision::Allow
    );
    tokio::time::timeout(Duration::from_secs(15), pdp.shutdown())
        .await
        .expect("drains within the deadline")
        .unwrap();
    // The port is closed: a new connection is refused.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn policy_tests_run_remotely_with_the_operators_certificate_only() {
    let pdp = PdpSandbox::builder().start().await.unwrap();
    let endpoint = format!("https://{}", pdp.addr());
    let run_as = |identity: &str| {
        let tls = pdp.pki().tls(identity).unwrap();
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || {
            let pack = workspace_root().join("examples/hr");
            tether_cli::policy::test_remote(&pack, &pack.join("cases.yaml"), &endpoint, &tls)
        })
    };
    let code = run_as("admin").await.unwrap().unwrap();
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    // Another Tether service's certificate is trusted but not allowed.
    let err = run_as("credential-issuer").await.unwrap().unwrap_err();
    assert!(format!("{err:#}").contains("may not call"), "{err:#}");
}
