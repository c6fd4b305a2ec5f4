//! One instance on this node, run through its lifecycle steps until it is told
//! to stop or its restart policy says it is done: fetch, compile, start, run
//! (with its probes), and restart or finish, each a state of [`State`] in
//! the order written there (with why), advanced by one step function. A stop
//! is honoured at every step, a module's compile included.
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
use crate::runtime::{Exit, HttpHandle, Launch, Prepared, Runtime, World};

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

/// Which step of its lifecycle an instance is at (the states of [`State`],
/// without what they carry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Fetching the module.
    Fetch,
    /// Compiling it.
    Compile,
    /// Starting a run.
    Start,
    /// Running.
    Run,
    /// A run ended.
    Ended,
    /// Nothing more to do.
    Done,
}

/// A running supervisor.
pub struct Supervisor {
    /// The spec it runs.
    pub spec: InstanceSpec,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    http: Arc<Mutex<Option<HttpHandle>>>,
    at: watch::Receiver<Step>,
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
        let (at_tx, at) = watch::channel(Step::Fetch);
        let task = tokio::spawn(run(
            ctx,
            instance,
            log.clone(),
            stop_rx,
            http.clone(),
            at_tx,
        ));
        Self {
            spec,
            stop,
            task,
            http,
            at,
            log,
        }
    }

    /// The step the instance is at.
    pub fn step(&self) -> Step {
        *self.at.borrow()
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

/// Where one instance is in its lifecycle; [`Lifecycle::step`] does what the
/// state says and returns the next. The steps, in order, and why that order:
enum State {
    /// 1. Fetch the module by digest (the node's cache first): nothing can
    ///    start without it. Retried while it cannot be had; a stop ends it.
    Fetch,
    /// 2. Compile it, or load the artifact this node compiled before. A stop
    ///    is honoured while it compiles: the compile goes on in the
    ///    background (its artifact is cached), the instance does not start.
    Compile {
        /// The module's bytes.
        bytes: Vec<u8>,
    },
    /// 3. Start a run, with the log rotated to a new run so `--previous`
    ///    works, and its probes.
    Start {
        /// What the runtime prepared.
        prepared: Prepared,
    },
    /// 4. Run until the guest exits, a stop, or a failed liveness probe;
    ///    readiness probes change the Ready condition meanwhile.
    Run(Box<Running>),
    /// 5. The run ended: restart per policy after an exponential backoff
    ///    (reset after a long run), or finish.
    Ended {
        /// What the runtime prepared.
        prepared: Prepared,
        /// How the run ended.
        outcome: Outcome,
        /// When it started.
        started: Instant,
    },
    /// Stopped, failed for good, or finished: nothing more to do.
    Done,
}

impl State {
    fn step(&self) -> Step {
        match self {
            State::Fetch => Step::Fetch,
            State::Compile { .. } => Step::Compile,
            State::Start { .. } => Step::Start,
            State::Run(_) => Step::Run,
            State::Ended { .. } => Step::Ended,
            State::Done => Step::Done,
        }
    }
}

/// A run in progress.
struct Running {
    prepared: Prepared,
    handle: InstanceHandle,
    probes: Option<probes::Probes>,
    started: Instant,
    started_at: String,
}

/// One instance's lifecycle: what every step works with.
struct Lifecycle {
    ctx: Arc<Context>,
    instance: Instance,
    key: Key,
    log: Arc<InstanceLog>,
    stop: watch::Receiver<bool>,
    http: Arc<Mutex<Option<HttpHandle>>>,
    /// The next restart's backoff.
    delay: Duration,
}

impl Lifecycle {
    fn report(&self) {
        report(&self.ctx, &self.key, &self.instance);
    }

    /// Sets the status of a failure that ends the instance, and reports it.
    fn fail(&mut self, reason: &str, message: String) -> State {
        self.instance.status.phase = InstancePhase::Failed;
        self.instance.status.reason = reason.into();
        set_ready(&mut self.instance, false, reason, &message);
        self.instance.status.message = message;
        self.report();
        State::Done
    }

    async fn step(&mut self, state: State) -> State {
        match state {
            State::Fetch => self.fetch().await,
            State::Compile { bytes } => self.compile(bytes).await,
            State::Start { prepared } => self.start(prepared),
            State::Run(running) => self.run(*running).await,
            State::Ended {
                prepared,
                outcome,
                started,
            } => self.ended(prepared, outcome, started).await,
            State::Done => State::Done,
        }
    }

    async fn fetch(&mut self) -> State {
        let digest = self.instance.spec.module.clone();
        loop {
            let fetched = tokio::select! {
                fetched = self.ctx.modules.get(&digest) => fetched,
                _ = stopped(&mut self.stop) => return State::Done,
            };
            match fetched {
                Ok(bytes) => return State::Compile { bytes },
                Err(e) => {
                    self.instance.status.phase = InstancePhase::Pending;
                    self.instance.status.reason = "ModuleUnavailable".into();
                    self.instance.status.message = e.to_string();
                    self.report();
                    if sleep_or_stop(Duration::from_secs(2), &mut self.stop).await {
                        return State::Done;
                    }
                }
            }
        }
    }

    async fn compile(&mut self, bytes: Vec<u8>) -> State {
        let digest = self.instance.spec.module.clone();
        let prepared = tokio::select! {
            prepared = self.ctx.runtime.prepare(&digest, bytes) => prepared,
            _ = stopped(&mut self.stop) => return State::Done,
        };
        match prepared {
            Ok(prepared) => {
                self.instance.status.world = match prepared.world {
                    World::Http => SpecWorld::Http,
                    World::Command => SpecWorld::Command,
                };
                State::Start { prepared }
            }
            Err(e) => self.fail("InvalidModule", e.to_string()),
        }
    }

    fn start(&mut self, prepared: Prepared) -> State {
        self.log.new_run();
        let launch = launch_for(&self.ctx, &self.instance, &self.log);
        let handle = match self.ctx.runtime.start(&prepared, launch) {
            Ok(h) => h,
            Err(e) => return self.fail("StartError", e.to_string()),
        };
        let http_handle = handle.http_handle();
        *self.http.lock().unwrap_or_else(|p| p.into_inner()) = http_handle.clone();
        let spec = &self.instance.spec;
        let probes = http_handle
            .map(|h| probes::start(h, spec.readiness_probe.clone(), spec.liveness_probe.clone()));
        let started_at = now_timestamp();
        let status = &mut self.instance.status;
        status.phase = InstancePhase::Running;
        if let Some(ip) = self
            .ctx
            .network
            .as_ref()
            .and_then(|n| n.address_of(&self.key))
        {
            status.instance_ip = ip.to_string();
        }
        status.start_time = started_at.clone();
        status.reason.clear();
        status.message.clear();
        status.exit_code = None;
        if probes.is_some() && self.instance.spec.readiness_probe.is_some() {
            set_ready(
                &mut self.instance,
                false,
                "Probing",
                "waiting for the readiness probe",
            );
        } else {
            set_ready(&mut self.instance, true, "Started", "");
        }
        self.report();
        State::Run(Box::new(Running {
            prepared,
            handle,
            probes,
            started: Instant::now(),
            started_at,
        }))
    }

    async fn run(&mut self, mut running: Running) -> State {
        let outcome = loop {
            let probe_event = async {
                match running.probes.as_mut() {
                    Some(p) => p.events.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                exit = running.handle.wait() => break Outcome::from_exit(&exit),
                _ = stopped(&mut self.stop) => {
                    let grace = grace_period(&self.instance.spec);
                    stop_gracefully(&mut running.handle, grace, &self.log).await;
                    *self.http.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    return State::Done;
                }
                Some(event) = probe_event => match event {
                    ProbeEvent::Ready(ready, message) => {
                        let reason = if ready { "ProbePassed" } else { "ProbeFailed" };
                        set_ready(&mut self.instance, ready, reason, &message);
                        self.report();
                    }
                    ProbeEvent::LivenessFailed(message) => {
                        running.handle.stop();
                        let _ = running.handle.wait().await;
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
        drop(running.probes.take());
        *self.http.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let status = &mut self.instance.status;
        status.exit_code = outcome.code;
        status.reason = outcome.reason.clone();
        status.message = outcome.message.clone();
        status.last_termination = Some(TerminationState {
            exit_code: outcome.code,
            reason: outcome.reason.clone(),
            message: outcome.message.clone(),
            started_at: running.started_at,
            finished_at: now_timestamp(),
        });
        set_ready(&mut self.instance, false, &outcome.reason, &outcome.message);
        State::Ended {
            prepared: running.prepared,
            outcome,
            started: running.started,
        }
    }

    async fn ended(&mut self, prepared: Prepared, outcome: Outcome, started: Instant) -> State {
        let again = match self.instance.spec.restart_policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !outcome.success,
            RestartPolicy::Never => false,
        };
        if !again {
            self.instance.status.phase = if outcome.success {
                InstancePhase::Succeeded
            } else {
                InstancePhase::Failed
            };
            self.report();
            return State::Done;
        }
        let backoff = self.ctx.backoff;
        if started.elapsed() >= backoff.reset_after {
            self.delay = backoff.initial;
        }
        self.instance.status.restart_count += 1;
        self.ctx.metrics.restarted();
        self.instance.status.message = format!(
            "{}; restarting in {:?} (back-off)",
            outcome.message, self.delay
        );
        self.report();
        if sleep_or_stop(self.delay, &mut self.stop).await {
            return State::Done;
        }
        self.delay = (self.delay * 2).min(backoff.max);
        State::Start { prepared }
    }
}

async fn run(
    ctx: Arc<Context>,
    mut instance: Instance,
    log: Arc<InstanceLog>,
    stop: watch::Receiver<bool>,
    http: Arc<Mutex<Option<HttpHandle>>>,
    at: watch::Sender<Step>,
) {
    let key = (
        instance.metadata.namespace.clone(),
        instance.metadata.name.clone(),
    );
    instance.status.node_name = ctx.node_name.clone();
    let mut lifecycle = Lifecycle {
        delay: ctx.backoff.initial,
        ctx,
        instance,
        key,
        log,
        stop,
        http,
    };
    let mut state = State::Fetch;
    while !matches!(state, State::Done) {
        at.send_replace(state.step());
        state = lifecycle.step(state).await;
    }
    at.send_replace(Step::Done);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::test_support::config;
    use crate::runtime::WasmtimeRuntime;
    use flotilla_telemetry::Registry;
    use std::fmt::Write as _;

    /// A command module whose compile takes seconds: many functions, each a
    /// long chain of arithmetic that cranelift has to lower one by one.
    fn slow_to_compile_module(functions: usize, ops_per_function: usize) -> Vec<u8> {
        let mut wat = String::from(
            "(module\n(import \"wasi_snapshot_preview1\" \"proc_exit\" (func $exit (param i32)))\n\
             (memory (export \"memory\") 1)\n",
        );
        for f in 0..functions {
            let _ = writeln!(wat, "(func $f{f} (param i32) (result i32) local.get 0");
            for op in 0..ops_per_function {
                let _ = writeln!(wat, "i32.const {op} i32.add i32.const 3 i32.mul");
            }
            wat.push_str(")\n");
        }
        wat.push_str("(func (export \"_start\") (call $exit (i32.const 0))))");
        wat::parse_str(&wat).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_is_honoured_while_the_module_compiles() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Arc::new(WasmtimeRuntime::new(config(dir.path())).unwrap());
        let modules = Arc::new(ModuleCache::new(dir.path().join("modules"), None).unwrap());
        let bytes = slow_to_compile_module(400, 2_000);
        let digest = modules.insert(&bytes).unwrap();
        let (reports, mut reported) = mpsc::unbounded_channel();
        let ctx = Arc::new(Context {
            runtime,
            modules,
            reports,
            backoff: Backoff::default(),
            node_name: "n1".into(),
            network: None,
            metrics: AgentMetrics::register(&Registry::default()),
        });
        let mut instance = Instance::default();
        instance.metadata.namespace = "default".into();
        instance.metadata.name = "slow".into();
        instance.spec.module = digest;
        instance.spec.restart_policy = RestartPolicy::Never;
        let log = InstanceLog::open(dir.path().join("log")).unwrap();

        let supervisor = Supervisor::spawn(ctx, instance, log);
        let mut at = supervisor.at.clone();
        tokio::time::timeout(
            Duration::from_secs(10),
            at.wait_for(|step| *step == Step::Compile),
        )
        .await
        .expect("the module's compile never began")
        .unwrap();
        let asked = Instant::now();
        supervisor.stop().await;
        let took = asked.elapsed();
        let compiled = || {
            std::fs::read_dir(dir.path().join("cache"))
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .any(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
                })
                .unwrap_or(false)
        };
        assert!(
            !compiled(),
            "the compile finished before the stop returned ({took:?}): the module compiles too fast to show anything"
        );
        assert!(
            took < Duration::from_secs(1),
            "the stop waited {took:?} for the compile"
        );
        while let Ok(report) = reported.try_recv() {
            assert_ne!(
                report.instance.status.phase,
                InstancePhase::Running,
                "an instance told to stop while compiling started"
            );
        }
    }
}
