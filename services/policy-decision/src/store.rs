//! The serving policy pack, swapped atomically on reload.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use tether_policy::{LoadError, PolicyPack};
use tether_runtime::Readiness;
use tether_runtime::clock::unix_now;

/// The readiness check the store reports: a policy set is loaded.
const READINESS_CHECK: &str = "policy-set";

/// Result of one reload attempt.
#[derive(Debug)]
pub enum LoadOutcome {
    /// A new version is serving.
    Loaded(String),
    /// The files are unchanged; nothing swapped.
    Unchanged,
    /// Rejected; whatever served before keeps serving.
    Rejected(LoadError),
}

/// The last load attempt, for `GetPolicySet`.
#[derive(Debug, Clone, Default)]
pub struct LoadStatus {
    pub ok: bool,
    pub error: String,
    pub attempted_at_unix: i64,
    pub loaded_at_unix: i64,
}

/// Holds the serving pack. Readers never block: a request takes the current
/// `Arc<PolicyPack>` and evaluates against it even if a reload swaps in a
/// new one meanwhile.
#[derive(Debug)]
pub struct PolicyStore {
    dir: PathBuf,
    current: ArcSwapOption<PolicyPack>,
    status: Mutex<LoadStatus>,
    /// Health: NOT_SERVING while no policy set has ever loaded (a rejected
    /// update with a good set still serving changes nothing).
    readiness: Readiness,
    // INVARIANT: reloads are serialized, so an older read of the directory
    // can never overwrite a newer one.
    reload_lock: Mutex<()>,
}

impl PolicyStore {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            current: ArcSwapOption::empty(),
            status: Mutex::new(LoadStatus::default()),
            readiness: {
                let readiness = Readiness::new();
                readiness.set(READINESS_CHECK, false);
                readiness
            },
            reload_lock: Mutex::new(()),
        }
    }

    /// The serving pack, if any has ever loaded.
    pub fn current(&self) -> Option<Arc<PolicyPack>> {
        self.current.load_full()
    }

    /// What gRPC health reports: SERVING once a policy set is loaded.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    pub fn status(&self) -> LoadStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the directory again; swaps only a pack that fully validates.
    pub fn reload(&self) -> LoadOutcome {
        let _serial = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = unix_now();
        let result = PolicyPack::load_dir(&self.dir);
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.attempted_at_unix = now;
        match result {
            Ok(pack) => {
                status.ok = true;
                status.error.clear();
                let version = pack.version().to_owned();
                if self
                    .current
                    .load()
                    .as_ref()
                    .is_some_and(|cur| cur.version() == version)
                {
                    return LoadOutcome::Unchanged;
                }
                let stats = pack.stats();
                self.current.store(Some(Arc::new(pack)));
                self.readiness.set(READINESS_CHECK, true);
                status.loaded_at_unix = now;
                tracing::info!(
                    policy_version = %version,
                    policies = stats.policies,
                    step_ups = stats.step_ups,
                    entities = stats.entities,
                    "policy set loaded"
                );
                LoadOutcome::Loaded(version)
            }
            Err(err) => {
                status.ok = false;
                status.error = err.to_string();
                tracing::warn!(
                    error = %err,
                    serving = self.current.load().as_ref().map(|p| p.version().to_owned()),
                    "policy update rejected; the last good set keeps serving"
                );
                LoadOutcome::Rejected(err)
            }
        }
    }

    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }
}
