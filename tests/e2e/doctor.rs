//! The failure table, one test per row: what fails and with which message,
//! what keeps working, and what `flotilla doctor` reports (it names the
//! broken link and exits non-zero). On a healthy cluster it exits 0 within
//! 3 s.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{stderr, stdout, wait_for, Cluster};
use crate::network::{free_tcp_addr, get};
use crate::node::{examples, NodeProc};
use crate::workloads::{apply, component, instance, wait_nodes_ready, Killed};

/// `flotilla doctor -o json` against peer `i`: its exit code and report.
fn doctor(cluster: &Cluster, i: usize) -> (i32, Value) {
    let out = cluster.cli(i, &["doctor", "-o", "json"]);
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}\n{}",
            stdout(&out),
            stderr(&out)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

/// The checks of `link`, as `STATUS message` lines.
fn lines(report: &Value, link: &str) -> Vec<String> {
    report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["link"] == link)
        .map(|c| {
            format!(
                "{} {}",
                c["status"].as_str().unwrap_or(""),
                c["message"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Waits until doctor names `link` as the first broken one with a FAIL whose
/// message contains `wanted`; returns the exit code and that message.
fn wait_broken(cluster: &Cluster, i: usize, link: &str, wanted: &str) -> (i32, String) {
    wait_for(
        &format!("doctor to name {link} ({wanted})"),
        Duration::from_secs(30),
        || {
            let (code, report) = doctor(cluster, i);
            let named = report["firstBroken"] == link && report["status"] == "FAIL";
            let line = lines(&report, link)
                .into_iter()
                .find(|l| l.starts_with("FAIL") && l.contains(wanted))?;
            named.then_some((code, line))
        },
    )
}

/// An instance as JSON.
fn object(cluster: &Cluster, instance: &str) -> Value {
    let out = cluster.cli(0, &["get", "inst", instance, "-o", "json"]);
    serde_json::from_str(&stdout(&out)).unwrap_or(Value::Null)
}

fn start_node(cluster: &Cluster, peer: usize, name: &str, extra: &[&str]) -> NodeProc {
    let token = cluster.token("1h");
    let mut flags = vec!["--lease-interval", "500ms"];
    flags.extend_from_slice(extra);
    NodeProc::start(
        Some(&cluster.peers[peer].addr),
        Some(&token),
        name,
        &cluster.dir.path().join(name),
        &flags,
    )
}

/// hello behind a Service with the ingress host `hello.local`.
fn hello_service(node_selector: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1
kind: Deployment
metadata:
  name: hello
spec:
  replicas: 1
  selector:
    matchLabels: {{app: hello}}
  template:
    metadata:
      labels: {{app: hello}}
    spec:
      module: {}
      world: http
      nodeSelector: {{{node_selector}}}
---
apiVersion: flotilla.dev/v1
kind: Service
metadata:
  name: hello
spec:
  selector: {{app: hello}}
  ports:
  - port: 80
  ingress: {{host: hello.local}}
",
        examples().join("hello.wasm").display()
    )
}

fn wait_hello(ingress: &str) {
    wait_for("hello through the ingress", Duration::from_secs(60), || {
        let (status, body, _) = get(ingress, "hello.local", "/");
        (status == 200 && body.starts_with("hello from hello-")).then_some(())
    });
}

#[test]
fn doctor_on_a_healthy_cluster_exits_0_within_3_s() {
    let cluster = Cluster::start(3, &[]);
    let ingress = free_tcp_addr();
    let _node = start_node(&cluster, 0, "node-1", &["--ingress-addr", &ingress]);
    wait_nodes_ready(&cluster, 1);
    // The node has posted its endpoints once the forwarder line shows them.
    wait_for("a full report", Duration::from_secs(20), || {
        let (_, report) = doctor(&cluster, 0);
        lines(&report, "forwarder")
            .iter()
            .any(|l| l.contains(&ingress))
            .then_some(())
    });

    let started = Instant::now();
    let out = cluster.cli(0, &["doctor"]);
    let took = started.elapsed();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(took < Duration::from_secs(3), "took {took:?}");
    for link in [
        "config",
        "apiserver",
        "store",
        "scheduler",
        "controllers",
        "node",
        "forwarder",
        "certificates",
        "clocks",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("OK") && l.split_whitespace().nth(1) == Some(link)),
            "no OK line for {link}:\n{text}"
        );
    }
    assert!(text.contains("3 of 3 peers answering, leader "), "{text}");
    assert!(text.trim_end().ends_with("all links OK"), "{text}");
}

#[test]
fn apiserver_down() {
    let cluster = Cluster::start(1, &[]);
    let ingress = free_tcp_addr();
    let _node = start_node(&cluster, 0, "node-1", &["--ingress-addr", &ingress]);
    wait_nodes_ready(&cluster, 1);
    apply(&cluster, &hello_service("flotilla.dev/hostname: node-1"));
    wait_hello(&ingress);

    let mut cluster = cluster;
    cluster.peers[0].kill9();

    // The CLI says so and exits non-zero, quickly.
    let started = Instant::now();
    let out = cluster.cli(0, &["get", "nodes"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "unable to connect to the server at {}",
            cluster.peers[0].addr
        )),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Running instances keep serving.
    wait_hello(&ingress);
    // doctor names the apiserver.
    let (code, line) = wait_broken(
        &cluster,
        0,
        "apiserver",
        "unable to connect to the server at",
    );
    assert_eq!(code, 2, "{line}");
}

#[test]
fn store_quorum_lost() {
    let mut cluster = Cluster::start(3, &[]);
    cluster.peers[1].kill9();
    cluster.peers[2].kill9();

    let started = Instant::now();
    let out = cluster.cli_in(
        0,
        &["apply", "-f", "-"],
        Some(&crate::harness::service_manifest("after")),
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no quorum"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(10));

    let (code, line) = wait_broken(&cluster, 0, "store", "no quorum");
    assert_eq!(code, 2, "{line}");
    assert!(
        line.contains("1 of 3 peers answering") && line.contains("not answering: "),
        "{line}"
    );
    for peer in [&cluster.peers[1].addr, &cluster.peers[2].addr] {
        assert!(line.contains(peer.as_str()), "{peer} not named: {line}");
    }
}

#[test]
fn scheduler_stopped() {
    let cluster = Cluster::start(1, &["--no-scheduler"]);
    let _node = start_node(&cluster, 0, "node-1", &[]);
    wait_nodes_ready(&cluster, 1);
    let mut procs = Killed(vec![component(
        &cluster,
        "scheduler",
        &["--leader-lease", "2s"],
    )]);
    apply(&cluster, &instance("first", "16Mi"));
    crate::workloads::wait_ready_instances(&cluster, "first", 1, Duration::from_secs(60));

    let _ = procs.0[0].kill();
    let _ = procs.0[0].wait();
    apply(&cluster, &instance("second", "16Mi"));

    let (code, line) = wait_broken(&cluster, 0, "scheduler", "the scheduler stopped");
    assert_eq!(code, 2, "{line}");
    assert!(
        line.contains("lease flotilla-scheduler was last renewed"),
        "{line}"
    );
    // New instances stay Pending; running ones are untouched.
    let second = object(&cluster, "second");
    assert!(second["spec"]["nodeName"].is_null(), "{second}");
    assert_eq!(second["status"]["phase"], "Pending");
    let first = object(&cluster, "first");
    assert_eq!(first["status"]["phase"], "Running", "{first}");
}

#[test]
fn node_agent_killed() {
    let cluster = Cluster::start(1, &["--node-grace-period", "2s"]);
    let _one = start_node(&cluster, 0, "node-1", &[]);
    let mut two = start_node(&cluster, 0, "node-2", &[]);
    wait_nodes_ready(&cluster, 2);
    two.kill9();

    let (code, line) = wait_broken(&cluster, 0, "node", "node-2: NotReady");
    assert_eq!(code, 2, "{line}");
    let (_, report) = doctor(&cluster, 0);
    assert!(
        lines(&report, "node")
            .iter()
            .any(|l| l.starts_with("OK node-1: Ready")),
        "{report}"
    );
}

#[test]
fn forwarder_stopped() {
    let cluster = Cluster::start(1, &[]);
    let _node = start_node(&cluster, 0, "node-1", &["--no-service-forwarder"]);
    wait_nodes_ready(&cluster, 1);
    let (code, line) = wait_broken(
        &cluster,
        0,
        "forwarder",
        "node-1: the service forwarder is off",
    );
    assert_eq!(code, 2, "{line}");
    assert!(line.contains("instance IPs still route"), "{line}");

    // From an instance on that node: a service name fails, saying why; an
    // instance IP still answers.
    for example in ["backend", "frontend"] {
        let dir = examples()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join(example);
        let out = cluster.cli(0, &["apply", "-f", dir.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    crate::workloads::wait_ready_instances(&cluster, "backend", 2, Duration::from_secs(60));
    crate::workloads::wait_ready_instances(&cluster, "frontend", 1, Duration::from_secs(60));
    let instances = |app: &str| -> Vec<Value> {
        let out = cluster.cli(
            0,
            &["get", "inst", "-l", &format!("app={app}"), "-o", "json"],
        );
        let list: Value = serde_json::from_str(&stdout(&out)).unwrap_or(Value::Null);
        list["items"].as_array().cloned().unwrap_or_default()
    };
    let frontend = instances("frontend")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let backend_ip = instances("backend")[0]["status"]["instanceIP"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut forward, addr) = crate::node::port_forward(
        &cluster.config(),
        &cluster.peers[0].addr,
        &format!("instance/{frontend}"),
    );
    let by_name = crate::network::get(&addr, "frontend", "/?to=http://backend/");
    let by_ip = crate::network::get(&addr, "frontend", &format!("/?to=http://{backend_ip}/"));
    let _ = forward.kill();
    let _ = forward.wait();
    assert_eq!(by_name.0, 502, "{}", by_name.1);
    assert!(
        by_name.1.contains("GET http://backend/: unavailable"),
        "{}",
        by_name.1
    );
    assert_eq!(by_ip.0, 200, "{}", by_ip.1);
    assert!(by_ip.1.contains("-> backend backend-"), "{}", by_ip.1);
}

#[test]
fn node_offline() {
    // node-2 reaches the control plane only through peer 3; with that peer
    // gone it is offline while the cluster keeps its quorum.
    let mut cluster = Cluster::start(3, &["--node-grace-period", "2s"]);
    let ingress = free_tcp_addr();
    let _one = start_node(&cluster, 0, "node-1", &[]);
    let _two = start_node(&cluster, 2, "node-2", &["--ingress-addr", &ingress]);
    wait_nodes_ready(&cluster, 2);
    apply(&cluster, &hello_service("flotilla.dev/hostname: node-2"));
    wait_hello(&ingress);

    cluster.peers[2].kill9();
    let (code, line) = wait_broken(&cluster, 0, "node", "node-2: NotReady");
    assert_eq!(code, 2, "{line}");
    let (_, report) = doctor(&cluster, 0);
    let store = lines(&report, "store").join("\n");
    assert!(
        store.starts_with("WARN") && store.contains("2 of 3 peers answering"),
        "{store}"
    );
    // It keeps running what it was given.
    wait_hello(&ingress);
}
