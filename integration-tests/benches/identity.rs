//! Identity exchange benchmark (issue 3, section 8).
//!
//! In one run, over loopback: Tether's gRPC `Exchange` (user access token
//! from the real test IdP + a fresh agent assertion each call) sequential
//! p50/p99 and throughput at concurrency 32, and the same for the IdP's own
//! OAuth `client_credentials` token endpoint (the peer).
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
const ASSERTIONS: usize = 60_000;
const INTENT: &str = r#"[{"type":"hr_record_access","actions":["read"]}]"#;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let idp = Idp::start().await?;
    let agent = TestAgent::new("hr-assistant")?;
    let identity = IdentitySandbox::builder(idp.issuer())
        .agent(&agent, &["hr:read"], &["hr"])
        .start()
        .await?;
    let user = idp
        .login("alice", &["openid", "profile", "hr:read"])
        .await?
        .access_token;

    eprintln!("pre-signing {ASSERTIONS} agent assertions…");
    let endpoint = identity.token_endpoint();
    let assertions: Vec<String> = (0..ASSERTIONS)
        .map(|_| agent.assertion_valid_for(&endpoint, 280))
        .collect::<anyhow::Result<_>>()?;
    let pool = Arc::new(Assertions {
        items: assertions,
        next: AtomicUsize::new(0),
    });

    let channels = connect(&identity).await?;
    let template = ExchangeRequest {
        subject_token: user,
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
    let tether_seq = sequential(&mut caller(0), SEQUENTIAL_WARMUP, SEQUENTIAL_ITERATIONS).await?;
    let tether_tput = throughput((0..CONCURRENCY).map(caller).collect(), WARMUP, DURATION).await?;

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()?;
    let peer = |_: usize| PeerCaller {
        http: http.clone(),
        url: format!("{}/token", idp.issuer()),
    };
    let peer_seq = sequential(&mut peer(0), SEQUENTIAL_WARMUP, SEQUENTIAL_ITERATIONS).await?;
    let peer_tput = throughput((0..CONCURRENCY).map(peer).collect(), WARMUP, DURATION).await?;

    print_table(&tether_seq, &tether_tput, &peer_seq, &peer_tput);
    Ok(())
}

fn print_table(
    tether_seq: &Stats,
    tether_tput: &Throughput,
    peer_seq: &Stats,
    peer_tput: &Throughput,
) {
    println!();
    println!(
        "| system | sequential p50 / p99 (µs) | c={CONCURRENCY}: requests/s | c={CONCURRENCY}: p50 / p99 (µs) |"
    );
    println!("|---|---|---|---|");
    println!(
        "| Tether `Exchange` (gRPC) | {} | {:.0} | {} |",
        tether_seq.p50_p99(),
        tether_tput.per_second,
        tether_tput.latency.p50_p99()
    );
    println!(
        "| IdP `client_credentials` (HTTP, oidc-provider 9.13.3) | {} | {:.0} | {} |",
        peer_seq.p50_p99(),
        peer_tput.per_second,
        peer_tput.latency.p50_p99()
    );
    println!();
    println!(
        "Tether/peer throughput: {:.1}x; Tether sequential p99: {:.2} ms",
        tether_tput.per_second / peer_tput.per_second,
        tether_seq.micros(0.99) / 1000.0
    );
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
