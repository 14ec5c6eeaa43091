//! Identity exchange replicas on one store (issue 12 §1): the revocation
//! feed pages on a database sequence, so neither a replica's skewed clock
//! nor a commit that lands late hides a revocation from a verifier; and two
//! real replicas on one PostgreSQL sign with the same keys, publish the same
//! JWKS, rotate without downtime and share the single-use assertion store.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tether_identity_exchange::Store;
use tether_integration_tests::eventually;
use tether_integration_tests::identity::{FACADE_AUDIENCE, IdentitySandbox, TestAgent};
use tether_integration_tests::idp::Idp;
use tether_integration_tests::postgres::PgCluster;
use tether_proto::identity::v1::{ExchangeRequest, IntrospectRequest, RevokeSessionRequest};
use tether_runtime::clock::unix_now_ms as unix_ms;
use tether_token::{
    DelegatedTokenVerifier, GrpcRevocationFeed, JwksCache, KeyRing, RevocationCheck as _,
    RevocationList,
};
use tonic::Code;

const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const INTENT: &str = r#"[{"type":"hr_record_access","actions":["read"]}]"#;

/// A throwaway PostgreSQL with a database for the identity exchange; the
/// cluster stops when the first value is dropped.
async fn postgres() -> (PgCluster, String) {
    let pg = PgCluster::start().await.unwrap();
    pg.create_database("identity").await.unwrap();
    let url = pg.admin_url("identity");
    (pg, url)
}

fn builder(
    idp: &Idp,
    agent: &TestAgent,
) -> tether_integration_tests::identity::IdentitySandboxBuilder {
    IdentitySandbox::builder(idp.issuer()).agent(agent, &["hr:read"], &["hr"])
}

async fn alice(idp: &Idp) -> String {
    idp.login("alice", &["openid", "profile", "email", "hr:read"])
        .await
        .unwrap()
        .access_token
}

fn request(subject: &str, assertion: String) -> ExchangeRequest {
    ExchangeRequest {
        subject_token: subject.into(),
        subject_token_type: ACCESS.into(),
        actor_token: assertion,
        actor_token_type: JWT.into(),
        audience: FACADE_AUDIENCE.into(),
        scope: "hr:read".into(),
        requested_token_type: String::new(),
        authorization_details: INTENT.into(),
    }
}

/// A new session at `identity`: its `sid` and delegated token.
async fn session(identity: &IdentitySandbox, agent: &TestAgent, user: &str) -> (String, String) {
    let assertion = agent.assertion(&identity.token_endpoint()).unwrap();
    let minted = identity
        .client()
        .exchange(request(user, assertion))
        .await
        .unwrap()
        .into_inner();
    (minted.sid, minted.access_token)
}

/// One sync of `list` through the feed every verifying service uses.
async fn sync(identity: &IdentitySandbox, list: &RevocationList) {
    list.sync_from(&GrpcRevocationFeed::new(identity.client()))
        .await
        .unwrap();
}

/// A replica whose clock is an hour behind revokes a session after a
/// verifier has synced: the revocation carries a `revoked_at` long before
/// the verifier's last sync, and must still reach it.
async fn a_skewed_replica_cannot_hide_a_revocation(store_url: Option<String>) {
    let idp = Idp::start().await.unwrap();
    let agent = TestAgent::new("hr-assistant").unwrap();
    let mut b = builder(&idp, &agent);
    if let Some(url) = &store_url {
        b = b.store_url(url.clone());
    }
    let identity = b.start().await.unwrap();
    let store_url = store_url.unwrap_or_else(|| tether_store::sqlite_url(&identity.store_path()));
    let user = alice(&idp).await;
    let (early, _) = session(&identity, &agent, &user).await;
    let (skewed, _) = session(&identity, &agent, &user).await;

    let list = RevocationList::new(Duration::from_secs(30));
    identity
        .client()
        .revoke_session(RevokeSessionRequest {
            sid: early.clone(),
            reason: "ended".into(),
        })
        .await
        .unwrap();
    sync(&identity, &list).await;
    assert_eq!(list.is_revoked(&early).await, Ok(true));
    sync(&identity, &list).await;

    // The other replica: the same store, its clock an hour slow.
    let replica = Store::open(&store_url).await.unwrap();
    let stamped = replica
        .revoke(&skewed, "ended on a slow replica", unix_ms() - 3_600_000)
        .await
        .unwrap();
    assert!(matches!(stamped, Some((_, false))), "{stamped:?}");

    sync(&identity, &list).await;
    assert_eq!(
        list.is_revoked(&skewed).await,
        Ok(true),
        "a revocation stamped by a slow clock reaches the verifier"
    );
}

#[tokio::test]
async fn a_skewed_replica_cannot_hide_a_revocation_on_sqlite() {
    a_skewed_replica_cannot_hide_a_revocation(None).await;
}

#[tokio::test]
async fn a_skewed_replica_cannot_hide_a_revocation_on_postgres() {
    let (_pg, url) = postgres().await;
    a_skewed_replica_cannot_hide_a_revocation(Some(url)).await;
}

/// A revocation whose transaction stays open (a replica that stalled
/// between its write and its commit, stamped a minute before it commits)
/// while another revocation goes through and a verifier syncs: once it
/// commits, the verifier's next sync has it.
async fn a_late_commit_cannot_hide_a_revocation(store_url: Option<String>) {
    let idp = Idp::start().await.unwrap();
    let agent = TestAgent::new("hr-assistant").unwrap();
    let mut b = builder(&idp, &agent);
    if let Some(url) = &store_url {
        b = b.store_url(url.clone());
    }
    let identity = b.start().await.unwrap();
    let on_postgres = store_url.is_some();
    let store_url = store_url.unwrap_or_else(|| tether_store::sqlite_url(&identity.store_path()));
    let user = alice(&idp).await;
    let (late, _) = session(&identity, &agent, &user).await;
    let (later, _) = session(&identity, &agent, &user).await;
    let list = RevocationList::new(Duration::from_secs(30));
    sync(&identity, &list).await;

    let stalled = Store::open(&store_url).await.unwrap();
    let held = stalled
        .begin_revocation(&late, "ended by a stalled replica", unix_ms() - 60_000)
        .await
        .unwrap();

    // On PostgreSQL another replica revokes meanwhile (on SQLite, one
    // writer at a time, it would only queue behind the open transaction).
    let other = on_postgres.then(|| {
        let mut client = identity.client();
        let later = later.clone();
        tokio::spawn(async move {
            client
                .revoke_session(RevokeSessionRequest {
                    sid: later,
                    reason: "ended".into(),
                })
                .await
        })
    });
    // The verifier syncs while the first revocation is still uncommitted.
    sync(&identity, &list).await;
    assert_eq!(list.is_revoked(&late).await, Ok(false), "not committed yet");

    assert!(held.commit().await.unwrap().is_some());
    if let Some(other) = other {
        other.await.unwrap().unwrap();
        sync(&identity, &list).await;
        assert_eq!(list.is_revoked(&later).await, Ok(true));
    }
    sync(&identity, &list).await;
    assert_eq!(
        list.is_revoked(&late).await,
        Ok(true),
        "a revocation committed after the verifier synced reaches it"
    );
}

#[tokio::test]
async fn a_late_commit_cannot_hide_a_revocation_on_sqlite() {
    a_late_commit_cannot_hide_a_revocation(None).await;
}

#[tokio::test]
async fn a_late_commit_cannot_hide_a_revocation_on_postgres() {
    let (_pg, url) = postgres().await;
    a_late_commit_cannot_hide_a_revocation(Some(url)).await;
}

/// The JWKS `identity` publishes, by `kid`.
async fn kids(identity: &IdentitySandbox) -> Vec<String> {
    let jwks: Value = identity
        .http()
        .get(format!("https://{}/.well-known/jwks.json", identity.addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut kids: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    kids.sort();
    kids
}

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// A verifier (as the facade holds one) that fetches its keys from
/// `identity` only.
fn verifier_of(
    identity: &IdentitySandbox,
    list: &Arc<RevocationList>,
) -> DelegatedTokenVerifier<JwksCache, Arc<RevocationList>> {
    DelegatedTokenVerifier::new(
        identity.issuer().into(),
        FACADE_AUDIENCE.into(),
        JwksCache::new(
            format!("https://{}/.well-known/jwks.json", identity.addr()),
            identity.http(),
        ),
        Arc::clone(list),
    )
}

async fn active_at(identity: &IdentitySandbox, token: &str) -> bool {
    identity
        .client()
        .introspect(IntrospectRequest {
            token: token.into(),
            token_type_hint: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .active
}

#[tokio::test]
async fn two_replicas_on_one_postgres_share_keys_sessions_and_single_use_assertions() {
    let (_pg, url) = postgres().await;
    let idp = Idp::start().await.unwrap();
    let agent = TestAgent::new("hr-assistant").unwrap();
    // Keys re-read every second; a new key signs two seconds after a
    // replica first sees it (by then every replica publishes it).
    let a = builder(&idp, &agent)
        .replicas(2, 1, 2)
        .store_url(url)
        .start()
        .await
        .unwrap();
    let b = builder(&idp, &agent)
        .replicas(2, 1, 2)
        .replica_of(&a)
        .start()
        .await
        .unwrap();
    assert_eq!(a.issuer(), b.issuer());

    // One key ring, one JWKS.
    let first = kids(&a).await;
    assert_eq!(first.len(), 1);
    assert_eq!(kids(&b).await, first);

    // A token minted by one replica verifies with the other's keys, and
    // its session is known to the other.
    let user = alice(&idp).await;
    let (sid, token_a) = session(&a, &agent, &user).await;
    let list = Arc::new(RevocationList::new(Duration::from_secs(30)));
    sync(&b, &list).await;
    let claims = verifier_of(&b, &list).verify(&token_a).await.unwrap();
    assert_eq!(claims.sid, sid);
    assert!(active_at(&b, &token_a).await);
    let (_, token_b) = session(&b, &agent, &user).await;
    verifier_of(&a, &list).verify(&token_b).await.unwrap();

    // An assertion used at one replica is refused at the other.
    let assertion = agent.assertion(&a.token_endpoint()).unwrap();
    a.client()
        .exchange(request(&user, assertion.clone()))
        .await
        .unwrap();
    let err = b
        .client()
        .exchange(request(&user, assertion))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("already used"), "{}", err.message());

    // A revocation at one replica is in the feed of the other.
    b.client()
        .revoke_session(RevokeSessionRequest {
            sid: sid.clone(),
            reason: "ended".into(),
        })
        .await
        .unwrap();
    sync(&a, &list).await;
    assert_eq!(list.is_revoked(&sid).await, Ok(true));
    assert!(!active_at(&a, &token_a).await);

    // Rotation from outside (a new key file in the shared directory, as
    // an operator's job writes into the shared Secret): both replicas
    // publish it, then both sign with it; tokens signed with the old key
    // keep verifying with either replica's keys.
    let old_kid = first[0].clone();
    let (_, old_token) = session(&a, &agent, &user).await;
    assert_eq!(kid_of(&old_token), old_kid);
    let new_kid = KeyRing::open_dir(a.keys_dir())
        .unwrap()
        .rotate()
        .unwrap()
        .kid()
        .to_owned();
    let both = {
        let mut both = vec![old_kid.clone(), new_kid.clone()];
        both.sort();
        both
    };
    for replica in [&a, &b] {
        eventually(Duration::from_secs(10), || async {
            if kids(replica).await == both {
                Ok(())
            } else {
                Err(())
            }
        })
        .await
        .expect("the new key is published by every replica");
    }
    for replica in [&a, &b] {
        let minted = eventually(Duration::from_secs(15), || async {
            let (_, token) = session(replica, &agent, &user).await;
            if kid_of(&token) == new_kid {
                Ok(token)
            } else {
                Err(())
            }
        })
        .await
        .expect("every replica signs with the new key once it is published everywhere");
        for keys_from in [&a, &b] {
            verifier_of(keys_from, &list).verify(&minted).await.unwrap();
            assert!(active_at(keys_from, &minted).await);
        }
    }
    for keys_from in [&a, &b] {
        verifier_of(keys_from, &list)
            .verify(&old_token)
            .await
            .unwrap();
        assert!(active_at(keys_from, &old_token).await);
    }
}
