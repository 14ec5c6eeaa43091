//! Capturing every log line and span of a test process at TRACE, as JSON,
//! to search it for secrets.

use std::sync::{Arc, Mutex, PoisonError};

/// What the process logged since [`capture_trace`].
#[derive(Debug, Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

/// Installs the process-wide subscriber: JSON, TRACE, with the current span
/// and the span list (a thread-local one misses events whose call sites
/// other threads registered first). Call once per test process (nextest
/// runs each test in its own).
pub fn capture_trace() -> LogCapture {
    let capture = LogCapture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_current_span(true)
        .with_span_list(true)
        .with_writer(move || writer.clone())
        .init();
    capture
}

/// Installs the process-wide subscriber with the services' own text format
/// ([`tether_runtime::telemetry::text_layer`], what `TETHER_LOG_FORMAT`
/// unset gives), at TRACE, without terminal colours. Call once per test
/// process.
pub fn capture_text() -> LogCapture {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let capture = LogCapture::default();
    let writer = capture.clone();
    tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::TRACE)
        .with(tether_runtime::telemetry::text_layer(
            move || writer.clone(),
            false,
        ))
        .init();
    capture
}
