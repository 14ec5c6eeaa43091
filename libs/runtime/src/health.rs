//! Readiness: what gRPC health reports, from the service's own checks.
//!
//! A service registers the checks that decide whether it can do its job
//! (the issuer: "logged in to Vault"; the PDP: "a policy set is loaded";
//! the identity exchange: "each IdP's keys are fresh enough") and updates
//! them from where it learns the answer. [`crate::server`] reports SERVING
//! for the service's names and the empty name only while every check is ok
//! and the server is not draining, so Kubernetes stops routing to a replica
//! that would only answer UNAVAILABLE, and routes to it again once it can.
//!
//! Draining is one-way: after SIGTERM/SIGINT (or the server's own shutdown)
//! health stays NOT_SERVING whatever the checks say.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use tokio::sync::watch;

/// The checks of one service, and whether it is draining.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Check name → ok.
    pub checks: BTreeMap<String, bool>,
    /// Shutdown has begun: NOT_SERVING for good.
    pub draining: bool,
}

impl State {
    /// SERVING: not draining and every registered check ok (no checks: ok).
    pub fn serving(&self) -> bool {
        !self.draining && self.checks.values().all(|ok| *ok)
    }
}

/// A cloneable handle to one service's readiness. Every clone updates the
/// same state.
#[derive(Debug, Clone)]
pub struct Readiness {
    state: Arc<watch::Sender<State>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// No checks yet: SERVING until one is registered not ok.
    pub fn new() -> Self {
        Self {
            state: Arc::new(watch::Sender::new(State::default())),
        }
    }

    /// Registers `check` (on first use) and sets whether it is ok. A change
    /// is logged: at WARN when a check fails, at INFO when it recovers.
    /// Check names come from code or configuration, never from a caller.
    pub fn set(&self, check: &str, ok: bool) {
        self.state.send_if_modified(|state| {
            let before = state.checks.insert(check.to_owned(), ok);
            if before == Some(ok) {
                return false;
            }
            if ok {
                tracing::info!(check, "readiness check ok");
            } else {
                tracing::warn!(check, "readiness check failing; health reports NOT_SERVING");
            }
            true
        });
    }

    /// Whether health reports SERVING now.
    pub fn is_serving(&self) -> bool {
        self.state.borrow().serving()
    }

    /// The current checks and draining flag.
    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Marks the service draining: NOT_SERVING from now on.
    pub fn drain(&self) {
        self.state.send_if_modified(|state| {
            let changed = !state.draining;
            state.draining = true;
            changed
        });
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }
}

/// Set once the process received SIGTERM/SIGINT ([`crate::process`]):
/// every server in the process reports NOT_SERVING from that moment, while
/// it still accepts and serves during `server.shutdown_delay_secs`.
static PROCESS_DRAINING: LazyLock<watch::Sender<bool>> =
    LazyLock::new(|| watch::Sender::new(false));

/// Marks the whole process draining (called on SIGTERM/SIGINT).
pub(crate) fn begin_process_drain() {
    PROCESS_DRAINING.send_replace(true);
}

pub(crate) fn process_draining() -> watch::Receiver<bool> {
    PROCESS_DRAINING.subscribe()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_only_while_every_check_is_ok_and_not_draining() {
        let readiness = Readiness::new();
        assert!(readiness.is_serving(), "no checks: serving");
        readiness.set("vault-login", false);
        readiness.set("policy-set", true);
        assert!(!readiness.is_serving(), "one check failing");
        let clone = readiness.clone();
        clone.set("vault-login", true);
        assert!(readiness.is_serving(), "a clone updates the same state");
        readiness.set("policy-set", false);
        assert!(!readiness.is_serving());
        readiness.set("policy-set", true);
        readiness.drain();
        assert!(!readiness.is_serving(), "draining wins over ok checks");
        readiness.set("vault-login", true);
        assert!(!readiness.is_serving(), "draining is one-way");
        assert_eq!(readiness.state().checks.len(), 2);
    }

    #[tokio::test]
    async fn subscribers_see_changes_but_not_repeats() {
        let readiness = Readiness::new();
        let mut rx = readiness.subscribe();
        rx.borrow_and_update();
        readiness.set("a", true);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        readiness.set("a", true);
        assert!(
            !rx.has_changed().unwrap(),
            "an unchanged value wakes no one"
        );
        readiness.set("a", false);
        assert!(rx.has_changed().unwrap());
        assert!(!rx.borrow_and_update().serving());
    }
}
