//! One instance on this node, run through its lifecycle steps until it is told
//! to stop or its restart policy says it is done.
//!
//! The order of the steps, and why:
//! 1. fetch the module by digest (local cache first): nothing can start without it;
//! 2. prepare (validate, compile or load the node's own compiled artifact);
//! 3. start, with the log rotated to a new run so `--previous` works;
//! 4. wait for the exit (or a stop), report it;
//! 5. restart per policy after an exponential backoff, reset after a long run.
//!
//! Every state change is reported to the status reporter, which pushes it to the
//! apiserver when it can; nothing here waits on the control plane once the
//! module is on disk.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use flotilla_api::instance::{
    Instance, InstancePhase, InstanceSpec, RestartPolicy, TerminationState, World as SpecWorld,
    CONDITION_READY,
};
use flotilla_api::meta::{now_timestamp, set_condition, Condition, ConditionStatus};

use super::logs::InstanceLog;
use super::metrics::AgentMetrics;
use super::modules::ModuleCache;
use super::probes::{self, ProbeEvent};
use crate::runtime::InstanceHandle;
use crate::runtime::{Exit, HttpHandle, Launch, Runtime, World};

/// Restart backoff settings (Kubernetes' CrashLoopBackOff numbers by default).
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// A run at least this long resets the delay.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

/// How one run ended.
struct Outcome {
    code: Option<i32>,
    reason: String,
    message: String,
    success: bool,
}

impl Outcome {
    fn from_exit(exit: &Exit) -> Self {
        Self {
            code: match exit {
                Exit::Code(c) => Some(*c),
                _ => None,
            },
            reason: exit.reason().to_string(),
            message: exit.message(),
            success: exit.success(),
        }
    }
}

/// `namespace/name`.
pub type Key = (String, String);

/// A status change for the reporter.
#[derive(Clone, Debug)]
pub struct StatusReport {
    /// The instance.
    pub key: Key,
    /// Its status now.
    pub instance: Instance,
}

/// What a supervisor needs.
pub struct Context {
    /// Runtime (wasmtime or hollow).
    pub runtime: Arc<dyn Runtime>,
    /// Module cache.
    pub modules: Arc<ModuleCache>,
    /// Where status changes go.
    pub reports: mpsc::UnboundedSender<StatusReport>,
    /// Restart backoff.
    pub backoff: Backoff,
    /// This node's name.
    pub node_name: String,
    /// The node's network (addresses, outgoing HTTP); `None` without a cluster.
    pub network: Option<Arc<crate::net::Network>>,
    /// Instances by phase, restarts.
    pub metrics: Arc<AgentMetrics>,
}

/// A running supervisor.
pub struct Supervisor {
    /// The spec it runs.
    pub spec: InstanceSpec,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    http: Arc<Mutex<Option<HttpHandle>>>,
    /// The instance's log.
    pub log: Arc<InstanceLog>,
}

impl Supervisor {
    /// Starts supervising `instance`.
    pub fn spawn(ctx: Arc<Context>, instance: Instance, log: Arc<InstanceLog>) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let http = Arc::new(Mutex::new(None));
        let spec = instance.spec.clone();
        let key = (
            instance.metadata.namespace.clone(),
            instance.metadata.name.clone(),
        );
        // Until the supervisor reports, the instance is waiting to start.
        ctx.metrics.set_phase(&key, InstancePhase::Pending);
        if let Some(net) = &ctx.network {
            net.register(&key, http.clone());
        }
        let task = tokio::spawn(run(ctx, instance, log.clone(), stop_rx, http.clone()));
        Self {
            spec,
            stop,
            task,
            http,
            log,
        }
    }

    /// The http endpoint of the current run, if it is an http-world instance.
    pub fn http(&self) -> Option<HttpHandle> {
        self.http.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the instance and waits (bounded) for it to end: a command-world
    /// guest gets its grace period to end on its own.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let bound = grace_period(&self.spec) + Duration::from_secs(5);
        let _ = tokio::time::timeout(bound, self.task).await;
    }
}

fn report(ctx: &Context, key: &Key, instance: &Instance) {
    ctx.metrics.set_phase(key, instance.status.phase);
    let _ = ctx.reports.send(StatusReport {
        key: key.clone(),
        instance: instance.clone(),
    });
}

fn set_ready(instance: &mut Instance, ready: bool, reason: &str, message: &str) {
    let status = if ready {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    set_condition(
        &mut instance.status.conditions,
        Condition::new(CONDITION_READY, status, reason, message),
    );
}

/// `terminationGracePeriodSeconds`.
fn grace_period(spec: &InstanceSpec) -> Duration {
    Duration::from_secs(u64::from(spec.termination_grace_period_seconds))
}

/// Asks the guest to stop and gives it `grace` to end on its own; then, or
/// at once when it cannot be asked (the http world), ends it.
async fn stop_gracefully(handle: &mut InstanceHandle, grace: Duration, log: &InstanceLog) {
    if handle.request_stop() {
        if tokio::time::timeout(grace, handle.wait()).await.is_ok() {
            return;
        }
        log.append(
            format!(
                "[flotilla] did not stop within its grace period of {}s: killed\n",
                grace.as_secs()
            )
            .as_bytes(),
        );
    }
    handle.stop();
    let _ = handle.wait().await;
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Sleeps `d`, or returns true early if told to stop.
async fn sleep_or_stop(d: Duration, rx: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stopped(rx) => true,
    }
}

fn launch_for(ctx: &Context, instance: &Instance, log: &Arc<InstanceLog>) -> Launch {
    let node = ctx.node_name.as_str();
    let spec = &instance.spec;
    let mut env: Vec<(String, String)> = vec![
        (
            "FLOTILLA_INSTANCE_NAME".into(),
            instance.metadata.name.clone(),
        ),
        (
            "FLOTILLA_NAMESPACE".into(),
            instance.metadata.namespace.clone(),
        ),
        ("FLOTILLA_NODE_NAME".into(), node.to_string()),
    ];
    env.extend(spec.env.iter().map(|e| (e.name.clone(), e.value.clone())));
    Launch {
        name: format!("{}/{}", instance.metadata.namespace, instance.metadata.name),
        world: match spec.world {
            SpecWorld::Auto => None,
            SpecWorld::Http => Some(World::Http),
            SpecWorld::Command => Some(World::Command),
        },
        args: spec.args.clone(),
        env,
        memory_limit_bytes: spec
            .resources
            .limits
            .memory
            .as_ref()
            .map_or(0, |q| q.as_bytes()),
        cpu_limit_millis: spec
            .resources
            .limits
            .cpu
            .as_ref()
            .map_or(0, |q| q.as_millis()),
        log: log.sink(),
        outbound: ctx.network.as_ref().map(|net| {
            net.outbound_for(
                &instance.metadata.namespace,
                &instance.metadata.name,
                spec.allowed_outbound_hosts.clone(),
            )
        }),
    }
}

async fn run(
    ctx: Arc<Context>,
    mut instance: Instance,
    log: Arc<InstanceLog>,
    mut stop: watch::Receiver<bool>,
    http: Arc<Mutex<Option<HttpHandle>>>,
) {
    let key = (
        instance.metadata.namespace.clone(),
        instance.metadata.name.clone(),
    );
    let digest = instance.spec.module.clone();
    instance.status.node_name = ctx.node_name.clone();
    let mut delay = ctx.backoff.initial;

    // 1. fetch
    let bytes = loop {
        match ctx.modules.get(&digest).await {
            Ok(b) => break b,
            Err(e) => {
                instance.status.phase = InstancePhase::Pending;
                instance.status.reason = "ModuleUnavailable".into();
                instance.status.message = e.to_string();
                report(&ctx, &key, &instance);
                if sleep_or_stop(Duration::from_secs(2), &mut stop).await {
                    return;
                }
            }
        }
    };
    // 2. prepare
    let prepared = match ctx.runtime.prepare(&digest, bytes).await {
        Ok(p) => p,
        Err(e) => {
            instance.status.phase = InstancePhase::Failed;
            instance.status.reason = "InvalidModule".into();
            instance.status.message = e.to_string();
            set_ready(&mut instance, false, "InvalidModule", &e.to_string());
            report(&ctx, &key, &instance);
            return;
        }
    };
    instance.status.world = match prepared.world {
        World::Http => SpecWorld::Http,
        World::Command => SpecWorld::Command,
    };
    loop {
        // 3. start
        log.new_run();
        let launch = launch_for(&ctx, &instance, &log);
        let mut handle = match ctx.runtime.start(&prepared, launch) {
            Ok(h) => h,
            Err(e) => {
                instance.status.phase = InstancePhase::Failed;
                instance.status.reason = "StartError".into();
                instance.status.message = e.to_string();
                set_ready(&mut instance, false, "StartError", &e.to_string());
                report(&ctx, &key, &instance);
                return;
            }
        };
        let http_handle = handle.http_handle();
        *http.lock().unwrap_or_else(|p| p.into_inner()) = http_handle.clone();
        let mut probes = http_handle.map(|h| {
            probes::start(
                h,
                instance.spec.readiness_probe.clone(),
                instance.spec.liveness_probe.clone(),
            )
        });
        let started = Instant::now();
        let started_at = now_timestamp();
        instance.status.phase = InstancePhase::Running;
        if let Some(ip) = ctx.network.as_ref().and_then(|n| n.address_of(&key)) {
            instance.status.instance_ip = ip.to_string();
        }
        instance.status.start_time = started_at.clone();
        instance.status.reason.clear();
        instance.status.message.clear();
        instance.status.exit_code = None;
        if probes.is_some() && instance.spec.readiness_probe.is_some() {
            set_ready(
                &mut instance,
                false,
                "Probing",
                "waiting for the readiness probe",
            );
        } else {
            set_ready(&mut instance, true, "Started", "");
        }
        report(&ctx, &key, &instance);

        // 4. wait (probes may change readiness, or end the run)
        let outcome = loop {
            let probe_event = async {
                match probes.as_mut() {
                    Some(p) => p.events.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                exit = handle.wait() => break Outcome::from_exit(&exit),
                _ = stopped(&mut stop) => {
                    stop_gracefully(&mut handle, grace_period(&instance.spec), &log).await;
                    *http.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    return;
                }
                Some(event) = probe_event => match event {
                    ProbeEvent::Ready(ready, message) => {
                        let reason = if ready { "ProbePassed" } else { "ProbeFailed" };
                        set_ready(&mut instance, ready, reason, &message);
                        report(&ctx, &key, &instance);
                    }
                    ProbeEvent::LivenessFailed(message) => {
                        handle.stop();
                        let _ = handle.wait().await;
                        break Outcome {
                            code: None,
                            reason: "LivenessProbeFailed".into(),
                            message,
                            success: false,
                        };
                    }
                },
            }
        };
        drop(probes);
        *http.lock().unwrap_or_else(|p| p.into_inner()) = None;
        instance.status.exit_code = outcome.code;
        instance.status.reason = outcome.reason.clone();
        instance.status.message = outcome.message.clone();
        instance.status.last_termination = Some(TerminationState {
            exit_code: outcome.code,
            reason: outcome.reason.clone(),
            message: outcome.message.clone(),
            started_at,
            finished_at: now_timestamp(),
        });
        set_ready(&mut instance, false, &outcome.reason, &outcome.message);

        // 5. restart?
        let again = match instance.spec.restart_policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !outcome.success,
            RestartPolicy::Never => false,
        };
        if !again {
            instance.status.phase = if outcome.success {
                InstancePhase::Succeeded
            } else {
                InstancePhase::Failed
            };
            report(&ctx, &key, &instance);
            return;
        }
        if started.elapsed() >= ctx.backoff.reset_after {
            delay = ctx.backoff.initial;
        }
        instance.status.restart_count += 1;
        ctx.metrics.restarted();
        instance.status.message =
            format!("{}; restarting in {:?} (back-off)", outcome.message, delay);
        report(&ctx, &key, &instance);
        if sleep_or_stop(delay, &mut stop).await {
            return;
        }
        delay = (delay * 2).min(ctx.backoff.max);
    }
}
