//! HTTP through a node's ingress against `wasmtime serve` on the same hello
//! .wasm: requests per second and p50 / p99 latency at 1, 16 and 64
//! keep-alive connections, both targets measured in the same run, turn about.
//!
//! One `flotilla server` and one `flotilla node --ingress-addr` process serve
//! a Deployment of hello (one replica) behind a Service with an ingress host;
//! `wasmtime serve -Scli` 48 serves the same file. The load generator is this
//! binary (hyper HTTP/1.1 clients on the same two cores).
//!
//! Run: `cargo install wasmtime-cli --version 48.0.8 --locked`, build the
//! examples (`cd examples && cargo build --release`), then
//! `cargo bench --bench ingress` (FLOTILLA_BENCH_SECS sets the seconds per
//! measurement, default 10; WASMTIME sets the wasmtime binary).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

mod support;

use support::{flotilla, spawn_listening, Proc, BIN};

fn spawn_reporting(args: &[&str]) -> (Proc, String) {
    spawn_listening(flotilla(args))
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn cli(config: &Path, server: &str, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "--server", server])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "flotilla {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One GET over a fresh connection; status and body.
async fn get_once(addr: &str, host: &str) -> Option<(u16, Bytes)> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .ok()?;
    let resp = send.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

struct Measured {
    requests: usize,
    errors: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

/// `connections` keep-alive connections, each sending GETs back to back.
async fn load(addr: &str, host: &str, connections: usize, secs: u64) -> Measured {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let addr = addr.to_string();
        let host = host.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            'outer: while Instant::now() < deadline {
                let Ok(stream) = tokio::net::TcpStream::connect(&addr).await else {
                    errors += 1;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let Ok((mut send, conn)) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                else {
                    errors += 1;
                    continue;
                };
                tokio::spawn(conn);
                while Instant::now() < deadline {
                    let req = http::Request::get("/")
                        .header("host", host.as_str())
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let t = Instant::now();
                    match send.send_request(req).await {
                        Ok(resp) => {
                            let ok = resp.status().is_success();
                            let body = resp.into_body().collect().await;
                            if ok && body.is_ok() {
                                lat.push(t.elapsed());
                            } else {
                                errors += 1;
                            }
                        }
                        Err(_) => {
                            errors += 1;
                            continue 'outer;
                        }
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.unwrap();
        all.extend(lat);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Measured {
        requests: all.len(),
        errors,
        secs,
        p50: pick(0.50),
        p99: pick(0.99),
    }
}

fn wasmtime_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WASMTIME") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let cargo_bin = home.join(".cargo/bin/wasmtime");
    if cargo_bin.exists() {
        return Some(cargo_bin);
    }
    Command::new("wasmtime")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("wasmtime"))
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::var("FLOTILLA_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let hello = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/target/wasm32-wasip2/release/hello.wasm");
    assert!(
        hello.exists(),
        "{} is missing: cd examples && cargo build --release",
        hello.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let (_server, addr) = spawn_reporting(&[
        "server",
        "--data-dir",
        server_dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let config = server_dir.join("admin.config");
    let token = cli(&config, &addr, &["token", "create"], None)
        .trim()
        .to_string();
    let ingress = free_addr();
    let node_dir = dir.path().join("node");
    let (_node, _) = spawn_reporting(&[
        "--server",
        &addr,
        "node",
        "--name",
        "bench",
        "--data-dir",
        node_dir.to_str().unwrap(),
        "--token",
        &token,
        "--ingress-addr",
        &ingress,
    ]);
    let manifest = format!(
        "apiVersion: flotilla.dev/v1\nkind: Deployment\nmetadata:\n  name: hello\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: hello}}\n  template:\n    metadata:\n      labels: {{app: hello}}\n    spec:\n      module: {}\n      world: http\n---\napiVersion: flotilla.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  selector: {{app: hello}}\n  ports:\n  - port: 80\n  ingress: {{host: hello.local}}\n",
        hello.display()
    );
    cli(&config, &addr, &["apply", "-f", "-"], Some(&manifest));
    let ready = Instant::now();
    loop {
        if let Some((200, _)) = get_once(&ingress, "hello.local").await {
            break;
        }
        assert!(
            ready.elapsed() < Duration::from_secs(120),
            "hello never answered through the ingress"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let wasmtime = wasmtime_binary();
    let mut _wasmtime_proc = None;
    let wasmtime_addr = free_addr();
    if let Some(bin) = &wasmtime {
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        println!("comparing with {version}");
        let child = Command::new(bin)
            .args(["serve", "-Scli", "--addr", &wasmtime_addr])
            .arg(&hello)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn wasmtime serve");
        _wasmtime_proc = Some(Proc(child));
        let started = Instant::now();
        while get_once(&wasmtime_addr, "localhost").await.is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "wasmtime serve never answered"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    } else {
        println!("wasmtime not found (cargo install wasmtime-cli --version 48.0.8 --locked): measuring the ingress alone");
    }

    println!("| target | connections | requests/s | p50 | p99 | errors |");
    println!("|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for connections in [1usize, 16, 64] {
        // Warm both up, then measure them one after the other.
        let _ = load(&ingress, "hello.local", connections, 1).await;
        let ours = load(&ingress, "hello.local", connections, secs).await;
        let theirs = if wasmtime.is_some() {
            let _ = load(&wasmtime_addr, "localhost", connections, 1).await;
            Some(load(&wasmtime_addr, "localhost", connections, secs).await)
        } else {
            None
        };
        for (name, m) in [
            ("flotilla ingress", Some(&ours)),
            ("wasmtime serve", theirs.as_ref()),
        ] {
            let Some(m) = m else { continue };
            println!(
                "| {name} | {connections} | {:.0} | {:.3} ms | {:.3} ms | {} |",
                m.requests as f64 / m.secs,
                m.p50.as_secs_f64() * 1e3,
                m.p99.as_secs_f64() * 1e3,
                m.errors
            );
        }
        if let Some(t) = theirs {
            ratios.push((
                connections,
                (ours.requests as f64 / ours.secs) / (t.requests as f64 / t.secs),
            ));
        }
    }
    for (c, r) in ratios {
        println!("{c} connections: flotilla / wasmtime serve = {r:.2}");
    }
}
