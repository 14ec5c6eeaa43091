//! What mTLS costs: the same RPC on a reused connection, plaintext and
//! mTLS, measured in the same run with the two alternating in rounds (this
//! machine is shared; absolute times drift, ratios within a run do not).
//!
//! `cargo bench -p tether-integration-tests --bench mtls`

use std::time::Duration;

use anyhow::{Context as _, ensure};
use tether_integration_tests::bench::{Caller, Stats, sequential};
use tether_integration_tests::pdp::{PdpSandbox, hr_context, hr_request};
use tether_proto::policy::v1 as pb;
use tether_proto::policy::v1::policy_decision_client::PolicyDecisionClient;
use tether_runtime::client::InternalChannel;

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
    runtime.block_on(async {
        let (plain, mtls) = pdp_check().await?;
        println!();
        println!("| RPC (sequential, reused connection) | plaintext p50 / p99 (µs) | mTLS p50 / p99 (µs) | p50 ratio |");
        println!("| --- | ---: | ---: | ---: |");
        print_row("PDP `Check` (allowed read)", &plain, &mtls);
        anyhow::Ok(())
    })
}

fn print_row(name: &str, plain: &Stats, mtls: &Stats) {
    println!(
        "| {name} | {} | {} | {:.2}× |",
        plain.p50_p99(),
        mtls.p50_p99(),
        mtls.micros(0.5) / plain.micros(0.5)
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
async fn pdp_check() -> anyhow::Result<(Stats, Stats)> {
    let plain_pdp = PdpSandbox::builder()
        .server(tether_runtime::ServerConfig {
            tls: tether_runtime::TlsConfig::plaintext(),
            ..tether_runtime::ServerConfig::default()
        })
        .watch(false)
        .start()
        .await?;
    let mtls_pdp = PdpSandbox::builder().watch(false).start().await?;
    let request = hr_request("read", &hr_context(10, None));
    let mut callers = [
        CheckCaller {
            client: plain_pdp.client(),
            request: request.clone(),
        },
        CheckCaller {
            client: mtls_pdp.client(),
            request,
        },
    ];
    alternate(&mut callers).await
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
