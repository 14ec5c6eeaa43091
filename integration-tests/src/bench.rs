//! Measurement helpers shared by the bench binaries: latency histograms,
//! sequential runs and fixed-duration concurrent runs.

use std::future::Future;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Latencies in nanoseconds; reported in microseconds.
#[derive(Debug, Clone)]
pub struct Stats(Histogram<u64>);

impl Stats {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self(Histogram::new_with_bounds(1, 60_000_000_000, 3)?))
    }

    pub fn record(&mut self, elapsed: Duration) -> anyhow::Result<()> {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.0.record(nanos.max(1))?;
        Ok(())
    }

    pub fn merge(&mut self, other: &Self) -> anyhow::Result<()> {
        self.0.add(&other.0)?;
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn micros(&self, quantile: f64) -> f64 {
        self.0.value_at_quantile(quantile) as f64 / 1_000.0
    }

    pub fn p50_p99(&self) -> String {
        format!("{:.1} / {:.1}", self.micros(0.50), self.micros(0.99))
    }
}

/// One client of the system under test; `call` makes one request and
/// fails if the answer is not the expected one.
pub trait Caller: Send + 'static {
    fn call(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Requests per second and their latencies at a fixed concurrency.
#[derive(Debug)]
pub struct Throughput {
    pub per_second: f64,
    pub latency: Stats,
}

/// One call at a time: `warmup` unmeasured, then `iterations` measured.
pub async fn sequential(
    caller: &mut impl Caller,
    warmup: usize,
    iterations: usize,
) -> anyhow::Result<Stats> {
    for _ in 0..warmup {
        caller.call().await?;
    }
    let mut stats = Stats::new()?;
    for _ in 0..iterations {
        let start = Instant::now();
        caller.call().await?;
        stats.record(start.elapsed())?;
    }
    Ok(stats)
}

/// `callers.len()` concurrent callers for `duration`, after a warm-up of
/// the same shape.
pub async fn throughput<C: Caller>(
    callers: Vec<C>,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Throughput> {
    let callers = run_for(callers, warmup).await?.0;
    let started = Instant::now();
    let (_, latency) = run_for(callers, duration).await?;
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Throughput {
        per_second: latency.count() as f64 / elapsed,
        latency,
    })
}

async fn run_for<C: Caller>(
    callers: Vec<C>,
    duration: Duration,
) -> anyhow::Result<(Vec<C>, Stats)> {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = callers
        .into_iter()
        .map(|mut caller| {
            tokio::spawn(async move {
                let mut stats = Stats::new()?;
                while Instant::now() < deadline {
                    let start = Instant::now();
                    caller.call().await?;
                    stats.record(start.elapsed())?;
                }
                anyhow::Ok((caller, stats))
            })
        })
        .collect();
    let mut callers = Vec::with_capacity(tasks.len());
    let mut total = Stats::new()?;
    for task in tasks {
        let (caller, stats) = task.await??;
        total.merge(&stats)?;
        callers.push(caller);
    }
    Ok((callers, total))
}

/// An agent asking `Authorize` for an allowed read (employee 1042) with its
/// session's token; every answer must be ALLOW, so an error path is never
/// what is measured.
#[derive(Clone)]
pub struct AuthorizeCaller {
    pub client: tether_proto::facade::v1::agent_gateway_client::AgentGatewayClient<
        tether_runtime::client::InternalChannel,
    >,
    pub token: String,
}

/// Never shows the token.
impl std::fmt::Debug for AuthorizeCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizeCaller").finish_non_exhaustive()
    }
}

impl AuthorizeCaller {
    pub async fn authorize(
        &mut self,
    ) -> anyhow::Result<tether_proto::facade::v1::AuthorizeResponse> {
        use tether_proto::facade::v1 as pb;
        let request = pb::AuthorizeRequest {
            action: crate::facade::uid("Action", "read"),
            resource: crate::facade::uid("Employee", "1042"),
            context_json: String::new(),
        };
        let response = self
            .client
            .authorize(crate::facade::bearer(request, &self.token))
            .await?
            .into_inner();
        anyhow::ensure!(
            response.decision() == pb::Decision::Allow,
            "expected ALLOW, got {response:?}"
        );
        Ok(response)
    }
}

impl Caller for AuthorizeCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        self.authorize().await.map(drop)
    }
}
