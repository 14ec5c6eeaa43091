//! mTLS between the services, with real certificates and real servers: who
//! may call what, what happens without a certificate, with an expired one,
//! one from another CA, a plaintext client, and a rotation on disk.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::future::BoxFuture;
use tether_integration_tests::eventually;
use tether_integration_tests::issuer::SessionAuthority;
use tether_integration_tests::pdp::{PdpSandbox, SERVICE as PDP};
use tether_integration_tests::pki::{TRUST_DOMAIN, TestPki};
use tether_proto::credentials::v1::ListLeasesRequest;
use tether_proto::credentials::v1::credential_issuer_client::CredentialIssuerClient;
use tether_proto::identity::v1 as id;
use tether_proto::identity::v1::identity_exchange_client::IdentityExchangeClient;
use tether_proto::policy::v1 as pb;
use tether_proto::policy::v1::policy_decision_client::PolicyDecisionClient;
use tether_runtime::TlsConfig;
use tether_runtime::client::{Clients, InternalChannel};
use tether_runtime::dev_pki::{DevCa, Validity};
use tonic::Code;

fn policy_set() -> pb::GetPolicySetRequest {
    pb::GetPolicySetRequest {}
}

fn refused() -> (u64, u64, u64) {
    tether_runtime::authz::METRICS.snapshot()
}

#[tokio::test]
async fn pdp_serves_only_allowed_identities_over_mtls() {
    let pdp = PdpSandbox::builder().start().await.unwrap();
    let pki = pdp.pki().clone();

    // The facade (the PDP's normal caller) and the operators' CLI identity.
    for identity in ["agent-facade", "admin"] {
        let version = pdp
            .client_as(identity)
            .unwrap()
            .get_policy_set(policy_set())
            .await
            .unwrap_or_else(|e| panic!("{identity}: {e:?}"))
            .into_inner()
            .version;
        assert!(version.starts_with("sha256:"), "{version}");
    }

    // Trusted, but not allowed: another service of the same trust domain.
    let before = refused();
    for identity in [
        "credential-issuer",
        "ciba-orchestrator",
        "identity-exchange",
    ] {
        let err = pdp
            .client_as(identity)
            .unwrap()
            .get_policy_set(policy_set())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{identity}: {err:?}");
        assert!(err.message().contains(identity), "{}", err.message());
    }
    // A valid certificate of the right CA naming the facade's path in
    // another trust domain is another identity.
    let foreign = "spiffe://other.example/tether/agent-facade";
    let err = pdp
        .client_as(foreign)
        .unwrap()
        .get_policy_set(policy_set())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(refused().1, before.1 + 4);

    // No client certificate: UNAUTHENTICATED, but health still answers.
    let anonymous = pki.anonymous_channel(pdp.addr()).unwrap();
    let err = PolicyDecisionClient::new(anonymous.clone())
        .get_policy_set(policy_set())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(refused().0, before.0 + 1);
    let health = tonic_health::pb::health_client::HealthClient::new(anonymous)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tether.policy.v1.PolicyDecision".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

/// One allowed RPC of a service, made on `channel`.
type Probe = fn(InternalChannel) -> BoxFuture<'static, Result<(), tonic::Status>>;

/// A running service to hold to the same transport rules.
struct Target<'a> {
    pki: &'a TestPki,
    addr: SocketAddr,
    /// Its service name (the SPIFFE ID path its clients expect).
    service: &'static str,
    /// An identity allowed to make `probe`.
    caller: &'static str,
    probe: Probe,
}

impl Target<'_> {
    fn channel(&self, tls: &TlsConfig) -> InternalChannel {
        Clients::new(tls)
            .unwrap()
            .grpc(&format!("https://{}", self.addr), self.service)
            .unwrap()
    }

    async fn call(&self, tls: &TlsConfig) -> Result<(), tonic::Status> {
        (self.probe)(self.channel(tls)).await
    }
}

/// Every transport rule, on one running service: the allowed caller gets
/// in; an expired certificate, one from another CA and a plaintext client
/// never reach a handler; no certificate is UNAUTHENTICATED; a client that
/// meant another service refuses this one; and a certificate rotation on
/// disk is picked up without a restart or a dropped connection.
async fn check_transport(target: Target<'_>) {
    let Target {
        pki,
        addr,
        service,
        caller,
        probe,
    } = &target;
    let before = refused();

    // The allowed caller.
    let allowed = pki.tls(caller).unwrap();
    let kept = target.channel(&allowed);
    probe(kept.clone())
        .await
        .unwrap_or_else(|e| panic!("{service}: {e:?}"));

    // An expired certificate from the right CA.
    let dir = tempfile::tempdir().unwrap();
    let expired = pki
        .ca()
        .write_with(dir.path(), caller, Validity::Expired)
        .unwrap();
    let err = target.call(&expired).await.unwrap_err();
    assert!(handshake_refused(&err), "{service}: {err:?}");

    // The right identity from another CA (the client itself trusts the
    // real CA, so only the server can refuse).
    let other = DevCa::new(TRUST_DOMAIN).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let mut foreign = other.write(other_dir.path(), caller).unwrap();
    foreign.ca_file = Some(pki.ca_file());
    let err = target.call(&foreign).await.unwrap_err();
    assert!(handshake_refused(&err), "{service}: {err:?}");
    assert_eq!(
        refused().2,
        before.2 + 2,
        "{service}: both handshakes counted"
    );

    // No client certificate at all.
    let err = probe(pki.anonymous_channel(*addr).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{service}: {err:?}");
    assert_eq!(refused().0, before.0 + 1);

    // A plaintext client against the TLS server.
    let plain = Clients::new(&TlsConfig::plaintext())
        .unwrap()
        .grpc(&format!("http://{addr}"), service)
        .unwrap();
    let err = probe(plain).await.unwrap_err();
    assert!(handshake_refused(&err), "{service}: {err:?}");

    // A client refuses a server that is not the service it meant to call,
    // and says which scheme it needs.
    let clients = Clients::new(&allowed).unwrap();
    let wrong_peer = clients
        .grpc(&format!("https://{addr}"), "not-this-service")
        .unwrap();
    let err = probe(wrong_peer).await.unwrap_err();
    assert!(handshake_refused(&err), "{service}: {err:?}");
    let err = clients
        .grpc(&format!("http://{addr}"), service)
        .unwrap_err();
    assert!(err.to_string().contains("https://"), "{err}");

    // The operator rotates to a new CA: cert-manager rewrites the
    // service's certificate, key and bundle in place.
    let new_ca = DevCa::new(TRUST_DOMAIN).unwrap();
    let server_files = pki.paths(service);
    let rotated_dir = tempfile::tempdir().unwrap();
    let rotated = new_ca.write(rotated_dir.path(), service).unwrap();
    for (from, to) in [
        (&rotated.cert_file, &server_files.cert_file),
        (&rotated.key_file, &server_files.key_file),
        (&rotated.ca_file, &server_files.ca_file),
    ] {
        let (from, to) = (from.clone().unwrap(), to.clone().unwrap());
        let tmp = to.with_extension("tmp");
        std::fs::copy(&from, &tmp).unwrap();
        std::fs::rename(&tmp, &to).unwrap();
    }
    // A caller with the new CA's certificate gets in once the server has
    // reloaded...
    let client_dir = tempfile::tempdir().unwrap();
    let new_client = new_ca.write(client_dir.path(), caller).unwrap();
    eventually(Duration::from_secs(10), || target.call(&new_client))
        .await
        .unwrap_or_else(|e| panic!("{service}: {e:?}"));
    // ... a new connection with the old CA's certificate does not ...
    let old_dir = tempfile::tempdir().unwrap();
    let old_client = pki.ca().write(old_dir.path(), caller).unwrap();
    assert!(target.call(&old_client).await.is_err(), "{service}");
    // ... and the connection made before the rotation was not dropped.
    probe(kept)
        .await
        .unwrap_or_else(|e| panic!("{service}: {e:?}"));
}

/// How a refused TLS handshake reaches a gRPC caller (TLS 1.3 clients
/// learn of a rejected certificate on their first read).
fn handshake_refused(err: &tonic::Status) -> bool {
    matches!(
        err.code(),
        Code::Unavailable | Code::Unknown | Code::Internal
    )
}

#[tokio::test]
async fn pdp_transport_rules() {
    let pdp = PdpSandbox::builder().start().await.unwrap();
    check_transport(Target {
        pki: pdp.pki(),
        addr: pdp.addr(),
        service: PDP,
        caller: "agent-facade",
        probe: |channel| {
            Box::pin(async move {
                PolicyDecisionClient::new(channel)
                    .get_policy_set(policy_set())
                    .await
                    .map(drop)
            })
        },
    })
    .await;
    pdp.shutdown().await.unwrap();
}

#[tokio::test]
async fn identity_exchange_transport_rules() {
    use tether_integration_tests::identity::SERVICE as IDENTITY;
    let auth = SessionAuthority::start().await.unwrap();
    check_transport(Target {
        pki: auth.identity().pki(),
        addr: auth.identity().addr(),
        service: IDENTITY,
        caller: "credential-issuer",
        probe: |channel| {
            Box::pin(async move {
                IdentityExchangeClient::new(channel)
                    .list_revoked_sessions(id::ListRevokedSessionsRequest::default())
                    .await
                    .map(drop)
            })
        },
    })
    .await;
}

#[tokio::test]
async fn credential_issuer_transport_rules() {
    use tether_integration_tests::issuer::{CredentialDeps, IssuerSandbox, SERVICE as ISSUER};
    let (deps, auth) = tokio::join!(CredentialDeps::start(600), SessionAuthority::start());
    let (deps, auth) = (deps.unwrap(), auth.unwrap());
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .start()
        .await
        .unwrap();
    check_transport(Target {
        pki: auth.identity().pki(),
        addr: issuer.addr(),
        service: ISSUER,
        caller: "agent-facade",
        probe: |channel| {
            Box::pin(async move {
                CredentialIssuerClient::new(channel)
                    .list_leases(ListLeasesRequest {
                        session_id: "s-transport".into(),
                        page_size: 0,
                        page_token: String::new(),
                    })
                    .await
                    .map(drop)
            })
        },
    })
    .await;
}

#[tokio::test]
async fn identity_exchange_serves_each_rpc_to_its_callers_only() {
    use tether_integration_tests::identity::SERVICE as IDENTITY;

    let auth = SessionAuthority::start().await.unwrap();
    let identity = auth.identity();
    let session = auth.session().await.unwrap();
    let introspect = |token: &str| id::IntrospectRequest {
        token: token.into(),
        token_type_hint: String::new(),
    };
    let revoked = id::ListRevokedSessionsRequest {
        since_unix_ms: 0,
        page_size: 0,
        after_sid: String::new(),
        after_sequence: 0,
    };

    // Every Tether service reads the revocation feed; operators do not.
    for caller in [
        "agent-facade",
        "credential-issuer",
        "ciba-orchestrator",
        "policy-decision",
    ] {
        identity
            .client_as(caller)
            .unwrap()
            .list_revoked_sessions(revoked.clone())
            .await
            .unwrap_or_else(|e| panic!("{caller}: {e:?}"));
    }
    let err = identity
        .client_as("admin")
        .unwrap()
        .list_revoked_sessions(revoked.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Ending a session: the facade and operators, nobody else; a refused
    // call changes nothing.
    let err = identity
        .client_as("credential-issuer")
        .unwrap()
        .revoke_session(id::RevokeSessionRequest {
            sid: session.sid().into(),
            reason: "attack".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err =
        IdentityExchangeClient::new(identity.pki().anonymous_channel(identity.addr()).unwrap())
            .revoke_session(id::RevokeSessionRequest {
                sid: session.sid().into(),
                reason: "attack".into(),
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = identity
        .client_as("policy-decision")
        .unwrap()
        .introspect(introspect(&session.token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let still = identity
        .client_as("admin")
        .unwrap()
        .introspect(introspect(&session.token))
        .await
        .unwrap()
        .into_inner();
    assert!(still.active, "a refused revocation changed nothing");

    // RFC 8705 `tls_client_auth` at the HTTP endpoints: the facade's
    // certificate may introspect any token; another service's may not.
    let url = format!("{}/introspect", identity.issuer());
    let facade = identity.pki().clients("agent-facade").unwrap();
    let body: serde_json::Value = facade
        .https(IDENTITY)
        .unwrap()
        .post(&url)
        .form(&[("token", session.token.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["active"], true, "{body}");
    assert_eq!(body["sid"], session.sid(), "{body}");
    let refused = identity
        .pki()
        .clients("credential-issuer")
        .unwrap()
        .https(IDENTITY)
        .unwrap()
        .post(&url)
        .form(&[("token", session.token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client", "{body}");

    // The facade's certificate ends the session; the token is then dead.
    identity
        .client()
        .revoke_session(id::RevokeSessionRequest {
            sid: session.sid().into(),
            reason: "session ended".into(),
        })
        .await
        .unwrap();
    let after = identity
        .client_as("admin")
        .unwrap()
        .introspect(introspect(&session.token))
        .await
        .unwrap()
        .into_inner();
    assert!(!after.active);
}
