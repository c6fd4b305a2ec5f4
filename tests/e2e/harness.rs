//! Real processes on loopback: `flotilla server` peers in temp dirs, the CLI, and
//! helpers that wait on a condition with a deadline.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use flotilla_client::{Client, ClientConfig};

pub const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

/// Waits for `cond` to return `Some`, polling, up to `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The wasm targets the guests build for, as `rust-toolchain.toml` lists them.
pub const GUEST_TARGETS: [&str; 2] = ["wasm32-wasip2", "wasm32-wasip1"];

/// Makes sure the guests' targets are installed: a toolchain installed before
/// `rust-toolchain.toml` named them lacks them, and every guest build would
/// then fail with "can't find crate for `core`". Installs them with rustup,
/// or stops at once with the command that does.
pub fn ensure_guest_targets() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let sysroot = Command::new("rustc")
            .args(["--print", "sysroot"])
            .output()
            .ok()
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        let missing: Vec<&str> = GUEST_TARGETS
            .into_iter()
            .filter(|t| {
                sysroot
                    .as_ref()
                    .is_none_or(|root| !root.join("lib/rustlib").join(t).exists())
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        let command = format!("rustup target add {}", GUEST_TARGETS.join(" "));
        let added = Command::new("rustup")
            .arg("target")
            .arg("add")
            .args(GUEST_TARGETS)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            added,
            "the guest targets {missing:?} are not installed and rustup could not add them; run: {command}"
        );
    });
}

/// `cargo build ARGS` in `dir` (a workspace of its own), into `target_dir`
/// or the workspace's own target; panics with cargo's errors on failure.
pub fn cargo_build(what: &str, dir: &Path, args: &[&str], target_dir: Option<&Path>) {
    ensure_guest_targets();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("build")
        .args(args)
        .current_dir(dir)
        .env_remove("RUSTFLAGS");
    match target_dir {
        Some(t) => cmd.env("CARGO_TARGET_DIR", t),
        None => cmd.env_remove("CARGO_TARGET_DIR"),
    };
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run cargo for {what}: {e}"));
    assert!(
        out.status.success(),
        "building {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the CLI with a deadline; kills it if it overruns.
pub fn run_cli(args: &[&str], stdin: Option<&str>, timeout: Duration) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("FLOTILLA_CONFIG")
        .env("HOME", std::env::temp_dir().join("flotilla-test-no-home"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn flotilla");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    // Read both pipes while the child runs: one that fills its pipe (a list
    // of a hundred nodes) would otherwise block forever.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "flotilla {args:?} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.join().unwrap_or_default()),
                String::from_utf8_lossy(&err.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One `flotilla server` process.
pub struct ServerProc {
    pub child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl ServerProc {
    /// Starts a peer and waits for it to say where it listens.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Result<Self, String> {
        Self::start_env(data_dir, extra, &[])
    }

    /// [`ServerProc::start`] with extra environment variables (kept on restart).
    pub fn start_env(
        data_dir: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Result<Self, String> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, addr) = spawn_server(data_dir, &extra, env)?;
        Ok(Self {
            child: Some(child),
            addr,
            data_dir: data_dir.to_path_buf(),
            extra: without_join(&extra),
            env: env.to_vec(),
        })
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same data dir (and so the same address).
    pub fn restart(&mut self) {
        self.kill9();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let mut last = String::new();
        for _ in 0..3 {
            match spawn_server(
                &self.data_dir,
                &extra.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                &self.env,
            ) {
                Ok((child, addr)) => {
                    assert_eq!(addr, self.addr, "a restarted peer keeps its address");
                    self.child = Some(child);
                    return;
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("restart failed: {last}");
    }

    pub fn admin_config(&self) -> PathBuf {
        self.data_dir.join("admin.config")
    }
}

/// The flags a restart keeps: a joined peer resumes from its data dir.
fn without_join(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
        } else if a == "--join" || a == "--token" {
            skip = true;
        } else {
            out.push(a.clone());
        }
    }
    out
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn_server(
    data_dir: &Path,
    extra: &[String],
    env: &[(String, String)],
) -> Result<(Child, String), String> {
    let mut args: Vec<String> = vec![
        "server".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend_from_slice(extra);
    spawn_reporting_env(&args, env)
}

/// Spawns `flotilla ARGS` with extra environment variables and waits for its
/// "listening on ADDR" line.
pub fn spawn_reporting_env(
    args: &[String],
    env: &[(String, String)],
) -> Result<(Child, String), String> {
    spawn_reporting_via(BIN, args, env)
}

/// [`spawn_reporting_env`] of `program` (a wrapper that execs `flotilla`,
/// such as `unshare`).
pub fn spawn_reporting_via(
    program: &str,
    args: &[String],
    env: &[(String, String)],
) -> Result<(Child, String), String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("FLOTILLA_CONFIG")
        .env(
            "RUST_LOG",
            std::env::var("FLOTILLA_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(rest) = line.split(" listening on ").nth(1) {
                let addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let _ = tx.send(Ok(addr));
            }
        }
    });
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if std::env::var_os("FLOTILLA_TEST_LOG").is_some() {
                eprintln!("[server] {line}");
            }
            text.push_str(&line);
            text.push('\n');
            if line.starts_with("error:") {
                let _ = tx2.send(Err(text.clone()));
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(addr)) => Ok((child, addr)),
        Ok(Err(e)) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err("server did not report its address within 30 s".into())
        }
    }
}

/// A cluster of peers in one temp dir.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub peers: Vec<ServerProc>,
}

impl Cluster {
    /// Starts `n` peers: the first makes the cluster, the rest join it.
    pub fn start(n: usize, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ServerProc::start(&dir.path().join("peer-1"), extra).expect("first peer");
        let mut cluster = Self {
            dir,
            peers: vec![first],
        };
        cluster.wait_ready(0);
        for i in 1..n {
            let token = cluster.peer_token("1h");
            let mut args: Vec<&str> = vec!["--join", &cluster.peers[0].addr, "--token", &token];
            args.extend_from_slice(extra);
            let args: Vec<String> = args.into_iter().map(str::to_string).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let peer =
                ServerProc::start(&cluster.dir.path().join(format!("peer-{}", i + 1)), &args)
                    .expect("joining peer");
            cluster.peers.push(peer);
        }
        cluster.wait_members(n);
        cluster
    }

    pub fn config(&self) -> PathBuf {
        self.peers[0].admin_config()
    }

    /// `get ARGS -o json` through peer 0, parsed; `None` when it fails.
    pub fn get_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut full = vec!["get"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["-o", "json"]);
        let out = self.cli(0, &full);
        out.status
            .success()
            .then(|| serde_json::from_str(&stdout(&out)).ok())
            .flatten()
    }

    /// Runs the CLI against peer `i`.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        self.cli_in(i, args, None)
    }

    pub fn cli_in(&self, i: usize, args: &[&str], stdin: Option<&str>) -> Output {
        let config = self.config();
        let mut full: Vec<&str> = vec![
            "--config",
            config.to_str().unwrap(),
            "--server",
            &self.peers[i].addr,
        ];
        full.extend_from_slice(args);
        run_cli(&full, stdin, Duration::from_secs(30))
    }

    /// A node join token.
    pub fn token(&self, ttl: &str) -> String {
        self.token_of("node", ttl)
    }

    /// A store peer join token.
    pub fn peer_token(&self, ttl: &str) -> String {
        self.token_of("peer", ttl)
    }

    fn token_of(&self, kind: &str, ttl: &str) -> String {
        let out = self.cli(0, &["token", "create", "--kind", kind, "--ttl", ttl]);
        assert!(out.status.success(), "token create: {}", stderr(&out));
        stdout(&out).trim().to_string()
    }

    /// Waits until peer `i` serves writes (namespace default exists).
    pub fn wait_ready(&self, i: usize) {
        wait_for("the first peer to serve", Duration::from_secs(30), || {
            let out = self.cli(i, &["get", "ns", "default"]);
            out.status.success().then_some(())
        });
    }

    /// Members as peer `i` reports them: (id, address, role).
    pub fn members(&self, i: usize) -> Option<Vec<(u64, String, String)>> {
        let out = self.cli(i, &["cluster", "members", "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).ok()?;
        Some(
            v.as_array()?
                .iter()
                .map(|m| {
                    (
                        m["id"].as_u64().unwrap_or(0),
                        m["address"].as_str().unwrap_or("").to_string(),
                        m["role"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect(),
        )
    }

    pub fn wait_members(&self, n: usize) {
        wait_for("every peer to be a voter", Duration::from_secs(60), || {
            let m = self.members(0)?;
            let voters = m
                .iter()
                .filter(|(_, _, r)| r == "leader" || r == "follower")
                .count();
            (voters == n && m.iter().any(|(_, _, r)| r == "leader")).then_some(())
        });
    }

    /// Index in `peers` of the current leader, as peer `ask` sees it.
    pub fn leader(&self, ask: usize) -> Option<usize> {
        let m = self.members(ask)?;
        let (_, addr, _) = m.into_iter().find(|(_, _, r)| r == "leader")?;
        self.peers.iter().position(|p| p.addr == addr)
    }

    /// An in-process API client for peer `i`.
    pub async fn client(&self, i: usize) -> Client {
        let config = ClientConfig::load(&self.config()).expect("admin config");
        Client::connect_to(&self.peers[i].addr, &config)
            .await
            .expect("connect")
    }
}

/// A free UDP port on loopback, as the OS gives it.
pub fn free_udp_addr() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().to_string()
}

/// A small Namespace-scoped object manifest for tests.
pub fn service_manifest(name: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  labels:\n    app: test\nspec:\n  selector:\n    app: {name}\n  ports:\n  - port: 80\n"
    )
}

/// The environment that shifts a process's wall clock by `millis` (its
/// monotonic clocks untouched), as on a machine without NTP: a small
/// `clock_gettime` shim, built once with the C compiler and preloaded.
pub fn skewed_clock(millis: i64) -> Vec<(String, String)> {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    let shim = SHIM.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/clock_skew.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("flotilla-clock-skew.so");
        let built = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&out)
            .arg(&source)
            .arg("-ldl")
            .output()
            .expect("a C compiler (cc) to build the clock shim");
        assert!(
            built.status.success(),
            "building the clock shim failed: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        out
    });
    vec![
        ("LD_PRELOAD".into(), shim.display().to_string()),
        ("FLOTILLA_TEST_CLOCK_SKEW_MS".into(), millis.to_string()),
    ]
}
