//! Readiness: named checks that `/readyz` runs, each answering "ready" or
//! why not. The part of a daemon that knows (raft, the node's registration)
//! adds a check when it starts.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Readiness checks of one daemon; clones share them.
#[derive(Clone, Default)]
pub struct Health {
    checks: Arc<Mutex<Vec<(String, Check)>>>,
    /// Told each time a `/readyz` answer saying "not ready" has been sent.
    unready_sent: Arc<tokio::sync::Notify>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.lock().iter().map(|(n, _)| n.clone()).collect();
        f.debug_struct("Health").field("checks", &names).finish()
    }
}

impl Health {
    fn lock(&self) -> MutexGuard<'_, Vec<(String, Check)>> {
        self.checks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a check; `check` must be quick (it runs on every `/readyz`).
    pub fn add_check(
        &self,
        name: &str,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        self.lock().push((name.to_string(), Arc::new(check)));
    }

    /// Adds a check that answers what `readiness` was last set to.
    pub fn add(&self, name: &str, readiness: &Readiness) {
        let r = readiness.clone();
        self.add_check(name, move || r.get());
    }

    /// Resolves when the next `/readyz` answer saying "not ready" has been
    /// sent to whoever asked.
    pub async fn unready_answer_sent(&self) {
        self.unready_sent.notified().await
    }

    /// Says that a `/readyz` answer saying "not ready" was sent.
    pub(crate) fn sent_unready_answer(&self) {
        self.unready_sent.notify_waiters();
    }

    /// Runs every check: `Ok` when all pass (or there are none), else
    /// `"name: reason"` for each that fails.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let checks: Vec<(String, Check)> = self.lock().clone();
        let failed: Vec<String> = checks
            .iter()
            .filter_map(|(name, check)| check().err().map(|why| format!("{name}: {why}")))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }
}

/// A readiness flag set by the code that knows, with the reason while it is
/// not ready; clones share it.
#[derive(Clone, Debug)]
pub struct Readiness {
    state: Arc<Mutex<Result<(), String>>>,
}

impl Readiness {
    /// Not ready, for `reason`.
    pub fn not_ready(reason: impl Into<String>) -> Self {
        Self {
            state: Arc::new(Mutex::new(Err(reason.into()))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Result<(), String>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks it ready.
    pub fn set_ready(&self) {
        *self.lock() = Ok(());
    }

    /// Marks it not ready, for `reason`.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.lock() = Err(reason.into());
    }

    /// Ready, or why not.
    pub fn get(&self) -> Result<(), String> {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_passes() {
        let h = Health::default();
        assert_eq!(h.check(), Ok(()));
        let link = Readiness::not_ready("not registered yet");
        h.add("node", &link);
        h.add_check("raft", || Ok(()));
        assert_eq!(h.check(), Err(vec!["node: not registered yet".to_string()]));
        link.set_ready();
        assert_eq!(h.check(), Ok(()));
        link.set_not_ready("heartbeat failed");
        assert_eq!(h.check(), Err(vec!["node: heartbeat failed".to_string()]));
    }
}
