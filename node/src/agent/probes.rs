//! HTTP probes of http-world instances: readiness sets the Ready condition,
//! liveness restarts an instance that keeps failing. A probe passes on a 2xx or
//! 3xx answer within its timeout.

use std::time::Duration;

use tokio::sync::mpsc;

use flotilla_api::instance::Probe;

use crate::runtime::HttpHandle;

/// What the probes report to the supervisor.
#[derive(Debug)]
pub enum ProbeEvent {
    /// Readiness changed.
    Ready(bool, String),
    /// Liveness failed its threshold: restart.
    LivenessFailed(String),
}

/// Probe loops for one run of an instance; they end when this is dropped.
pub struct Probes {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Events, in order.
    pub events: mpsc::UnboundedReceiver<ProbeEvent>,
}

impl Drop for Probes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn probe_once(handle: &HttpHandle, probe: &Probe) -> Result<(), String> {
    let path = if probe.http_get.path.is_empty() {
        "/".to_string()
    } else {
        probe.http_get.path.clone()
    };
    let req = http::Request::get(&path)
        .header("user-agent", "flotilla-probe")
        .body(crate::body::empty())
        .map_err(|e| format!("probe request for {path}: {e}"))?;
    let timeout = Duration::from_secs(u64::from(probe.timeout_seconds.max(1)));
    match tokio::time::timeout(timeout, handle.serve(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() || resp.status().is_redirection() => Ok(()),
        Ok(Ok(resp)) => Err(format!("GET {path} answered {}", resp.status())),
        Ok(Err(e)) => Err(format!("GET {path} failed: {e}")),
        Err(_) => Err(format!("GET {path} timed out after {timeout:?}")),
    }
}

async fn run(
    handle: HttpHandle,
    probe: Probe,
    liveness: bool,
    tx: mpsc::UnboundedSender<ProbeEvent>,
) {
    tokio::time::sleep(Duration::from_secs(u64::from(probe.initial_delay_seconds))).await;
    let period = Duration::from_secs(u64::from(probe.period_seconds.max(1)));
    let failure_threshold = probe.failure_threshold.max(1);
    let success_threshold = probe.success_threshold.max(1);
    let (mut failures, mut successes) = (0u32, 0u32);
    let mut ready = false;
    loop {
        match probe_once(&handle, &probe).await {
            Ok(()) => {
                failures = 0;
                successes += 1;
                if !liveness && !ready && successes >= success_threshold {
                    ready = true;
                    let _ = tx.send(ProbeEvent::Ready(true, "readiness probe passed".into()));
                }
            }
            Err(why) => {
                successes = 0;
                failures += 1;
                if failures >= failure_threshold {
                    if liveness {
                        let _ = tx.send(ProbeEvent::LivenessFailed(format!(
                            "liveness probe failed {failures} times: {why}"
                        )));
                        return;
                    }
                    if ready || failures == failure_threshold {
                        ready = false;
                        let _ = tx.send(ProbeEvent::Ready(
                            false,
                            format!("readiness probe failed: {why}"),
                        ));
                    }
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// Starts the probes an instance asks for.
pub fn start(handle: HttpHandle, readiness: Option<Probe>, liveness: Option<Probe>) -> Probes {
    let (tx, events) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    if let Some(p) = readiness {
        tasks.push(tokio::spawn(run(handle.clone(), p, false, tx.clone())));
    }
    if let Some(p) = liveness {
        tasks.push(tokio::spawn(run(handle, p, true, tx)));
    }
    Probes { tasks, events }
}
