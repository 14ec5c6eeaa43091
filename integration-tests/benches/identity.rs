//! Identity exchange benchmark (issue 3, section 8; issue 11, section 4).
//!
//! In one run, over loopback: Tether's gRPC `Exchange` (user access token
//! from the real test IdP + a fresh agent assertion each call) sequential
//! p50/p99 and throughput at concurrency 32, with its sessions and replay
//! store on SQLite and on PostgreSQL (default durability), and the same for
//! the IdP's own OAuth `client_credentials` token endpoint (the peer).
//!
//!     integration-tests/run.sh bench
//!
//! Assertions are signed before timing starts (signing is the agent's cost,
//! not the service's). Every call checks that a token came back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use tether_integration_tests::bench::{Caller, Stats, Throughput, sequential, throughput};
use tether_integration_tests::identity::{FACADE_AUDIENCE, IdentitySandbox, TestAgent};
use tether_integration_tests::idp::Idp;
use tether_integration_tests::postgres::PgCluster;
use tether_proto::identity::v1::ExchangeRequest;
use tether_proto::identity::v1::identity_exchange_client::IdentityExchangeClient;
use tether_runtime::client::InternalChannel;

const SEQUENTIAL_WARMUP: usize = 300;
const SEQUENTIAL_ITERATIONS: usize = 3_000;
const CONCURRENCY: usize = 32;
const CHANNELS: usize = 4;
const WARMUP: Duration = Duration::from_secs(1);
const DURATION: Duration = Duration::from_secs(5);
/// Enough pre-signed assertions for every call of the run.
const ASSERTIONS: usize = 100_000;
const INTENT: &str = r#"[{"type":"hr_record_access","actions":["read"]}]"#;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let idp = Idp::start().await?;
    let user = idp
        .login("alice", &["openid", "profile", "hr:read"])
        .await?
        .access_token;

    let sqlite = measure_tether(&idp, &user, None).await?;
    // PostgreSQL with its default durability: every commit is flushed.
    let pg = PgCluster::start_durable().await?;
    pg.create_database("identity").await?;
    let postgres = measure_tether(&idp, &user, Some(pg.admin_url("identity"))).await?;

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()?;
    let peer = |_: usize| PeerCaller {
        http: http.clone(),
        url: format!("{}/token", idp.issuer()),
    };
    let peer_seq = sequential(&mut peer(0), SEQUENTIAL_WARMUP, SEQUENTIAL_ITERATIONS).await?;
    let peer_tput = throughput((0..CONCURRENCY).map(peer).collect(), WARMUP, DURATION).await?;

    print_table(&[
        (
            "Tether `Exchange` (gRPC, mTLS), SQLite",
            &sqlite.0,
            &sqlite.1,
        ),
        (
            "Tether `Exchange` (gRPC, mTLS), PostgreSQL 15 (fsync on)",
            &postgres.0,
            &postgres.1,
        ),
        (
            "IdP `client_credentials` (HTTP, oidc-provider 9.13.3)",
            &peer_seq,
            &peer_tput,
        ),
    ]);
    println!(
        "Tether/peer throughput at c={CONCURRENCY}: SQLite {:.2}x, PostgreSQL {:.2}x",
        sqlite.1.per_second / peer_tput.per_second,
        postgres.1.per_second / peer_tput.per_second,
    );
    Ok(())
}

/// Sequential and c=32 figures of an identity exchange on `store_url`
/// (SQLite in its directory when `None`).
async fn measure_tether(
    idp: &Idp,
    user: &str,
    store_url: Option<String>,
) -> anyhow::Result<(Stats, Throughput)> {
    let agent = TestAgent::new("hr-assistant")?;
    let mut builder = IdentitySandbox::builder(idp.issuer()).agent(&agent, &["hr:read"], &["hr"]);
    if let Some(url) = store_url {
        builder = builder.store_url(url);
    }
    let identity = builder.start().await?;

    eprintln!("pre-signing {ASSERTIONS} agent assertions…");
    let audience = identity.issuer().to_owned();
    let assertions: Vec<String> = (0..ASSERTIONS)
        .map(|_| agent.assertion_valid_for(&audience, 280))
        .collect::<anyhow::Result<_>>()?;
    let pool = Arc::new(Assertions {
        items: assertions,
        next: AtomicUsize::new(0),
    });

    let channels = connect(&identity).await?;
    let template = ExchangeRequest {
        subject_token: user.to_owned(),
        subject_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
        actor_token: String::new(),
        actor_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
        audience: FACADE_AUDIENCE.into(),
        scope: "hr:read".into(),
        requested_token_type: String::new(),
        authorization_details: INTENT.into(),
    };
    let caller = |i: usize| ExchangeCaller {
        client: IdentityExchangeClient::new(channels[i % CHANNELS].clone()),
        template: template.clone(),
        assertions: Arc::clone(&pool),
    };
    let seq = sequential(&mut caller(0), SEQUENTIAL_WARMUP, SEQUENTIAL_ITERATIONS).await?;
    let tput = throughput((0..CONCURRENCY).map(caller).collect(), WARMUP, DURATION).await?;
    Ok((seq, tput))
}

fn print_table(rows: &[(&str, &Stats, &Throughput)]) {
    println!();
    println!(
        "| system | sequential p50 / p99 (µs) | c={CONCURRENCY}: requests/s | c={CONCURRENCY}: p50 / p99 (µs) |"
    );
    println!("|---|---|---|---|");
    for (name, seq, tput) in rows {
        println!(
            "| {name} | {} | {:.0} | {} |",
            seq.p50_p99(),
            tput.per_second,
            tput.latency.p50_p99()
        );
    }
    println!();
}

/// Channels as the agent facade (mTLS, the production path).
async fn connect(identity: &IdentitySandbox) -> anyhow::Result<Vec<InternalChannel>> {
    let clients = identity.pki().clients("agent-facade")?;
    let endpoint = format!("https://{}", identity.addr());
    (0..CHANNELS)
        .map(|_| Ok(clients.grpc(&endpoint, "identity-exchange")?))
        .collect()
}

struct Assertions {
    items: Vec<String>,
    next: AtomicUsize,
}

impl Assertions {
    fn take(&self) -> anyhow::Result<String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.items
            .get(i)
            .cloned()
            .context("ran out of pre-signed assertions; raise ASSERTIONS")
    }
}

struct ExchangeCaller {
    client: IdentityExchangeClient<InternalChannel>,
    template: ExchangeRequest,
    assertions: Arc<Assertions>,
}

impl Caller for ExchangeCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        let mut request = self.template.clone();
        request.actor_token = self.assertions.take()?;
        let response = self.client.exchange(request).await?.into_inner();
        ensure!(!response.access_token.is_empty(), "no token minted");
        Ok(())
    }
}

struct PeerCaller {
    http: reqwest::Client,
    url: String,
}

impl Caller for PeerCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        let response = self
            .http
            .post(&self.url)
            .basic_auth("tether-agent-backend", Some("tether-agent-backend-secret"))
            .form(&[("grant_type", "client_credentials"), ("scope", "hr:read")])
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "peer answered {}",
            response.status()
        );
        let body: serde_json::Value = response.json().await?;
        ensure!(body.get("access_token").is_some(), "peer minted no token");
        Ok(())
    }
}
