//! A credential issued but not delivered is revoked at once: the agent's
//! deadline passes while the credential issuer is between Vault's issuance
//! and its reply (its test-only pause), the facade's handler is dropped,
//! and the credential that arrives afterwards is revoked — the PostgreSQL
//! role is gone long before its TTL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::time::Duration;

use tether_integration_tests::eventually;
use tether_integration_tests::facade::{FacadeStack, bearer, uid};
use tether_proto::facade::v1 as pb;

#[tokio::test]
async fn a_credential_issued_after_the_agent_went_away_is_revoked_at_once() {
    let stack = FacadeStack::builder()
        .issuer_hooks(tether_credential_issuer::TestHooks {
            pause_after_vault_issue_ms: 1_500,
        })
        .start()
        .await
        .unwrap();
    let session = stack.session().await.unwrap();
    let mut request = bearer(
        pb::AcquireCredentialRequest {
            action: uid("Action", "read"),
            resource: uid("Employee", "1042"),
            profile: "hr-read".into(),
            ..Default::default()
        },
        &session.delegated_token,
    );
    request.set_timeout(Duration::from_millis(500));
    let Err(status) = stack.client().acquire_credential(request).await else {
        // Never print the response: it holds a credential.
        panic!("the agent's deadline should pass during issuance");
    };
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{status:?}"
    );

    // The issuer finishes after its pause; the facade revokes what it could
    // not deliver: the lease ends REVOKED and its role is dropped, minutes
    // before its 600 s TTL.
    let registry = stack.issuer.registry().unwrap().clone();
    let sid = session.session_id.clone();
    let leases = eventually(Duration::from_secs(20), || {
        let registry = registry.clone();
        let sid = sid.clone();
        async move {
            let leases = registry
                .leases_of(&sid, 10, 0)
                .await
                .map_err(|e| e.to_string())?;
            if leases.len() == 1
                && leases[0].status == tether_credential_issuer::LeaseStatus::Revoked
            {
                Ok(leases)
            } else {
                Err(format!("{leases:?}"))
            }
        }
    })
    .await
    .unwrap();
    assert!(leases[0].revoked_at.is_some());
    let roles = stack.deps.pg.roles_like("v-").await.unwrap();
    assert!(roles.is_empty(), "the role still exists: {roles:?}");
    let held = stack
        .deps
        .bao
        .leases("database/creds/hr-readonly")
        .await
        .unwrap();
    assert!(held.is_empty(), "Vault still holds {held:?}");

    // The session itself is unharmed: the next request gets a credential.
    let next = stack
        .client()
        .acquire_credential(bearer(
            pb::AcquireCredentialRequest {
                action: uid("Action", "read"),
                resource: uid("Employee", "1042"),
                profile: "hr-read".into(),
                ..Default::default()
            },
            &session.delegated_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.decision(), pb::Decision::Allow);
}
