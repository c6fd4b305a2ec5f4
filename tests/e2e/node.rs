//! Nodes and the runtime end to end: joining, running real guests, logs,
//! port-forward, failures in status, static instances, offline running,
//! module checks, and `flotilla up`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use flotilla_client::wire::{
    read_frame, write_frame, RequestV1, Response, ResponseV1, UploadChunk, MAX_FRAME,
};

use crate::harness::{spawn_reporting_env, stderr, stdout, wait_for, Cluster, BIN};

/// Builds the guest examples once (a build step of the tests: a fresh clone
/// needs nothing but cargo and the wasm32-wasip2 target).
pub fn examples() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        crate::harness::cargo_build("the examples", &dir, &["--release"], None);
        dir.join("target/wasm32-wasip2/release")
    })
}

/// One `flotilla node` process.
pub struct NodeProc {
    child: Option<Child>,
    pub name: String,
    pub data_dir: PathBuf,
    server: Option<String>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl NodeProc {
    pub fn start(
        server: Option<&str>,
        token: Option<&str>,
        name: &str,
        data_dir: &Path,
        extra: &[&str],
    ) -> Self {
        Self::start_env(server, token, name, data_dir, extra, &[])
    }

    /// [`NodeProc::start`] with extra environment variables (kept on restart).
    pub fn start_env(
        server: Option<&str>,
        token: Option<&str>,
        name: &str,
        data_dir: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut node = Self {
            child: None,
            name: name.into(),
            data_dir: data_dir.to_path_buf(),
            server: server.map(str::to_string),
            extra,
            env: env.to_vec(),
        };
        node.spawn(token);
        node
    }

    fn spawn(&mut self, token: Option<&str>) {
        let mut args: Vec<String> = Vec::new();
        if let Some(s) = &self.server {
            args.extend(["--server".into(), s.clone()]);
        }
        args.extend([
            "node".into(),
            "--name".into(),
            self.name.clone(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
        ]);
        if let Some(t) = token {
            args.extend(["--token".into(), t.into()]);
        }
        args.extend(self.extra.iter().cloned());
        let (child, _) = spawn_reporting_env(&args, &self.env).expect("node starts");
        self.child = Some(child);
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("a running node");
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        wait_for("the node to exit", within, || child.try_wait().unwrap())
    }

    /// Restarts without a token: the node must come back as itself.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn(None);
    }

    pub fn log_file(&self, instance: &str) -> PathBuf {
        self.data_dir
            .join("logs")
            .join(format!("default_{instance}"))
            .join("current.log")
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

const NODE_FLAGS: &[&str] = &[
    "--restart-backoff",
    "1s",
    "--restart-backoff-max",
    "4s",
    "--busy-timeout",
    "1s",
    "--lease-interval",
    "2s",
];

fn with_nodes(n: usize) -> (Cluster, Vec<NodeProc>) {
    let cluster = Cluster::start(1, &[]);
    let token = cluster.token("1h");
    let nodes = (1..=n)
        .map(|i| {
            let name = format!("node-{i}");
            NodeProc::start(
                Some(&cluster.peers[0].addr),
                Some(&token),
                &name,
                &cluster.dir.path().join(&name),
                NODE_FLAGS,
            )
        })
        .collect();
    (cluster, nodes)
}

fn instance_manifest(name: &str, node: &str, module: &Path, extra_spec: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1\nkind: Instance\nmetadata:\n  name: {name}\nspec:\n  module: {}\n  nodeName: {node}\n{extra_spec}",
        module.display()
    )
}

fn get_json(cluster: &Cluster, args: &[&str]) -> Option<serde_json::Value> {
    cluster.get_json(args)
}

fn phase(cluster: &Cluster, name: &str) -> Option<serde_json::Value> {
    get_json(cluster, &["inst", name])
}

#[test]
fn nodes_join_show_ready_capacity_and_rejoin_without_a_token() {
    let (cluster, mut nodes) = with_nodes(2);
    let ready = |cluster: &Cluster| -> Option<Vec<serde_json::Value>> {
        let v = get_json(cluster, &["nodes"])?;
        let items = v["items"].as_array()?.clone();
        let all_ready = items.len() == 2
            && items.iter().all(|n| {
                n["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            });
        all_ready.then_some(items)
    };
    let items = wait_for("two Ready nodes", Duration::from_secs(20), || {
        ready(&cluster)
    });
    for n in &items {
        assert_eq!(n["status"]["capacity"]["cpu"], "2000m");
        assert_eq!(n["status"]["capacity"]["memory"], "4Gi");
        assert_eq!(n["status"]["capacity"]["instances"], 1000);
        assert_eq!(n["status"]["nodeInfo"]["wasmtimeVersion"], "48.0.8");
    }
    nodes[0].restart();
    let out = cluster.cli(0, &["get", "nodes"]);
    assert_eq!(
        stdout(&out).lines().count(),
        3,
        "still exactly two nodes: {}",
        stdout(&out)
    );
    wait_for(
        "the restarted node Ready again",
        Duration::from_secs(20),
        || ready(&cluster),
    );
}

#[test]
fn a_node_stopping_gives_its_instances_their_grace_period_together() {
    let (cluster, mut nodes) = with_nodes(1);
    let wat = cluster.dir.path().join("sleeper.wat");
    std::fs::write(&wat, crate::metrics::SLEEPER_WAT).unwrap();
    wait_for("the node to register", Duration::from_secs(20), || {
        get_json(&cluster, &["node", "node-1"])
    });
    // Guests that ignore the stop signal: each is killed after its 3 s.
    let names = ["stubborn-1", "stubborn-2", "stubborn-3"];
    for name in names {
        let out = cluster.cli_in(
            0,
            &["apply", "-f", "-"],
            Some(&instance_manifest(
                name,
                "node-1",
                &wat,
                "  terminationGracePeriodSeconds: 3\n",
            )),
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    for name in names {
        wait_for(&format!("{name} Running"), Duration::from_secs(20), || {
            (phase(&cluster, name)?["status"]["phase"] == "Running").then_some(())
        });
    }
    let started = Instant::now();
    let status = nodes[0].terminate(Duration::from_secs(20));
    let took = started.elapsed();
    assert!(status.success(), "{status}");
    // Together: about one grace period, not three.
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(6),
        "the node took {took:?} to stop"
    );
    for name in names {
        let log = std::fs::read_to_string(nodes[0].log_file(name)).unwrap_or_default();
        assert!(
            log.contains("did not stop within its grace period of 3s: killed"),
            "{name}: {log}"
        );
    }
}

#[test]
fn an_instance_created_again_during_the_old_ones_grace_period_keeps_its_log() {
    let (cluster, nodes) = with_nodes(1);
    let wat = cluster.dir.path().join("sleeper.wat");
    std::fs::write(&wat, crate::metrics::SLEEPER_WAT).unwrap();
    wait_for("the node to register", Duration::from_secs(20), || {
        get_json(&cluster, &["node", "node-1"])
    });
    let old = instance_manifest(
        "again",
        "node-1",
        &wat,
        "  terminationGracePeriodSeconds: 2\n",
    );
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&old));
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the old one Running", Duration::from_secs(20), || {
        (phase(&cluster, "again")?["status"]["phase"] == "Running").then_some(())
    });
    // Deleted (it ignores the stop and is killed after 2 s), and at once
    // created again as a ticker under the same name.
    let out = cluster.cli(0, &["delete", "inst", "again"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let new = instance_manifest("again", "node-1", &examples().join("ticker.wasm"), "");
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&new));
    assert!(out.status.success(), "{}", stderr(&out));
    // The old one is killed after its grace period (it says so in the log it
    // shares with the new one); after that, the new one's log is still there
    // and still growing.
    let log = nodes[0].log_file("again");
    wait_for("the old one killed", Duration::from_secs(15), || {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("did not stop within its grace period of 2s: killed")
            .then_some(())
    });
    let before = wait_for("the new one's ticks", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("tick").then_some(text)
    });
    wait_for("the new one's log to grow", Duration::from_secs(10), || {
        let now = std::fs::read_to_string(&log).ok()?;
        (now.len() > before.len()).then_some(())
    });
}

#[test]
fn ticker_runs_streams_logs_and_stops_on_delete() {
    let (cluster, nodes) = with_nodes(1);
    let ticker = examples().join("ticker.wasm");
    wait_for("the node to register", Duration::from_secs(20), || {
        get_json(&cluster, &["node", "node-1"])
    });
    let applied = Instant::now();
    let out = cluster.cli_in(
        0,
        &["apply", "-f", "-"],
        Some(&instance_manifest("ticker", "node-1", &ticker, "")),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("ticker Running", Duration::from_secs(10), || {
        let v = phase(&cluster, "ticker")?;
        (v["status"]["phase"] == "Running").then_some(())
    });
    let to_running = applied.elapsed();
    assert!(
        to_running <= Duration::from_secs(2),
        "Running after {to_running:?}"
    );

    let config = cluster.config();
    let follow_ticker = || {
        Command::new(BIN)
            .args([
                "--config",
                config.to_str().unwrap(),
                "--server",
                &cluster.peers[0].addr,
                "logs",
                "-f",
                "ticker",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut follow = follow_ticker();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let started = Instant::now();
    let mut seen = Vec::new();
    let ticks = |seen: &[String]| seen.iter().filter(|l| l.starts_with("tick ")).count();
    while ticks(&seen) < 3 && started.elapsed() < Duration::from_secs(10) {
        if let Some(Ok(line)) = lines.next() {
            seen.push(line);
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(ticks(&seen) >= 3, "logs -f streamed {seen:?}");
    // Ticks (stdout) and the ticker's own log line (stderr), nothing else.
    assert!(
        seen.iter()
            .all(|l| l.starts_with("tick ") || l == "INFO  ticker starting"),
        "{seen:?}"
    );
    // `logs -f | head -1`: once its reader is gone, the next tick ends it
    // quietly, with SIGPIPE's status.
    let mut head = follow_ticker();
    let mut first = String::new();
    BufReader::new(head.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let status = wait_for("logs -f to end", Duration::from_secs(10), || {
        head.try_wait().unwrap()
    });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut head.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(141), "{err}");
    assert!(
        !err.contains("Broken pipe") && !err.contains("panicked"),
        "{err}"
    );

    let out = cluster.cli(0, &["delete", "inst", "ticker"]);
    assert!(out.status.success());
    let deleted = Instant::now();
    let log_dir = nodes[0].log_file("ticker").parent().unwrap().to_path_buf();
    wait_for(
        "the node to stop the ticker",
        Duration::from_secs(5),
        || (!log_dir.exists()).then_some(()),
    );
    assert!(
        deleted.elapsed() <= Duration::from_secs(2),
        "stopped after {:?}",
        deleted.elapsed()
    );
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

pub(crate) fn port_forward(config: &Path, server: &str, target: &str) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args([
            "--config",
            config.to_str().unwrap(),
            "--server",
            server,
            "port-forward",
            target,
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .expect("forwarding address")
        .to_string();
    (child, addr)
}

#[test]
fn hello_answers_through_port_forward() {
    let (cluster, _nodes) = with_nodes(1);
    let hello = examples().join("hello.wasm");
    wait_for("the node to register", Duration::from_secs(20), || {
        get_json(&cluster, &["node", "node-1"])
    });
    let out = cluster.cli_in(
        0,
        &["apply", "-f", "-"],
        Some(&instance_manifest(
            "hello",
            "node-1",
            &hello,
            "  world: http\n",
        )),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("hello Running", Duration::from_secs(10), || {
        (phase(&cluster, "hello")?["status"]["phase"] == "Running").then_some(())
    });
    let (mut pf, addr) = port_forward(&cluster.config(), &cluster.peers[0].addr, "instance/hello");
    let reply = http_get(&addr, "/");
    let _ = pf.kill();
    let _ = pf.wait();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("hello from hello"), "{reply}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        phase(&cluster, "hello").unwrap()["status"]["restartCount"],
        0,
        "a passing liveness probe restarts nothing"
    );
}

#[test]
fn nodes_with_a_wrong_or_expired_token_are_refused() {
    let cluster = Cluster::start(1, &[]);
    let good = cluster.token("1h");
    let parts: Vec<&str> = good.split('.').collect();
    let wrong = format!(
        "{}.{}.{}.{}",
        parts[0],
        parts[1],
        "0".repeat(16),
        "1".repeat(32)
    );
    let short = cluster.token("1s");
    std::thread::sleep(Duration::from_millis(2100));
    for (token, needle) in [(wrong.as_str(), "unknown"), (short.as_str(), "expired")] {
        let dir = tempfile::tempdir().unwrap();
        let out = crate::harness::run_cli(
            &[
                "--server",
                &cluster.peers[0].addr,
                "node",
                "--name",
                "intruder",
                "--data-dir",
                dir.path().to_str().unwrap(),
                "--token",
                token,
            ],
            None,
            Duration::from_secs(20),
        );
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("join refused") && err.contains(needle),
            "{err}"
        );
    }
}

const WASI: &str = r#"(import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))"#;

#[test]
fn failing_guests_end_with_the_matching_reason_and_restart_on_backoff() {
    let (cluster, _nodes) = with_nodes(1);
    wait_for("the node to register", Duration::from_secs(20), || {
        get_json(&cluster, &["node", "node-1"])
    });
    let dir = tempfile::tempdir().unwrap();
    let guests = [
        ("trap", "(module (memory (export \"memory\") 1) (func (export \"_start\") unreachable))".to_string(), "Trapped"),
        ("exit-one", format!("(module {WASI} (memory (export \"memory\") 1) (func (export \"_start\") (call $exit (i32.const 1))))"), "Error"),
        ("greedy", "(module (memory (export \"memory\") 1) (func (export \"_start\") (loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable))".to_string(), "OOMKilled"),
        ("spin", "(module (memory (export \"memory\") 1) (func (export \"_start\") (loop $l (br $l))))".to_string(), "CPULimitExceeded"),
    ];
    let mut manifests = String::new();
    for (name, wat, _) in &guests {
        let path = dir.path().join(format!("{name}.wat"));
        std::fs::write(&path, wat).unwrap();
        manifests.push_str(&instance_manifest(
            name,
            "node-1",
            &path,
            "  restartPolicy: Never\n  resources:\n    limits:\n      memory: 1Mi\n      cpu: 100m\n",
        ));
        manifests.push_str("---\n");
    }
    let looping = dir.path().join("again.wat");
    std::fs::write(&looping, &guests[1].1).unwrap();
    manifests.push_str(&instance_manifest(
        "again",
        "node-1",
        &looping,
        "  restartPolicy: Always\n",
    ));
    let out = cluster.cli_in(0, &["apply", "-f", "-"], Some(&manifests));
    assert!(out.status.success(), "{}", stderr(&out));
    for (name, _, reason) in &guests {
        let status = wait_for(&format!("{name} to fail"), Duration::from_secs(20), || {
            let v = phase(&cluster, name)?;
            (v["status"]["phase"] == "Failed").then(|| v["status"].clone())
        });
        assert_eq!(status["reason"], *reason, "{name}: {status}");
        assert!(
            !status["message"].as_str().unwrap_or("").is_empty(),
            "{name}: {status}"
        );
    }
    let exit = phase(&cluster, "exit-one").unwrap();
    assert_eq!(exit["status"]["exitCode"], 1);
    // The node stayed responsive: its lease and status kept flowing.
    let node = get_json(&cluster, &["node", "node-1"]).unwrap();
    assert!(node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Ready" && c["status"] == "True"));
    // Restarts follow the backoff (1 s, 2 s, 4 s ...): a few within ~8 s, not dozens.
    let started = Instant::now();
    let count = wait_for("restarts", Duration::from_secs(20), || {
        let n = phase(&cluster, "again")?["status"]["restartCount"].as_u64()?;
        (n >= 3).then_some(n)
    });
    let elapsed = started.elapsed();
    assert!(
        count <= 5,
        "restarted {count} times in {elapsed:?}: backoff not applied"
    );
}

#[test]
fn instances_keep_running_while_the_server_is_down() {
    let (mut cluster, nodes) = with_nodes(1);
    let ticker = examples().join("ticker.wasm");
    wait_for("the node to register", Duration::from_secs(20), || {
        get_json(&cluster, &["node", "node-1"])
    });
    let out = cluster.cli_in(
        0,
        &["apply", "-f", "-"],
        Some(&instance_manifest("ticker", "node-1", &ticker, "")),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let log = nodes[0].log_file("ticker");
    wait_for("ticks", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("tick 2"))
            .map(|_| ())
    });
    cluster.peers[0].kill9();
    std::thread::sleep(Duration::from_secs(3));
    cluster.peers[0].restart();
    let restarted = Instant::now();
    // The node reports again within one lease period (2 s here).
    wait_for("the node's lease renewed", Duration::from_secs(10), || {
        let v = get_json(&cluster, &["lease", "node-1", "-n", "flotilla-node-lease"])?;
        let renew = v["spec"]["renewTime"].as_str()?;
        let t = time::OffsetDateTime::parse(renew, &time::format_description::well_known::Rfc3339)
            .ok()?;
        (time::OffsetDateTime::now_utc() - t < time::Duration::seconds(2)
            && restarted.elapsed() > Duration::from_millis(10))
        .then_some(())
    });
    assert!(
        restarted.elapsed() <= Duration::from_secs(4),
        "reported after {:?}",
        restarted.elapsed()
    );
    let v = phase(&cluster, "ticker").unwrap();
    assert_eq!(v["status"]["restartCount"], 0, "{v}");
    let text = std::fs::read_to_string(&log).unwrap();
    let ticks: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(ticks.len() >= 5, "{ticks:?}");
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "a gap in the log: {ticks:?}"
    );
}

#[test]
fn a_static_instance_runs_without_any_server() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::copy(
        examples().join("ticker.wasm"),
        manifests.join("ticker.wasm"),
    )
    .unwrap();
    std::fs::write(
        manifests.join("ticker.yaml"),
        "apiVersion: flotilla.dev/v1\nkind: Instance\nmetadata:\n  name: ticker\nspec:\n  module: ticker.wasm\n",
    )
    .unwrap();
    let node = NodeProc::start(
        None,
        None,
        "lonely",
        &dir.path().join("node"),
        &["--manifests-dir", manifests.to_str().unwrap()],
    );
    let log = node.log_file("ticker");
    wait_for("the static ticker to tick", Duration::from_secs(15), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("tick 2"))
            .map(|_| ())
    });
    std::fs::remove_file(manifests.join("ticker.yaml")).unwrap();
    let log_dir = log.parent().unwrap().to_path_buf();
    wait_for(
        "removing the file stops it",
        Duration::from_secs(10),
        || (!log_dir.exists()).then_some(()),
    );
}

/// Applies an instance of `module` and expects `apply` to fail saying `needle`.
fn apply_refused(cluster: &Cluster, name: &str, module: &Path, needle: &str) {
    let out = cluster.cli_in(
        0,
        &["apply", "-f", "-"],
        Some(&instance_manifest(name, "n", module, "")),
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains(needle), "{}", stderr(&out));
}

#[test]
fn bad_modules_are_refused_and_nothing_is_stored() {
    let cluster = Cluster::start(1, &["--max-module-size", "100Ki"]);
    let dir = tempfile::tempdir().unwrap();
    let count_modules = || {
        get_json(&cluster, &["modules"]).unwrap()["items"]
            .as_array()
            .unwrap()
            .len()
    };

    std::fs::write(dir.path().join("bad.wasm"), b"\0asm\x01\0\0\0\x99garbage").unwrap();
    apply_refused(
        &cluster,
        "bad",
        &dir.path().join("bad.wasm"),
        "invalid WebAssembly",
    );

    let big: Vec<u8> = b"\0asm\x01\0\0\0"
        .iter()
        .copied()
        .chain(std::iter::repeat_n(0u8, 200_000))
        .collect();
    std::fs::write(dir.path().join("big.wasm"), big).unwrap();
    apply_refused(
        &cluster,
        "big",
        &dir.path().join("big.wasm"),
        "limit is 102400 bytes",
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = cluster.client(0).await;
        let bytes = wat::parse_str("(module)").unwrap();
        let wrong = format!("sha256:{}", "0".repeat(64));
        let (mut send, mut recv) = client
            .node_stream(RequestV1::UploadModule {
                digest: wrong,
                size: bytes.len() as u64,
                source: "test".into(),
            })
            .await
            .unwrap();
        write_frame(&mut send, &UploadChunk { data: bytes })
            .await
            .unwrap();
        send.finish().unwrap();
        let resp: Option<Response> = read_frame(&mut recv, MAX_FRAME).await.unwrap();
        match resp {
            Some(Response::V1(ResponseV1::Error(e))) => {
                assert!(e.message.contains("digest mismatch"), "{e}")
            }
            other => panic!("expected a digest mismatch, got {other:?}"),
        }
    });
    assert_eq!(count_modules(), 0, "nothing may be stored");
    let out = cluster.cli(0, &["get", "inst"]);
    assert!(!stdout(&out).contains("bad"), "no instance written");
}

#[test]
fn up_in_a_fresh_home_runs_hello() {
    let examples_dir = examples();
    let home = tempfile::tempdir().unwrap();
    let api = crate::harness::free_udp_addr();
    let mut up = Command::new(BIN)
        .args([
            "up",
            "--api-addr",
            &api,
            "--ingress-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("HOME", home.path())
        .env_remove("FLOTILLA_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("cluster running"), "{first}");
    std::thread::spawn(move || for _ in lines.by_ref() {});
    let config = home.path().join(".flotilla/config");
    assert!(config.exists());
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("HOME", home.path())
            .env_remove("FLOTILLA_CONFIG")
            .output()
            .unwrap();
        out
    };
    let hello_dir = examples_dir
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("hello");
    // The example as shipped names no node: the scheduler places it.
    let node = default_node_name_for_test();
    let out = cli(&["apply", "-f", hello_dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("hello Running", Duration::from_secs(20), || {
        let out = cli(&["get", "inst", "hello", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"]["phase"] == "Running" && v["spec"]["nodeName"] == node.as_str()).then_some(())
    });
    let (mut pf, addr) = port_forward(&config, &api, "instance/hello");
    let reply = http_get(&addr, "/");
    let _ = pf.kill();
    let _ = pf.wait();
    let _ = up.kill();
    let _ = up.wait();
    assert!(reply.contains("hello from hello"), "{reply}");
}

/// The name `flotilla up` gives its node: the host name.
pub fn default_node_name_for_test() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
}

#[test]
fn a_static_instance_appears_as_a_read_only_mirror() {
    let cluster = Cluster::start(1, &[]);
    let token = cluster.token("1h");
    let manifests = cluster.dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::copy(
        examples().join("ticker.wasm"),
        manifests.join("ticker.wasm"),
    )
    .unwrap();
    std::fs::write(
        manifests.join("ticker.yaml"),
        "apiVersion: flotilla.dev/v1\nkind: Instance\nmetadata:\n  name: static-ticker\nspec:\n  module: ticker.wasm\n",
    )
    .unwrap();
    let mut flags: Vec<&str> = NODE_FLAGS.to_vec();
    let dir = manifests.to_str().unwrap().to_string();
    flags.extend_from_slice(&["--manifests-dir", &dir]);
    let _node = NodeProc::start(
        Some(&cluster.peers[0].addr),
        Some(&token),
        "edge-1",
        &cluster.dir.path().join("edge-1"),
        &flags,
    );
    let v = wait_for("the mirror Running", Duration::from_secs(20), || {
        let v = phase(&cluster, "static-ticker")?;
        (v["status"]["phase"] == "Running").then_some(v)
    });
    assert_eq!(v["metadata"]["annotations"]["flotilla.dev/mirror"], "true");
    assert_eq!(v["spec"]["nodeName"], "edge-1");
    let out = cluster.cli(0, &["delete", "inst", "static-ticker"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("read-only"), "{}", stderr(&out));
    std::fs::remove_file(manifests.join("ticker.yaml")).unwrap();
    wait_for(
        "the mirror to go with the file",
        Duration::from_secs(10),
        || phase(&cluster, "static-ticker").is_none().then_some(()),
    );
}

/// A `flotilla hollow-nodes` process, killed if a test ends without stopping it.
pub(crate) struct HollowNodes(Child);

impl HollowNodes {
    /// Starts `count` hollow nodes and waits for them all to have joined.
    pub(crate) fn start(cluster: &Cluster, count: usize) -> Self {
        let token = cluster.token("1h");
        let data_dir = cluster.dir.path().join("hollow");
        let mut child = Command::new(BIN)
            .args([
                "--server",
                &cluster.peers[0].addr,
                "hollow-nodes",
                "--count",
            ])
            .arg(count.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--token", &token, "--lease-interval", "1s"])
            .env_remove("FLOTILLA_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flotilla hollow-nodes");
        let err = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("hollow nodes running") || line.starts_with("error:") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("hollow nodes report they run");
        assert_eq!(line, format!("{count} hollow nodes running"));
        Self(child)
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        wait_for("hollow-nodes to exit", Duration::from_secs(20), || {
            self.0.try_wait().unwrap()
        })
    }
}

impl Drop for HollowNodes {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn hollow_nodes_join_run_a_deployment_and_stop_on_sigterm() {
    use crate::workloads::{deployment, wait_nodes_ready, wait_ready_instances};

    let cluster = Cluster::start(1, &[]);
    let hollow = HollowNodes::start(&cluster, 5);
    wait_nodes_ready(&cluster, 5);
    let nodes = get_json(&cluster, &["nodes"]).unwrap();
    let nodes = nodes["items"].as_array().unwrap();
    assert_eq!(nodes.len(), 5);
    for n in nodes {
        assert_eq!(n["status"]["nodeInfo"]["wasmtimeVersion"], "hollow", "{n}");
    }

    let out = cluster.cli_in(
        0,
        &["apply", "-f", "-"],
        Some(&deployment("web", 10, "unused", "")),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let per_node = wait_ready_instances(&cluster, "web", 10, Duration::from_secs(60));
    let expected: Vec<String> = (1..=5).map(|i| format!("hollow-{i}")).collect();
    assert_eq!(
        per_node.keys().cloned().collect::<Vec<_>>(),
        expected,
        "{per_node:?}"
    );
    assert_eq!(per_node.values().sum::<usize>(), 10, "{per_node:?}");
    let instances = get_json(&cluster, &["inst", "-l", "app=web"]).unwrap();
    let instances = instances["items"].as_array().unwrap();
    for i in instances {
        assert_eq!(i["status"]["phase"], "Running", "{i}");
        assert_eq!(i["status"]["world"], "http", "{i}");
    }

    // The hollow runtime answers for the guest.
    let name = instances[0]["metadata"]["name"].as_str().unwrap();
    let (mut pf, addr) = port_forward(
        &cluster.config(),
        &cluster.peers[0].addr,
        &format!("instance/{name}"),
    );
    let reply = http_get(&addr, "/");
    let _ = pf.kill();
    let _ = pf.wait();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("hollow\n"), "{reply}");

    let status = hollow.terminate();
    assert!(
        status.success(),
        "hollow-nodes exits cleanly on SIGTERM: {status}"
    );
}
