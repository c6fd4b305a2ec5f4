//! The failure table, one test per row: what fails and with which message,
//! what keeps working, and what `flotilla doctor` reports (it names the
//! broken link and exits non-zero). On a healthy cluster it exits 0 within
//! 3 s.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{skewed_clock, stderr, stdout, wait_for, Cluster, ServerProc};
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

pub(crate) fn start_node(cluster: &Cluster, peer: usize, name: &str, extra: &[&str]) -> NodeProc {
    start_node_env(cluster, peer, name, extra, &[])
}

fn start_node_env(
    cluster: &Cluster,
    peer: usize,
    name: &str,
    extra: &[&str],
    env: &[(String, String)],
) -> NodeProc {
    let token = cluster.token("1h");
    let mut flags = vec!["--lease-interval", "500ms"];
    flags.extend_from_slice(extra);
    NodeProc::start_env(
        Some(&cluster.peers[peer].addr),
        Some(&token),
        name,
        &cluster.dir.path().join(name),
        &flags,
        env,
    )
}

/// hello behind a Service with the ingress host `hello.local`.
pub(crate) fn hello_service(node_selector: &str) -> String {
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

pub(crate) fn wait_hello(ingress: &str) {
    wait_for("hello through the ingress", Duration::from_secs(60), || {
        let (status, body, _) = get(ingress, "hello.local", "/");
        (status == 200 && body.starts_with("hello from hello-")).then_some(())
    });
}

#[test]
fn doctor_on_a_healthy_cluster_exits_0_within_3_s() {
    let cluster = Cluster::start(3, &[]);
    let ingress = free_tcp_addr();
    let _one = start_node(&cluster, 0, "node-1", &["--ingress-addr", &ingress]);
    let _two = start_node(&cluster, 1, "node-2", &[]);
    wait_nodes_ready(&cluster, 2);
    // The nodes have posted their endpoints once the forwarder lines show them.
    wait_for("a full report", Duration::from_secs(20), || {
        let (_, report) = doctor(&cluster, 0);
        let forwarders = lines(&report, "forwarder");
        (forwarders.iter().any(|l| l.contains(&ingress))
            && forwarders.iter().all(|l| l.starts_with("OK")))
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
        "identity",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("OK") && l.split_whitespace().nth(1) == Some(link)),
            "no OK line for {link}:\n{text}"
        );
    }
    assert!(text.contains("3 of 3 peers answering, leader "), "{text}");
    assert!(
        text.contains("user:admin (groups system:masters) may read what doctor checks")
            && text.contains("the scheduler and the controllers may do what their loops need"),
        "{text}"
    );
    // Each node probed the other through the tunnel.
    for (from, to) in [("node-1", "node-2"), ("node-2", "node-1")] {
        assert!(
            text.lines().any(|l| l.starts_with("OK")
                && l.contains(&format!(
                    "{from}: forwarding services; tunnel to {to} answered in"
                ))),
            "no tunnel probe from {from} to {to}:\n{text}"
        );
    }
    // Every store peer's own certificate, from its handshake.
    for peer in &cluster.peers {
        assert!(
            text.lines().any(|l| l.starts_with("OK")
                && l.contains("certificates")
                && l.contains(&format!("({})'s certificate (peer:", peer.addr))),
            "no certificate line for the peer at {}:\n{text}",
            peer.addr
        );
    }
    // Three peers and two nodes read their clocks.
    assert!(
        text.contains("5 clocks of peers and nodes within "),
        "{text}"
    );
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
    // Its tunnel is silent too: the agent is down, not just cut off.
    assert!(
        line.contains("its tunnel does not answer node-1 either"),
        "{line}"
    );
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
    // Offline, not down: node-1 still reaches it through the tunnel.
    assert!(
        line.contains("its tunnel still answers node-1")
            && line.contains("cannot reach the apiserver"),
        "{line}"
    );
    let (_, report) = doctor(&cluster, 0);
    let store = lines(&report, "store").join("\n");
    assert!(
        store.starts_with("WARN") && store.contains("2 of 3 peers answering"),
        "{store}"
    );
    // It keeps running what it was given.
    wait_hello(&ingress);
}

#[test]
fn clocks_apart() {
    // Peer 2's clock runs 2 s behind and node-2's 3 s ahead: 5 s apart.
    let mut cluster = Cluster::start(1, &[]);
    let token = cluster.peer_token("1h");
    let behind = ServerProc::start_env(
        &cluster.dir.path().join("peer-2"),
        &["--join", &cluster.peers[0].addr, "--token", &token],
        &skewed_clock(-2_000),
    )
    .expect("the skewed peer joins");
    cluster.peers.push(behind);
    cluster.wait_members(2);
    let _one = start_node(&cluster, 0, "node-1", &[]);
    let _two = start_node_env(&cluster, 1, "node-2", &[], &skewed_clock(3_000));
    wait_nodes_ready(&cluster, 2);

    let (code, report) = wait_for(
        "doctor to compare five clocks",
        Duration::from_secs(30),
        || {
            let (code, report) = doctor(&cluster, 0);
            let clocks = lines(&report, "clocks");
            clocks
                .iter()
                .any(|l| l.starts_with("WARN node node-2 is "))
                .then_some((code, report))
        },
    );
    assert_eq!(code, 1, "a warning, not a failure: {report}");
    let line = lines(&report, "clocks")
        .into_iter()
        .find(|l| l.starts_with("WARN node node-2 is "))
        .unwrap();
    let behind_peer = format!("peer 2 ({})", cluster.peers[1].addr);
    assert!(line.contains(&format!("ahead of {behind_peer}")), "{line}");
    let seconds: f64 = line
        .trim_start_matches("WARN node node-2 is ")
        .split(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no seconds in {line}"));
    assert!((4.5..=5.5).contains(&seconds), "{line}");
    assert_eq!(report["firstBroken"], "clocks", "{report}");
    // Everything else still works: the skewed node runs what it is given.
    apply(
        &cluster,
        &format!("{}  nodeName: node-2\n", instance("on-skewed-node", "16Mi")),
    );
    crate::workloads::wait_ready_instances(&cluster, "on-skewed-node", 1, Duration::from_secs(60));
}

#[test]
fn a_fresh_server_calls_its_components_starting_not_failed() {
    let started = Instant::now();
    let cluster = Cluster::start(1, &["--no-scheduler"]);
    // The controllers take their lease as soon as the server serves.
    let (_, report) = wait_for("the controllers' lease", Duration::from_secs(10), || {
        let (code, report) = doctor(&cluster, 0);
        lines(&report, "controllers")
            .iter()
            .any(|l| l.starts_with("OK active:"))
            .then_some((code, report))
    });
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the controllers' first lease came {took:?} after the server was started"
    );
    // No candidate for the scheduler, but the server has just started: the
    // scheduler may yet take its lease, so it is starting, not failed.
    let scheduler = lines(&report, "scheduler");
    assert!(
        scheduler.len() == 1
            && scheduler[0].starts_with(
                "WARN the scheduler is starting: no lease flotilla-system/flotilla-scheduler yet, "
            ),
        "{scheduler:?}"
    );
    assert_ne!(report["status"], "FAIL", "{report}");
}

#[test]
fn a_node_grace_period_shorter_than_the_lease_interval_is_warned_about() {
    let cluster = Cluster::start(1, &["--node-grace-period", "2s"]);
    let token = cluster.token("1h");
    let _node = NodeProc::start_env(
        Some(&cluster.peers[0].addr),
        Some(&token),
        "node-1",
        &cluster.dir.path().join("node-1"),
        &["--lease-interval", "3s"],
        &[],
    );
    let line = wait_for("doctor's warning", Duration::from_secs(30), || {
        let (_, report) = doctor(&cluster, 0);
        lines(&report, "node")
            .into_iter()
            .find(|l| l.starts_with("WARN node-1: renews its lease every 3.0s"))
    });
    assert!(
        line.contains("but the node grace period is 2.0s: it is marked NotReady between renewals"),
        "{line}"
    );

    // And at start, against the nodes' default interval.
    let dir = tempfile::tempdir().unwrap();
    let mut server = std::process::Command::new(crate::harness::BIN)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--node-grace-period",
            "5s",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr_pipe = server.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr_pipe)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("--node-grace-period") {
                let _ = tx.send(line);
            }
        }
    });
    let warned = rx.recv_timeout(Duration::from_secs(20));
    let _ = server.kill();
    let _ = server.wait();
    let warned = warned.expect("no warning about the grace period at start");
    assert!(
        warned.contains(
            "--node-grace-period 5s is not longer than the nodes' default lease interval (10s)"
        ),
        "{warned}"
    );
}
