//! The guest SDK's examples end to end: each deployed from its own directory
//! with `flotilla apply -f examples/NAME/` and exercised for what it shows,
//! the node asking a command-world instance to stop, and the SDK's hello
//! answering under `wasmtime serve` (the wasmtime 48 CLI's own command).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{stderr, stdout, wait_for, Cluster, BIN};
use crate::network::{free_tcp_addr, get};
use crate::node::{examples, NodeProc};
use crate::workloads::{wait_nodes_ready, wait_ready_instances};

/// `examples/NAME/`, the directory a user applies.
fn example_dir(name: &str) -> PathBuf {
    examples();
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

fn apply_example(cluster: &Cluster, name: &str) {
    let dir = example_dir(name);
    let out = cluster.cli(0, &["apply", "-f", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "apply -f examples/{name}/: {}",
        stderr(&out)
    );
}

fn get_json(cluster: &Cluster, args: &[&str]) -> Option<Value> {
    cluster.get_json(args)
}

/// The names of the instances labelled `selector`.
fn instance_names(cluster: &Cluster, selector: &str) -> Vec<String> {
    get_json(cluster, &["inst", "-l", selector])
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

fn logs(cluster: &Cluster, instance: &str) -> String {
    stdout(&cluster.cli(0, &["logs", instance]))
}

/// Waits until the logs of some instance labelled `selector` contain every
/// one of `wanted`, and returns them.
fn wait_logs(cluster: &Cluster, selector: &str, wanted: &[&str], timeout: Duration) -> String {
    wait_for(
        &format!("logs of {selector} with {wanted:?}"),
        timeout,
        || {
            instance_names(cluster, selector)
                .iter()
                .map(|name| logs(cluster, name))
                .find(|text| wanted.iter().all(|w| text.contains(w)))
        },
    )
}

#[test]
fn sdk_examples_deploy_from_their_directories_and_work() {
    let cluster = Cluster::start(1, &[]);
    let token = cluster.token("1h");
    let ingress = free_tcp_addr();
    let mut nodes: Vec<NodeProc> = ["node-1", "node-2"]
        .iter()
        .map(|name| {
            let mut flags = vec!["--lease-interval", "500ms", "--busy-timeout", "1s"];
            if *name == "node-1" {
                flags.extend_from_slice(&["--ingress-addr", &ingress]);
            }
            NodeProc::start(
                Some(&cluster.peers[0].addr),
                Some(&token),
                name,
                &cluster.dir.path().join(name),
                &flags,
            )
        })
        .collect();
    wait_nodes_ready(&cluster, 2);
    for name in ["backend", "frontend", "primes", "edge", "plugin", "ticker"] {
        apply_example(&cluster, name);
    }

    // frontend -> backend by service name: text, and JSON both ways.
    wait_ready_instances(&cluster, "backend", 2, Duration::from_secs(60));
    wait_ready_instances(&cluster, "frontend", 1, Duration::from_secs(60));
    let body = wait_for("frontend -> backend", Duration::from_secs(20), || {
        let (status, body, _) = get(&ingress, "frontend.local", "/");
        (status == 200).then_some(body)
    });
    assert!(
        body.starts_with("frontend frontend-") && body.contains("-> backend backend-"),
        "{body}"
    );
    let (status, body, _) = get(&ingress, "frontend.local", "/items");
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).expect("frontend /items is JSON");
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 3, "{body}");
    assert!(
        items.iter().all(|i| i["served_by"]
            .as_str()
            .unwrap_or("")
            .starts_with("backend-")),
        "{body}"
    );
    let (status, body, _) = get(&ingress, "frontend.local", "/?to=http://backend/items/9");
    assert_eq!(status, 404, "the backend's status is passed on: {body}");
    assert!(body.contains("no item with id \"9\""), "{body}");
    let (status, body, _) = get(&ingress, "frontend.local", "/?to=ftp://backend/");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not an http:// or https:// URL"), "{body}");

    // The Job: counts, prints, exits 0.
    wait_for("job primes succeeded", Duration::from_secs(60), || {
        let job = get_json(&cluster, &["job", "primes"])?;
        (job["status"]["succeeded"] == 1).then_some(())
    });
    wait_logs(
        &cluster,
        "job-name=primes",
        &[
            "primes below 1000000: 78498",
            "INFO  counting primes below 1000000 on node-",
        ],
        Duration::from_secs(10),
    );

    // The edge DaemonSet: a sensor on each node, readings from both at the
    // collector.
    wait_for("a sensor on each node", Duration::from_secs(30), || {
        let ds = get_json(&cluster, &["daemonset", "sensor"])?;
        (ds["status"]["numberReady"] == 2).then_some(())
    });
    wait_logs(
        &cluster,
        "app=collector",
        &["reading from node-1: ", "reading from node-2: "],
        Duration::from_secs(40),
    );

    // The plugin: within its memory limit it works; over it, and spinning
    // past the busy timeout, the request is killed and the answer and the
    // instance's log say why; egress is denied, with an event.
    wait_for("plugin answers", Duration::from_secs(30), || {
        let (status, body, _) = get(&ingress, "plugin.local", "/alloc?mb=2");
        (status == 200).then_some(body)
    });
    let (status, body, _) = get(&ingress, "plugin.local", "/alloc?mb=64");
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("OOMKilled") && body.contains("memory limit"),
        "{body}"
    );
    let (status, body, _) = get(&ingress, "plugin.local", "/spin");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("cpu limit exceeded"), "{body}");
    let refused = free_tcp_addr();
    let (status, body, _) = get(
        &ingress,
        "plugin.local",
        &format!("/fetch?url=http://{refused}/"),
    );
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains(&format!("GET http://{refused}/: denied")),
        "{body}"
    );
    let plugin_log = logs(&cluster, "plugin");
    for wanted in [
        "[flotilla] request to /alloc failed: OOMKilled",
        "[flotilla] request to /spin failed: CPULimitExceeded: cpu limit exceeded",
        format!("[flotilla] outgoing HTTP to http://{refused} is denied: not in spec.allowedOutboundHosts").as_str(),
    ] {
        assert!(plugin_log.contains(wanted), "{wanted:?} not in:\n{plugin_log}");
    }
    wait_for(
        "an EgressDenied event for plugin",
        Duration::from_secs(10),
        || {
            let events = stdout(&cluster.cli(0, &["get", "events"]));
            events
                .lines()
                .any(|l| l.contains("EgressDenied") && l.contains("plugin"))
                .then_some(())
        },
    );

    // ticker: asked to stop (its stdin closed), it says so and ends long
    // before its 30 s grace period.
    wait_logs(&cluster, "app=ticker", &["tick 2"], Duration::from_secs(30));
    let mut follow = Command::new(BIN)
        .args(["--config", cluster.config().to_str().unwrap()])
        .args(["logs", "-f", "ticker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = follow_lines(follow.stdout.take().unwrap());
    // The follower is attached once it has passed on a tick.
    recv_line_containing(&lines, "tick ", Duration::from_secs(10));
    let asked = Instant::now();
    let out = cluster.cli(0, &["delete", "inst", "ticker"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = recv_line_containing(&lines, "stop requested", Duration::from_secs(10));
    let took = asked.elapsed();
    kill(&mut follow);
    assert!(
        line.contains("INFO  stop requested: stopping after"),
        "{line}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");

    for node in &mut nodes {
        node.kill9();
    }
}

/// Lines of a child's output, read on a thread.
fn follow_lines(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn recv_line_containing(lines: &mpsc::Receiver<String>, wanted: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(wanted) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line with {wanted:?} within {timeout:?}; saw {seen:?}"),
        }
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// `wasmtime serve` of the wasmtime 48 CLI: the `wasmtime-serve` example
/// (tools/wasmtime-serve), which `cargo test --workspace` builds beside this
/// binary; built here when a narrower command left it out.
fn wasmtime_serve() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let bin = Path::new(BIN)
            .parent()
            .expect("the flotilla binary's directory")
            .join("examples/wasmtime-serve");
        if !bin.exists() {
            crate::harness::cargo_build(
                "the wasmtime-serve example",
                Path::new(env!("CARGO_MANIFEST_DIR")),
                &[
                    "-p",
                    "flotilla-wasmtime-serve",
                    "--example",
                    "wasmtime-serve",
                ],
                None,
            );
        }
        bin
    })
}

/// A `wasmtime serve -Scli` of `wasm` on a free loopback port.
struct WasmtimeServe {
    child: Child,
    addr: String,
}

impl WasmtimeServe {
    fn start(wasm: &Path) -> Self {
        let mut child = Command::new(wasmtime_serve())
            .args(["-Scli", "--addr", "127.0.0.1:0"])
            .arg(wasm)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wasmtime-serve");
        let lines = follow_lines(child.stderr.take().unwrap());
        // Serving once it says where (it compiles the component first).
        let ready = recv_line_containing(&lines, "Serving HTTP on", Duration::from_secs(60));
        std::thread::spawn(move || for _ in lines {});
        let addr = ready
            .split("http://")
            .nth(1)
            .map(|rest| rest.trim_end_matches('/').to_string())
            .unwrap_or_else(|| panic!("no address in {ready:?}"));
        WasmtimeServe { child, addr }
    }
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

#[test]
fn sdk_components_answer_under_wasmtime_serve() {
    let wasm = examples();
    let hello = WasmtimeServe::start(&wasm.join("hello.wasm"));
    let (status, body, _) = get(&hello.addr, "localhost", "/anything");
    assert_eq!((status, body.as_str()), (200, "hello from world\n"));

    // Routing and JSON work the same outside Flotilla.
    let backend = WasmtimeServe::start(&wasm.join("backend.wasm"));
    let (status, body, _) = get(&backend.addr, "localhost", "/items/2");
    assert_eq!(status, 200, "{body}");
    let item: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        (item["id"].clone(), item["name"].clone()),
        (2.into(), "buoy".into())
    );
    let (status, body, _) = get(&backend.addr, "localhost", "/items/7");
    assert_eq!(status, 404, "{body}");
    assert_eq!(body, "no item with id \"7\"\n");
}
