//! Credential issuer benchmark (BENCHMARKS.md, "Credential issuer").
//!
//! In one run, against one OpenBao 2.7.2 dev server and one PostgreSQL 15
//! cluster on loopback, with a real identity exchange (and the test IdP)
//! minting the delegated tokens:
//! 1. issuance latency through the issuer (gRPC `Issue` with the agent's
//!    delegated token, its local verification — signature, claims and the
//!    session revocation list — registry write, Vault read, registry update)
//!    against direct OpenBao HTTP issuance of the same role
//!    (`GET /v1/database/creds/hr-readonly`), interleaved call by call so
//!    both see the same server state;
//! 2. the time for one `RevokeSession` call to revoke a session holding 50
//!    leases (every Vault lease revoked and its PostgreSQL role dropped when
//!    it returns).
//!
//! Run: `integration-tests/run.sh bench` (or
//! `cargo bench -p tether-integration-tests --bench issuer`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark binary: a failure aborts the run"
)]

use std::time::{Duration, Instant};

use tether_credential_issuer::{Limits, RevocationConfig};
use tether_integration_tests::issuer::{CredentialDeps, IssuerSandbox, SessionAuthority};
use tether_proto::credentials::v1::{IssueRequest, RevokeSessionRequest};

const WARMUP: usize = 30;
const SAMPLES: usize = 400;
const REVOKE_ROUNDS: usize = 5;
const LEASES_PER_SESSION: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short vector"
    )]
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The session comes from the bearer token the call carries.
fn request() -> IssueRequest {
    IssueRequest {
        profile: "hr-read".into(),
        action: r#"Action::"read""#.into(),
        resource: r#"Employee::"1042""#.into(),
        ..IssueRequest::default()
    }
}

#[tokio::main]
async fn main() {
    // Role default TTL = profile maximum (600 s): one Vault round-trip per
    // issuance, the configuration the README recommends.
    let deps = CredentialDeps::start(600)
        .await
        .expect("starting OpenBao and PostgreSQL (run `integration-tests/run.sh bench`)");
    let sessions = SessionAuthority::start().await.expect(
        "starting the test IdP and the identity exchange (run `integration-tests/run.sh bench`)",
    );
    let issuer = IssuerSandbox::builder(deps.bao.addr(), sessions.identity())
        .limits(Limits {
            max_leases_per_session: 100_000,
        })
        // Production defaults, except the orphan sweep: the direct
        // issuances we compare against live on the managed path and are
        // orphans by definition; sweeping them would load Vault mid-run.
        .revocation(RevocationConfig {
            orphan_sweep: false,
            ..RevocationConfig::default()
        })
        .start()
        .await
        .unwrap();
    let mut client = issuer.client();
    // One session (one delegated token, 15 minutes) for the latency run.
    let session = sessions.session().await.unwrap();

    let mut via_issuer = Vec::with_capacity(SAMPLES);
    let mut direct = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        let t = Instant::now();
        client.issue(session.request(request())).await.unwrap();
        let a = t.elapsed();
        let t = Instant::now();
        deps.bao.issue_direct("hr-readonly").await.unwrap();
        let b = t.elapsed();
        if i >= WARMUP {
            via_issuer.push(a);
            direct.push(b);
        }
    }
    via_issuer.sort();
    direct.sort();

    // Clean up before the revocation rounds.
    client
        .revoke_session(RevokeSessionRequest {
            session_id: session.sid().into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    deps.bao
        .api(
            "PUT",
            "sys/leases/revoke-prefix/database/creds/hr-readonly",
            None,
        )
        .await
        .unwrap();

    let mut revoke_times = Vec::new();
    for _ in 0..REVOKE_ROUNDS {
        let session = sessions.session().await.unwrap();
        for _ in 0..LEASES_PER_SESSION {
            client.issue(session.request(request())).await.unwrap();
        }
        let t = Instant::now();
        let resp = client
            .revoke_session(RevokeSessionRequest {
                session_id: session.sid().into(),
                reason: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        revoke_times.push(t.elapsed());
        assert_eq!(resp.revoked.len(), LEASES_PER_SESSION, "{resp:?}");
        assert!(resp.pending.is_empty());
        assert!(deps.pg.roles_like("v-").await.unwrap().is_empty());
    }
    revoke_times.sort();

    let (i50, i99) = (percentile(&via_issuer, 0.50), percentile(&via_issuer, 0.99));
    let (d50, d99) = (percentile(&direct, 0.50), percentile(&direct, 0.99));
    println!();
    println!("credential issuer, {SAMPLES} issuances each (after {WARMUP} warm-up), interleaved:");
    println!();
    println!("| path | p50 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| issuer (gRPC Issue → token check → registry → OpenBao → registry) | {:.2} ms | {:.2} ms | {:.2} ms |",
        ms(i50),
        ms(i99),
        ms(*via_issuer.last().unwrap())
    );
    println!(
        "| direct OpenBao HTTP (`GET database/creds/hr-readonly`) | {:.2} ms | {:.2} ms | {:.2} ms |",
        ms(d50),
        ms(d99),
        ms(*direct.last().unwrap())
    );
    println!();
    println!(
        "issuer p50 / direct p50 = {:.3} (target ≤ 1.10); overhead p50 = {:.2} ms",
        ms(i50) / ms(d50),
        ms(i50) - ms(d50)
    );
    println!();
    println!(
        "RevokeSession of a {LEASES_PER_SESSION}-lease session ({REVOKE_ROUNDS} rounds): median {:.1} ms, max {:.1} ms (target ≤ 2000 ms)",
        ms(percentile(&revoke_times, 0.5)),
        ms(*revoke_times.last().unwrap())
    );
}
