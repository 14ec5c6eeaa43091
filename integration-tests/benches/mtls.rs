//! What mTLS costs: the same RPC on a reused connection, plaintext and
//! mTLS, measured in the same run with the two alternating in rounds (this
//! machine is shared; absolute times drift, ratios within a run do not).
//!
//! `cargo bench -p tether-integration-tests --bench mtls`
//!
//! 1. PDP `Check`: two real PDPs on the same pack, one plaintext, one mTLS
//!    (the facade's certificate on the client).
//! 2. Credential issuer `Issue` with the agent's delegated token: two
//!    stacks on the same OpenBao and PostgreSQL, one plaintext (identity
//!    exchange and issuer), one mTLS; both verify the token, so the
//!    difference is the transport. The token verification itself (the part
//!    this change added to every `Issue`) is timed on its own, in process,
//!    with the same verifier the issuer uses.

use std::time::Duration;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, ensure};
use tether_credential_issuer::{Limits, RevocationConfig};
use tether_integration_tests::bench::{Caller, Stats, sequential};
use tether_integration_tests::identity::FACADE_AUDIENCE;
use tether_integration_tests::issuer::{
    CredentialDeps, DelegatedSession, IssuerSandbox, SessionAuthority,
};
use tether_integration_tests::pdp::{PdpSandbox, hr_context, hr_request};
use tether_proto::credentials::v1::IssueRequest;
use tether_proto::credentials::v1::credential_issuer_client::CredentialIssuerClient;
use tether_proto::identity::v1::identity_exchange_client::IdentityExchangeClient;
use tether_proto::policy::v1 as pb;
use tether_proto::policy::v1::policy_decision_client::PolicyDecisionClient;
use tether_runtime::client::InternalChannel;
use tether_token::{DelegatedTokenVerifier, GrpcRevocationFeed, JwksCache, RevocationList};

/// Rounds of (plaintext, mTLS); each round measures both.
const ROUNDS: usize = 10;
const WARMUP: usize = 300;
const PER_ROUND: usize = 1_000;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the runtime")?;
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-servers")
        .enable_all()
        .build()
        .context("building the server runtime")?;
    // `cargo bench --bench mtls -- pdp` (or `issuer`) runs one part.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    runtime.block_on(async {
        println!();
        println!(
            "| RPC (sequential, reused connection) | plaintext p50 / p99 (µs) | mTLS p50 / p99 (µs) | p50 ratio | p50 difference (µs) |"
        );
        println!("| --- | ---: | ---: | ---: | ---: |");
        if wanted("pdp") {
            let (check_plain, check_mtls) = pdp_check(&servers).await?;
            print_row("PDP `Check` (allowed read)", &check_plain, &check_mtls);
        }
        if !wanted("issuer") {
            return anyhow::Ok(());
        }
        let (issue_plain, issue_mtls, paired, verify) = issuer_issue().await?;
        print_row(
            "issuer `Issue` (token verified, Vault, registry)",
            &issue_plain,
            &issue_mtls,
        );
        println!();
        println!(
            "`Issue`, median of the paired differences (mTLS − plaintext, calls back to back): {paired:+.0} µs"
        );
        println!(
            "delegated-token verification in process (signature, claims, revocation list): p50 / p99 {} µs",
            verify.p50_p99()
        );
        println!(
            "`Issue` over mTLS with verification vs plaintext without it: {:+.0} µs (paired transport difference {paired:+.0} + verification {:.0})",
            paired + verify.micros(0.5),
            verify.micros(0.5)
        );
        anyhow::Ok(())
    })
}

fn print_row(name: &str, plain: &Stats, mtls: &Stats) {
    println!(
        "| {name} | {} | {} | {:.2}× | {:+.0} |",
        plain.p50_p99(),
        mtls.p50_p99(),
        mtls.micros(0.5) / plain.micros(0.5),
        mtls.micros(0.5) - plain.micros(0.5)
    );
}

struct CheckCaller {
    client: PolicyDecisionClient<InternalChannel>,
    request: pb::CheckRequest,
}

impl Caller for CheckCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        let response = self.client.check(self.request.clone()).await?.into_inner();
        ensure!(
            response.decision() == pb::Decision::Allow,
            "expected ALLOW, got {response:?}"
        );
        Ok(())
    }
}

/// Two real PDPs on the same pack, one plaintext and one mTLS; the facade's
/// certificate on the mTLS client.
async fn pdp_check(servers: &tokio::runtime::Runtime) -> anyhow::Result<(Stats, Stats)> {
    // The PDPs run on their own runtime (as a separate process would), so
    // the client's work does not share their threads.
    let (plain_pdp, mtls_pdp) = servers
        .spawn(async {
            let plain = PdpSandbox::builder()
                .server(tether_runtime::ServerConfig {
                    tls: tether_runtime::TlsConfig::plaintext(),
                    ..tether_runtime::ServerConfig::default()
                })
                .watch(false)
                .start()
                .await?;
            let mtls = PdpSandbox::builder().watch(false).start().await?;
            anyhow::Ok((plain, mtls))
        })
        .await??;
    // Channels made here are driven by the client runtime.
    let plain_channel =
        tether_runtime::client::Clients::new(&tether_runtime::TlsConfig::plaintext())?
            .grpc(&format!("http://{}", plain_pdp.addr()), "policy-decision")?;
    let mtls_channel =
        mtls_pdp
            .pki()
            .channel("agent-facade", mtls_pdp.addr(), "policy-decision")?;
    let request = hr_request("read", &hr_context(10, None));
    let mut callers = [
        CheckCaller {
            client: PolicyDecisionClient::new(plain_channel),
            request: request.clone(),
        },
        CheckCaller {
            client: PolicyDecisionClient::new(mtls_channel),
            request,
        },
    ];
    let measured = alternate(&mut callers).await;
    drop(callers);
    // Stop the servers on their own runtime.
    servers.spawn(async move {
        let _ = plain_pdp.shutdown().await;
        let _ = mtls_pdp.shutdown().await;
    });
    measured
}

struct IssueCaller {
    client: CredentialIssuerClient<InternalChannel>,
    session: DelegatedSession,
}

impl Caller for IssueCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        let request = IssueRequest {
            profile: "hr-read".into(),
            action: r#"Action::"read""#.into(),
            resource: r#"Employee::"1042""#.into(),
            ..IssueRequest::default()
        };
        let response = self.client.issue(self.session.request(request)).await?;
        ensure!(response.into_inner().credential.is_some(), "no credential");
        Ok(())
    }
}

/// `Issue` pairs: each call is a Vault issuance (milliseconds).
const ISSUE_SAMPLES: usize = 600;
const VERIFY_ITERATIONS: usize = 5_000;

/// (plaintext, mTLS, median paired difference in µs, verification alone).
async fn issuer_issue() -> anyhow::Result<(Stats, Stats, f64, Stats)> {
    let (deps, plain_auth, mtls_auth) = tokio::join!(
        CredentialDeps::start(600),
        SessionAuthority::start_with(|builder| builder.plaintext()),
        SessionAuthority::start(),
    );
    let (deps, plain_auth, mtls_auth) = (deps?, plain_auth?, mtls_auth?);
    let start = |auth: &SessionAuthority, server: tether_runtime::ServerConfig| {
        IssuerSandbox::builder(deps.bao.addr(), auth.identity())
            .server(server)
            .limits(Limits {
                max_leases_per_session: 100_000,
            })
            .revocation(RevocationConfig {
                orphan_sweep: false,
                ..RevocationConfig::default()
            })
            .start()
    };
    let plain_issuer = start(
        &plain_auth,
        tether_runtime::ServerConfig {
            tls: tether_runtime::TlsConfig::plaintext(),
            ..tether_runtime::ServerConfig::default()
        },
    )
    .await?;
    let mtls_issuer = start(&mtls_auth, tether_runtime::ServerConfig::default()).await?;
    let mut callers = [
        IssueCaller {
            client: plain_issuer.client(),
            session: plain_auth.session().await?,
        },
        IssueCaller {
            client: mtls_issuer.client(),
            session: mtls_auth.session().await?,
        },
    ];
    for caller in &mut callers {
        sequential(caller, 20, 0).await?;
    }
    // Call by call, alternating which goes first, so both see the same
    // Vault and PostgreSQL state; the paired difference cancels their noise.
    let mut totals = [Stats::new()?, Stats::new()?];
    let mut differences = Vec::with_capacity(ISSUE_SAMPLES);
    for i in 0..ISSUE_SAMPLES {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut took = [Duration::ZERO; 2];
        for k in order {
            let start = Instant::now();
            callers[k].call().await?;
            took[k] = start.elapsed();
            totals[k].record(took[k])?;
        }
        differences.push(took[1].as_secs_f64() * 1e6 - took[0].as_secs_f64() * 1e6);
    }
    differences.sort_by(f64::total_cmp);
    let paired = differences[differences.len() / 2];
    let verify = verify_in_process(&mtls_auth).await?;
    let [plain, mtls] = totals;
    Ok((plain, mtls, paired, verify))
}

/// The verifier the issuer builds (`services/credential-issuer/src/sessions.rs`):
/// JWKS from the exchange, revocation list synced from its feed.
async fn verify_in_process(auth: &SessionAuthority) -> anyhow::Result<Stats> {
    let identity = auth.identity();
    let clients = identity.pki().clients("credential-issuer")?;
    let keys = JwksCache::new(
        format!("{}/.well-known/jwks.json", identity.issuer()),
        clients.https("identity-exchange")?,
    );
    let list = Arc::new(RevocationList::new(Duration::from_secs(60)));
    let feed = GrpcRevocationFeed::new(IdentityExchangeClient::new(
        clients.grpc(identity.issuer(), "identity-exchange")?,
    ));
    list.sync_from(&feed).await?;
    let verifier = DelegatedTokenVerifier::new(
        identity.issuer().to_owned(),
        FACADE_AUDIENCE.into(),
        keys,
        list,
    );
    let session = auth.session().await?;
    let mut stats = Stats::new()?;
    for i in 0..VERIFY_ITERATIONS + 500 {
        let start = Instant::now();
        verifier.verify(&session.token).await?;
        if i >= 500 {
            stats.record(start.elapsed())?;
        }
    }
    Ok(stats)
}

/// Runs both callers in alternating rounds and merges each one's rounds.
async fn alternate<C: Caller>(callers: &mut [C; 2]) -> anyhow::Result<(Stats, Stats)> {
    let mut totals = [Stats::new()?, Stats::new()?];
    for caller in callers.iter_mut() {
        sequential(caller, WARMUP, 0).await?;
    }
    for round in 0..ROUNDS {
        // Swap the order every round so neither always goes first.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let stats = sequential(&mut callers[i], 0, PER_ROUND).await?;
            totals[i].merge(&stats)?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let [plain, mtls] = totals;
    Ok((plain, mtls))
}
