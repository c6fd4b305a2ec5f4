//! The scheduler and the controllers end to end: Deployments (spread, scale,
//! rollout, undo), node loss, DaemonSets, Jobs, garbage collection, a stopped
//! scheduler, and leader election among several schedulers and controllers.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{stderr, stdout, wait_for, Cluster};
use crate::node::{examples, NodeProc};

const NODE_FLAGS: &[&str] = &["--lease-interval", "500ms", "--busy-timeout", "1s"];

pub(crate) fn start_nodes(cluster: &Cluster, names: &[&str], extra: &[&[&str]]) -> Vec<NodeProc> {
    let token = cluster.token("1h");
    names
        .iter()
        .enumerate()
        .map(|(n, name)| start_node(cluster, &token, name, extra.get(n).copied().unwrap_or(&[])))
        .collect()
}

fn start_node(cluster: &Cluster, token: &str, name: &str, extra: &[&str]) -> NodeProc {
    let mut flags: Vec<&str> = NODE_FLAGS.to_vec();
    flags.extend_from_slice(extra);
    NodeProc::start(
        Some(&cluster.peers[0].addr),
        Some(token),
        name,
        &cluster.dir.path().join(name),
        &flags,
    )
}

pub(crate) fn wait_nodes_ready(cluster: &Cluster, n: usize) {
    wait_for("nodes Ready", Duration::from_secs(30), || {
        let items = list(cluster, &["nodes"]);
        let ready = items
            .iter()
            .filter(|n| condition(n, "Ready").as_deref() == Some("True"))
            .count();
        (ready >= n).then_some(())
    });
}

pub(crate) fn list(cluster: &Cluster, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    let out = cluster.cli(0, &full);
    if !out.status.success() {
        return Vec::new();
    }
    let v: Value = serde_json::from_str(&stdout(&out)).expect("json");
    match v.get("items") {
        Some(Value::Array(items)) => items.clone(),
        _ => vec![v],
    }
}

pub(crate) fn condition(obj: &Value, type_: &str) -> Option<String> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

fn is_ready(i: &Value) -> bool {
    condition(i, "Ready").as_deref() == Some("True") && i["metadata"]["deletionTimestamp"].is_null()
}

/// Ready instances per node.
fn ready_per_node(items: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for i in items.iter().filter(|i| is_ready(i)) {
        *out.entry(i["spec"]["nodeName"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    out
}

/// `flotilla scale deploy/NAME --replicas N`, which must succeed.
pub(crate) fn scale(cluster: &Cluster, deployment: &str, replicas: u32) {
    let target = format!("deploy/{deployment}");
    let replicas = replicas.to_string();
    let out = cluster.cli(0, &["scale", &target, "--replicas", &replicas]);
    assert!(out.status.success(), "{}", stderr(&out));
}

pub(crate) fn apply(cluster: &Cluster, manifest: &str) {
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(manifest));
    assert!(out.status.success(), "apply failed: {}", stderr(&out));
}

fn hello() -> String {
    examples().join("hello.wasm").display().to_string()
}

pub(crate) fn deployment(name: &str, replicas: u32, message: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  strategy:
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 1}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      module: {}
      world: http
      env:
      - {{name: MESSAGE, value: \"{message}\"}}
      resources:
        limits: {{cpu: 10m, memory: 16Mi}}
{extra_spec}",
        hello()
    )
}

/// Waits for `n` ready instances of `app` (and no others); returns them per node.
pub(crate) fn wait_ready_instances(
    cluster: &Cluster,
    app: &str,
    n: usize,
    timeout: Duration,
) -> BTreeMap<String, usize> {
    let selector = format!("app={app}");
    wait_for(&format!("{n} ready instances of {app}"), timeout, || {
        let items = list(cluster, &["inst", "-l", &selector]);
        let per_node = ready_per_node(&items);
        (items.len() == n && per_node.values().sum::<usize>() == n).then_some(per_node)
    })
}

#[test]
fn a_deployment_spreads_scales_rolls_out_and_undoes() {
    let cluster = Cluster::start(1, &[]);
    let _nodes = start_nodes(&cluster, &["node-1", "node-2", "node-3"], &[]);
    wait_nodes_ready(&cluster, 3);

    apply(&cluster, &deployment("web", 6, "one", ""));
    let per_node = wait_ready_instances(&cluster, "web", 6, Duration::from_secs(60));
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{per_node:?}"
    );

    scale(&cluster, "web", 9);
    let per_node = wait_ready_instances(&cluster, "web", 9, Duration::from_secs(60));
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![3, 3, 3],
        "{per_node:?}"
    );
    scale(&cluster, "web", 3);
    wait_ready_instances(&cluster, "web", 3, Duration::from_secs(60));

    // A template change with a readiness probe, so every step takes a while;
    // a watcher counts ready instances all along.
    let floor = ReadyFloor::watch(&cluster, "web");
    let probe = "      readinessProbe:\n        httpGet: {path: /}\n        initialDelaySeconds: 1\n        periodSeconds: 1\n";
    apply(&cluster, &deployment("web", 3, "two", probe));
    let status = cluster.cli(0, &["rollout", "status", "deploy/web", "--timeout", "60s"]);
    let floor = floor.finish();
    let text = stdout(&status);
    assert!(
        status.status.success(),
        "rollout status failed: {text}{}",
        stderr(&status)
    );
    assert!(
        text.contains("Waiting for deployment \"web\" rollout to finish"),
        "{text}"
    );
    assert!(
        text.contains("deployment \"web\" successfully rolled out"),
        "{text}"
    );
    assert!(
        floor >= 2,
        "only {floor} ready instances during the rollout (3 - maxUnavailable 1 = 2)"
    );
    let items = list(&cluster, &["inst", "-l", "app=web"]);
    assert!(
        items.iter().all(|i| i["spec"]["env"][0]["value"] == "two"),
        "{items:?}"
    );

    let history = stdout(&cluster.cli(0, &["rollout", "history", "deploy/web"]));
    assert!(
        history.contains("REVISION") && history.contains("\n1 ") && history.contains("\n2 "),
        "{history}"
    );
    let out = cluster.cli(0, &["rollout", "undo", "deploy/web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cluster.cli(0, &["rollout", "status", "deploy/web", "--timeout", "60s"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let items = list(&cluster, &["inst", "-l", "app=web"]);
    assert_eq!(items.len(), 3);
    assert!(
        items.iter().all(|i| i["spec"]["env"][0]["value"] == "one"),
        "{items:?}"
    );
    let d = &list(&cluster, &["deploy", "web"])[0];
    assert_eq!(
        d["status"]["revision"], 3,
        "undo makes the old template the newest revision"
    );

    let described = stdout(&cluster.cli(0, &["describe", "deploy", "web"]));
    assert!(described.contains("ScalingUp"), "{described}");
}

#[test]
fn a_lost_node_is_tainted_and_its_instances_replaced_and_it_rejoins() {
    let cluster = Cluster::start(
        1,
        &[
            "--node-grace-period",
            "2s",
            "--default-toleration-seconds",
            "3",
        ],
    );
    let mut nodes = start_nodes(&cluster, &["node-1", "node-2", "node-3"], &[]);
    wait_nodes_ready(&cluster, 3);
    apply(&cluster, &deployment("web", 6, "one", ""));
    let per_node = wait_ready_instances(&cluster, "web", 6, Duration::from_secs(60));
    assert_eq!(per_node.get("node-3"), Some(&2), "{per_node:?}");

    let killed = Instant::now();
    nodes[2].kill9();
    wait_for(
        "node-3 NotReady and tainted",
        Duration::from_secs(15),
        || {
            let n = &list(&cluster, &["node", "node-3"])[0];
            let tainted = n["spec"]["taints"].as_array().is_some_and(|t| {
                t.iter().any(|t| {
                    t["key"] == "node.flotilla.dev/unreachable" && t["effect"] == "NoExecute"
                })
            });
            (condition(n, "Ready").as_deref() == Some("Unknown") && tainted).then_some(())
        },
    );
    let per_node = wait_for(
        "replacements on the other nodes",
        Duration::from_secs(30),
        || {
            let items = list(&cluster, &["inst", "-l", "app=web"]);
            let per_node = ready_per_node(&items);
            (items.len() == 6
                && !per_node.contains_key("node-3")
                && per_node.values().sum::<usize>() == 6)
                .then_some(per_node)
        },
    );
    assert!(
        killed.elapsed() >= Duration::from_secs(4),
        "evicted before grace + toleration"
    );
    assert_eq!(per_node.values().sum::<usize>(), 6);
    let events = stdout(&cluster.cli(0, &["get", "events"]));
    assert!(events.contains("Evicted"), "{events}");

    nodes[2].restart();
    wait_for(
        "node-3 Ready and untainted",
        Duration::from_secs(30),
        || {
            let n = &list(&cluster, &["node", "node-3"])[0];
            let tainted = n["spec"]["taints"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|t| t["key"] == "node.flotilla.dev/unreachable")
            });
            (condition(n, "Ready").as_deref() == Some("True") && !tainted).then_some(())
        },
    );
    scale(&cluster, "web", 9);
    let per_node = wait_ready_instances(&cluster, "web", 9, Duration::from_secs(60));
    assert_eq!(
        per_node.get("node-3"),
        Some(&3),
        "the rejoined node takes new work: {per_node:?}"
    );
}

fn daemonset(name: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1
kind: DaemonSet
metadata:
  name: {name}
spec:
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      module: {}
      world: http
      nodeSelector: {{sensor: \"yes\"}}
      tolerations:
      - {{key: edge, operator: Equal, value: \"true\", effect: NoSchedule}}
      resources:
        limits: {{cpu: 10m, memory: 16Mi}}
",
        hello()
    )
}

#[test]
fn a_daemonset_follows_nodes_labels_and_tolerations() {
    let cluster = Cluster::start(1, &[]);
    let token = cluster.token("1h");
    let _n1 = start_node(&cluster, &token, "node-1", &["--labels", "sensor=yes"]);
    let _n2 = start_node(
        &cluster,
        &token,
        "node-2",
        &["--labels", "sensor=yes", "--taints", "edge=true:NoSchedule"],
    );
    wait_nodes_ready(&cluster, 2);
    apply(&cluster, &daemonset("sensor"));
    apply(&cluster, &deployment("web", 2, "one", ""));
    let per_node = wait_ready_instances(&cluster, "sensor", 2, Duration::from_secs(60));
    assert_eq!(
        per_node.keys().cloned().collect::<Vec<_>>(),
        vec!["node-1", "node-2"]
    );
    let web = wait_ready_instances(&cluster, "web", 2, Duration::from_secs(60));
    assert_eq!(
        web.keys().cloned().collect::<Vec<_>>(),
        vec!["node-1"],
        "the Deployment avoids the tainted node"
    );

    let _n3 = start_node(&cluster, &token, "node-3", &["--labels", "sensor=yes"]);
    let per_node = wait_ready_instances(&cluster, "sensor", 3, Duration::from_secs(60));
    assert!(per_node.contains_key("node-3"), "{per_node:?}");

    // Take the label away from node-1: its instance goes.
    let mut node1 = list(&cluster, &["node", "node-1"]).remove(0);
    node1["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .insert("sensor".into(), Value::String("no".into()));
    node1["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    apply(&cluster, &serde_json::to_string(&node1).unwrap());
    let per_node = wait_ready_instances(&cluster, "sensor", 2, Duration::from_secs(60));
    assert_eq!(
        per_node.keys().cloned().collect::<Vec<_>>(),
        vec!["node-2", "node-3"]
    );
    // The status follows in the controller's next pass.
    wait_for("the DaemonSet's status", Duration::from_secs(10), || {
        let ds = list(&cluster, &["daemonset", "sensor"]).pop()?;
        (ds["status"]["desiredNumberScheduled"] == 2).then_some(())
    });
}

pub(crate) fn job(
    name: &str,
    module: &Path,
    completions: u32,
    parallelism: u32,
    backoff_limit: u32,
) -> String {
    format!(
        "apiVersion: flotilla.dev/v1
kind: Job
metadata:
  name: {name}
spec:
  completions: {completions}
  parallelism: {parallelism}
  backoffLimit: {backoff_limit}
  template:
    spec:
      module: {}
      restartPolicy: Never
      resources:
        limits: {{cpu: 10m, memory: 1Mi}}
",
        module.display()
    )
}

#[test]
fn jobs_complete_and_a_failing_job_stops_at_its_backoff_limit() {
    let cluster = Cluster::start(1, &[]);
    let _nodes = start_nodes(&cluster, &["node-1"], &[]);
    wait_nodes_ready(&cluster, 1);
    let dir = cluster.dir.path();
    let ok = dir.join("ok.wat");
    std::fs::write(
        &ok,
        "(module (memory (export \"memory\") 1) (func (export \"_start\")))",
    )
    .unwrap();
    let bad = dir.join("bad.wat");
    std::fs::write(
        &bad,
        "(module (memory (export \"memory\") 1) (func (export \"_start\") unreachable))",
    )
    .unwrap();

    apply(&cluster, &job("sum", &ok, 5, 2, 0));
    let mut most_active = 0;
    let done = wait_for("job sum complete", Duration::from_secs(60), || {
        let items = list(&cluster, &["inst", "-l", "job-name=sum"]);
        let active = items
            .iter()
            .filter(|i| !matches!(i["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
            .count();
        most_active = most_active.max(active);
        let j = list(&cluster, &["job", "sum"]).remove(0);
        (condition(&j, "Complete").as_deref() == Some("True")).then_some(j)
    });
    assert_eq!(done["status"]["succeeded"], 5, "{done}");
    assert!(
        most_active <= 2,
        "{most_active} instances ran at once with parallelism 2"
    );

    apply(&cluster, &job("broken", &bad, 3, 1, 2));
    let failed = wait_for("job broken failed", Duration::from_secs(60), || {
        let j = list(&cluster, &["job", "broken"]).remove(0);
        (condition(&j, "Failed").as_deref() == Some("True")).then_some(j)
    });
    assert_eq!(failed["status"]["failed"], 3, "{failed}");
    let reason = failed["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .unwrap()["reason"]
        .clone();
    assert_eq!(reason, "BackoffLimitExceeded");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        list(&cluster, &["inst", "-l", "job-name=broken"]).len(),
        3,
        "no retry past the limit"
    );
}

#[test]
fn deleting_a_deployment_cascades_in_the_background_or_orphans() {
    let cluster = Cluster::start(1, &[]);
    let _nodes = start_nodes(&cluster, &["node-1"], &[]);
    wait_nodes_ready(&cluster, 1);
    apply(&cluster, &deployment("gone", 2, "x", ""));
    apply(&cluster, &deployment("kept", 2, "x", ""));
    apply(&cluster, &deployment("slow", 2, "x", ""));
    wait_ready_instances(&cluster, "gone", 2, Duration::from_secs(60));
    wait_ready_instances(&cluster, "kept", 2, Duration::from_secs(60));
    wait_ready_instances(&cluster, "slow", 2, Duration::from_secs(60));

    assert!(cluster
        .cli(0, &["delete", "deploy", "gone"])
        .status
        .success());
    wait_for("background cascade", Duration::from_secs(20), || {
        list(&cluster, &["inst", "-l", "app=gone"])
            .is_empty()
            .then_some(())
    });

    let out = cluster.cli(0, &["delete", "deploy", "kept", "--cascade=orphan"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_secs(2));
    let items = list(&cluster, &["inst", "-l", "app=kept"]);
    assert_eq!(items.len(), 2, "orphans stay");
    assert!(
        items
            .iter()
            .all(|i| i["metadata"]["ownerReferences"].is_null()),
        "{items:?}"
    );

    let out = cluster.cli(0, &["delete", "deploy", "slow", "--cascade=foreground"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("foreground cascade", Duration::from_secs(20), || {
        let deploy_gone = !cluster.cli(0, &["get", "deploy", "slow"]).status.success();
        let instances = list(&cluster, &["inst", "-l", "app=slow"]);
        if deploy_gone {
            assert!(instances.is_empty(), "the owner went before its dependents");
        }
        deploy_gone.then_some(())
    });
}

pub(crate) fn instance(name: &str, memory: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1\nkind: Instance\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\nspec:\n  module: {}\n  world: http\n  resources:\n    limits: {{memory: {memory}}}\n",
        hello()
    )
}

/// A `flotilla scheduler|controllers` process against the cluster.
/// It runs as its own identity (`component:VERB`), as in a real
/// deployment: nothing about it needs the admin's credentials.
pub(crate) fn component(cluster: &Cluster, verb: &str, extra: &[&str]) -> Child {
    let config = cluster.dir.path().join(format!("component-{verb}.config"));
    if !config.exists() {
        let identity = format!("component:{verb}");
        let out = cluster.cli(
            0,
            &["user", "create", &identity, "-o", config.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "user create {identity}: {}",
            crate::harness::stderr(&out)
        );
    }
    let mut args: Vec<String> = vec![
        "--config".into(),
        config.display().to_string(),
        "--server".into(),
        cluster.peers[0].addr.clone(),
        verb.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let child = std::process::Command::new(crate::harness::BIN)
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn component");
    child
}

pub(crate) struct Killed(pub Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_stopped_scheduler_leaves_new_instances_pending_and_explains_misfits() {
    let cluster = Cluster::start(1, &["--no-scheduler"]);
    let _nodes = start_nodes(&cluster, &["node-1"], &[]);
    wait_nodes_ready(&cluster, 1);
    let mut procs = Killed(vec![component(
        &cluster,
        "scheduler",
        &["--leader-lease", "2s"],
    )]);
    apply(&cluster, &instance("first", "16Mi"));
    wait_ready_instances(&cluster, "first", 1, Duration::from_secs(60));

    let _ = procs.0[0].kill();
    let _ = procs.0[0].wait();
    apply(&cluster, &instance("second", "16Mi"));
    std::thread::sleep(Duration::from_secs(2));
    let second = list(&cluster, &["inst", "second"]).remove(0);
    assert!(
        second["spec"]["nodeName"].is_null(),
        "placed without a scheduler: {second}"
    );
    assert_eq!(second["status"]["phase"], "Pending");
    assert_eq!(
        wait_ready_instances(&cluster, "first", 1, Duration::from_secs(5)).len(),
        1
    );

    procs
        .0
        .push(component(&cluster, "scheduler", &["--leader-lease", "2s"]));
    wait_ready_instances(&cluster, "second", 1, Duration::from_secs(30));

    apply(&cluster, &instance("huge", "100Gi"));
    let described = wait_for("a reason in describe", Duration::from_secs(30), || {
        let text = stdout(&cluster.cli(0, &["describe", "inst", "huge"]));
        text.contains("FailedScheduling").then_some(text)
    });
    assert!(
        described.contains("0/1 nodes are available: 1 insufficient memory."),
        "{described}"
    );
}

fn lease_holder(cluster: &Cluster, name: &str) -> Option<String> {
    let lease = list(cluster, &["lease", name, "-n", "flotilla-system"]).pop()?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_string)
}

#[test]
fn one_scheduler_and_one_controller_manager_act_and_the_standby_takes_over() {
    let cluster = Cluster::start(1, &["--no-scheduler", "--no-controllers"]);
    let _nodes = start_nodes(&cluster, &["node-1"], &[]);
    wait_nodes_ready(&cluster, 1);
    let lease = ["--leader-lease", "2s"];
    let mut procs = Killed(vec![
        component(&cluster, "scheduler", &lease),
        component(&cluster, "scheduler", &lease),
        component(&cluster, "controllers", &lease),
        component(&cluster, "controllers", &lease),
    ]);
    let pids: Vec<u32> = procs.0.iter().map(Child::id).collect();
    apply(&cluster, &deployment("web", 2, "one", ""));
    wait_ready_instances(&cluster, "web", 2, Duration::from_secs(60));

    for (lease_name, candidates) in [
        ("flotilla-scheduler", [0, 1]),
        ("flotilla-controllers", [2, 3]),
    ] {
        let holder = lease_holder(&cluster, lease_name).expect("a holder");
        let leader = candidates
            .into_iter()
            .find(|&c| holder.contains(&format!("-{}-", pids[c])))
            .unwrap_or_else(|| panic!("{holder} is none of the candidates"));
        let _ = procs.0[leader].kill();
        let _ = procs.0[leader].wait();
        let killed = Instant::now();
        let next = wait_for("a new holder", Duration::from_secs(10), || {
            lease_holder(&cluster, lease_name).filter(|h| *h != holder)
        });
        let standby = candidates.into_iter().find(|&c| c != leader).unwrap();
        assert!(next.contains(&format!("-{}-", pids[standby])), "{next}");
        assert!(
            killed.elapsed() < Duration::from_secs(6),
            "took over after {:?}",
            killed.elapsed()
        );
    }
    // Both survivors act: a scale is carried out and placed.
    scale(&cluster, "web", 3);
    wait_ready_instances(&cluster, "web", 3, Duration::from_secs(30));
}

/// Polls the ready instances of `app` in a thread; returns the lowest count seen.
struct ReadyFloor {
    floor: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReadyFloor {
    fn watch(cluster: &Cluster, app: &str) -> Self {
        let floor = Arc::new(AtomicUsize::new(usize::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (floor.clone(), stop.clone());
        let config = cluster.config();
        let addr = cluster.peers[0].addr.clone();
        let selector = format!("app={app}");
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let out = crate::harness::run_cli(
                    &[
                        "--config",
                        config.to_str().unwrap(),
                        "--server",
                        &addr,
                        "get",
                        "inst",
                        "-l",
                        &selector,
                        "-o",
                        "json",
                    ],
                    None,
                    Duration::from_secs(10),
                );
                if out.status.success() {
                    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
                    let ready = v["items"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|i| is_ready(i))
                        .count();
                    f.fetch_min(ready, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            floor,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.floor.load(Ordering::SeqCst)
    }
}

#[test]
fn drain_moves_instances_without_going_below_max_unavailable() {
    let cluster = Cluster::start(1, &[]);
    let _nodes = start_nodes(&cluster, &["node-1", "node-2", "node-3"], &[]);
    wait_nodes_ready(&cluster, 3);
    let probe = "      readinessProbe:\n        httpGet: {path: /}\n        initialDelaySeconds: 1\n        periodSeconds: 1\n";
    apply(&cluster, &deployment("web", 6, "one", probe));
    let per_node = wait_ready_instances(&cluster, "web", 6, Duration::from_secs(60));
    assert_eq!(per_node.get("node-1"), Some(&2), "{per_node:?}");

    let floor = ReadyFloor::watch(&cluster, "web");
    let out = cluster.cli(0, &["drain", "node-1", "--timeout", "60s"]);
    let floor = floor.finish();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("node/node-1 drained"),
        "{}",
        stdout(&out)
    );
    assert!(
        floor >= 5,
        "{floor} ready during the drain; maxUnavailable is 1 of 6"
    );
    let per_node = wait_ready_instances(&cluster, "web", 6, Duration::from_secs(60));
    assert!(!per_node.contains_key("node-1"), "{per_node:?}");
    let node = &list(&cluster, &["node", "node-1"])[0];
    assert_eq!(node["spec"]["unschedulable"], true);

    assert!(cluster.cli(0, &["uncordon", "node-1"]).status.success());
    let node = &list(&cluster, &["node", "node-1"])[0];
    assert!(node["spec"]["unschedulable"].is_null() || node["spec"]["unschedulable"] == false);
}

#[test]
fn events_expire_after_the_event_ttl() {
    // No node: the instance cannot be placed, and the scheduler says so in
    // an event.
    let cluster = Cluster::start(1, &["--event-ttl", "3s"]);
    apply(&cluster, &instance("stuck", "16Mi"));
    let about_stuck = |cluster: &Cluster| -> Option<Vec<Value>> {
        let all = cluster.get_json(&["events"])?;
        Some(
            all["items"]
                .as_array()?
                .iter()
                .filter(|e| e["involvedObject"]["name"] == "stuck")
                .cloned()
                .collect(),
        )
    };
    let event = wait_for("a FailedScheduling event", Duration::from_secs(30), || {
        about_stuck(&cluster)?
            .into_iter()
            .find(|e| e["reason"] == "FailedScheduling")
    });
    let last_seen = flotilla_api::meta::parse_timestamp(event["lastTimestamp"].as_str().unwrap())
        .expect("a lastTimestamp");
    wait_for("the event to expire", Duration::from_secs(30), || {
        about_stuck(&cluster)?.is_empty().then_some(())
    });
    let gone_at = time::OffsetDateTime::now_utc();
    assert!(
        gone_at - last_seen >= time::Duration::seconds(3),
        "gone {} after it was last seen, before its TTL",
        gone_at - last_seen
    );
    // Only the event went: the instance still waits.
    let stuck = cluster.get_json(&["inst", "stuck"]).expect("the instance");
    assert_eq!(stuck["status"]["phase"], "Pending", "{stuck}");
}
