//! The identity exchange's own instrument: token exchanges by outcome, over
//! HTTP `/token` and gRPC `Exchange` alike (the RPC counts and durations
//! come from [`tether_runtime::metrics::RpcMetricsLayer`]).

use std::sync::LazyLock;

use tether_runtime::metrics::{Counter, KeyValue};

use crate::error::ExchangeError;

static EXCHANGES: LazyLock<Counter<u64>> = LazyLock::new(|| {
    tether_runtime::metrics::meter()
        .u64_counter("tether.identity.exchanges")
        .with_description(
            "Token exchanges, by outcome: minted, or the RFC error code of the refusal.",
        )
        .with_unit("{exchange}")
        .build()
});

/// Counts one exchange: `minted`, or the refusal's RFC 6749/8693 code (a
/// fixed set: `invalid_grant`, `invalid_client`, `temporarily_unavailable`…),
/// never anything the caller sent.
pub(crate) fn exchange<T>(result: &Result<T, ExchangeError>) {
    match result {
        Ok(_) => count("minted"),
        Err(e) => refused(e),
    }
}

/// Counts one refused exchange.
pub(crate) fn refused(err: &ExchangeError) {
    count(err.rfc_code());
}

fn count(outcome: &'static str) {
    EXCHANGES.add(1, &[KeyValue::new("outcome", outcome)]);
}
