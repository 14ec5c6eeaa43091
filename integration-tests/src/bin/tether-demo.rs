//! The scripted agent scenario behind `integration-tests/run.sh demo`: the
//! services built so far, on loopback, with their real dependencies (the
//! test IdP, OpenBao, PostgreSQL), walked through one agent session. Prints
//! what happens at each step; never prints a token or a password.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::json;
use sqlx::Connection as _;
use tether_integration_tests::identity::{FACADE_AUDIENCE, IdentitySandbox, TestAgent};
use tether_integration_tests::idp::Idp;
use tether_integration_tests::issuer::{CredentialDeps, IssuerSandbox, bearer};
use tether_integration_tests::pdp::PdpSandbox;
use tether_proto::credentials::v1 as credentials;
use tether_proto::identity::v1 as identity;
use tether_proto::policy::v1 as policy;

const INTENT: &str =
    r#"[{"type":"hr_record_access","actions":["read"],"identifier":"employee/1042"}]"#;

fn step(text: &str) {
    println!("\n\u{25b6} {text}");
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(scenario())
}

async fn scenario() -> anyhow::Result<()> {
    step("starting the test IdP, PostgreSQL 15, OpenBao 2.7.2 and the Tether services on loopback");
    let idp = Idp::start().await.context("starting the test IdP")?;
    let deps = CredentialDeps::start(600)
        .await
        .context("starting PostgreSQL and OpenBao")?;
    let agent = TestAgent::new("hr-assistant")?;
    let identity = IdentitySandbox::builder(idp.issuer())
        .agent(&agent, &["hr:read", "hr:offboard"], &["hr"])
        .start()
        .await?;
    let pdp = PdpSandbox::builder().start().await?;
    let issuer = IssuerSandbox::builder(deps.bao.addr(), &identity)
        .start()
        .await?;
    println!(
        "  IdP {}, identity exchange {}, policy decision point {}, credential issuer {}",
        idp.issuer(),
        identity.addr(),
        pdp.addr(),
        issuer.addr()
    );

    step("alice (HR) logs in at her IdP: OIDC Authorization Code + PKCE, as `tether login` does");
    let login = idp
        .login("alice", &["openid", "profile", "email", "hr:read"])
        .await?;
    println!("  logged in as `{}`", login.subject);

    step("the HR assistant agent exchanges alice's token + its own signed assertion (RFC 8693)");
    let delegated = identity
        .client()
        .exchange(identity::ExchangeRequest {
            subject_token: login.access_token.clone(),
            subject_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
            actor_token: agent.assertion(&identity.token_endpoint())?,
            actor_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
            audience: FACADE_AUDIENCE.into(),
            scope: "hr:read".into(),
            requested_token_type: String::new(),
            authorization_details: INTENT.into(),
        })
        .await?
        .into_inner();
    let who = identity
        .client()
        .introspect(identity::IntrospectRequest {
            token: delegated.access_token.clone(),
            token_type_hint: String::new(),
        })
        .await?
        .into_inner();
    println!(
        "  delegated token: sub=`{}` act=`{}` scope=`{}` session=`{}`, expires in {} s",
        who.sub,
        who.act.as_ref().map(|a| a.sub.as_str()).unwrap_or_default(),
        who.scope,
        delegated.sid,
        delegated.expires_in
    );

    let entities = json!([
        {"uid": {"type": "Agent", "id": "hr-assistant"}, "attrs": {"delegator": {"__entity": {"type": "User", "id": who.sub}}}, "parents": []},
        {"uid": {"type": "User", "id": who.sub}, "attrs": {"department": "people"}, "parents": [{"type": "Group", "id": "hr"}]},
        {"uid": {"type": "Employee", "id": "1042"}, "attrs": {"department": "sales"}, "parents": []}
    ])
    .to_string();
    let decide = |action: &str, hour: i64| {
        let context = json!({
            "now": {"hour": hour, "weekday": 2, "unix": 1_795_000_000},
            "network": {"ip": "10.1.2.3", "trusted": true, "zone": "corp"},
            "session": {"id": delegated.sid, "age_seconds": 5, "intent": INTENT},
            "risk": {"score": 10}
        });
        policy::CheckRequest {
            principal: Some(policy::EntityUid {
                r#type: "Agent".into(),
                id: "hr-assistant".into(),
            }),
            action: Some(policy::EntityUid {
                r#type: "Action".into(),
                id: action.into(),
            }),
            resource: Some(policy::EntityUid {
                r#type: "Employee".into(),
                id: "1042".into(),
            }),
            context_json: context.to_string(),
            entities_json: entities.clone(),
            request_id: delegated.sid.clone(),
        }
    };
    let show = |what: &str, r: &policy::CheckResponse| {
        println!(
            "  {what}: {} by {:?}{}",
            r.decision().as_str_name(),
            r.policy_ids,
            r.step_up
                .as_ref()
                .map(|s| format!(" — ask alice: \"{}\"", s.binding_message))
                .unwrap_or_default()
        );
    };

    step("policy: may the agent read employee 1042 for alice, now (10:00, corporate network)?");
    let read = pdp.client().check(decide("read", 10)).await?.into_inner();
    show("read", &read);
    ensure!(read.decision() == policy::Decision::Allow, "expected ALLOW");

    step(
        "just-in-time credential: the issuer asks OpenBao for a PostgreSQL role for this session only",
    );
    // The session, user, agent and expiry come from the delegated token the
    // agent holds, sent as `authorization: Bearer …`; the issuer verifies it
    // against the identity exchange's keys and revocation list.
    let issued = issuer
        .client()
        .issue(bearer(
            credentials::IssueRequest {
                profile: "hr-read".into(),
                intent: INTENT.into(),
                action: r#"Action::"read""#.into(),
                resource: r#"Employee::"1042""#.into(),
                policy_version: read.policy_version.clone(),
                policy_ids: read.policy_ids.clone(),
                ..Default::default()
            },
            &delegated.access_token,
        ))
        .await?
        .into_inner();
    let lease = issued.lease.context("no lease")?;
    let Some(credentials::credential::Kind::Database(db)) = issued.credential.and_then(|c| c.kind)
    else {
        anyhow::bail!("expected a database credential");
    };
    println!(
        "  lease `{}`: role `{}` (password withheld), valid {} s",
        lease.lease_id,
        db.username,
        lease.granted_ttl.map(|d| d.seconds).unwrap_or_default()
    );

    step("the agent uses it: SELECT works, INSERT is refused by PostgreSQL itself");
    let mut conn = sqlx::PgConnection::connect_with(
        &deps
            .pg
            .options(&db.username, &db.password)
            .database("postgres"),
    )
    .await?;
    let (name,): (String,) = sqlx::query_as("SELECT name FROM hr.employees WHERE id = 1042")
        .fetch_one(&mut conn)
        .await?;
    println!("  SELECT name FROM hr.employees WHERE id = 1042 → `{name}`");
    let insert = sqlx::query("INSERT INTO hr.employees VALUES (9999, 'Mallory', 'sales')")
        .execute(&mut conn)
        .await;
    println!(
        "  INSERT → {}",
        if insert.is_err() {
            "permission denied"
        } else {
            "ALLOWED (unexpected)"
        }
    );
    ensure!(insert.is_err(), "the read-only role could insert");
    drop(conn);

    step("policy: salary change and offboarding");
    let salary = pdp
        .client()
        .check(decide("update_salary", 10))
        .await?
        .into_inner();
    show("update_salary", &salary);
    let offboard = pdp
        .client()
        .check(decide("offboard", 10))
        .await?
        .into_inner();
    show("offboard", &offboard);
    println!("  (the CIBA orchestrator that sends this to alice's phone is the next issue)");
    let late = pdp.client().check(decide("read", 23)).await?.into_inner();
    show("read at 23:00", &late);

    step("end of session: revoke its credentials and the session itself");
    let revoked = issuer
        .client()
        .revoke_session(credentials::RevokeSessionRequest {
            session_id: delegated.sid.clone(),
            reason: "demo finished".into(),
        })
        .await?
        .into_inner();
    println!(
        "  credential issuer: {} lease(s) revoked, {} pending",
        revoked.revoked.len(),
        revoked.pending.len()
    );
    identity
        .client()
        .revoke_session(identity::RevokeSessionRequest {
            sid: delegated.sid.clone(),
            reason: "demo finished".into(),
        })
        .await?;
    let after = identity
        .client()
        .introspect(identity::IntrospectRequest {
            token: delegated.access_token.clone(),
            token_type_hint: String::new(),
        })
        .await?
        .into_inner();
    println!("  delegated token active: {}", after.active);
    let login_again = tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::PgConnection::connect_with(
            &deps
                .pg
                .options(&db.username, &db.password)
                .database("postgres"),
        ),
    )
    .await?;
    println!(
        "  PostgreSQL login with the old credential: {}",
        if login_again.is_err() {
            "refused"
        } else {
            "ACCEPTED (unexpected)"
        }
    );
    ensure!(
        login_again.is_err() && !after.active,
        "something outlived the session"
    );

    step("done: every process started here stops now");
    Ok(())
}
