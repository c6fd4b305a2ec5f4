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

use std::path::PathBuf;
use std::process::{Command, Stdio};

#[path = "support/ingress.rs"]
mod ingress_support;
mod support;

use ingress_support::{example_wasm, free_addr, load, wait_answering, IngressCluster};
use support::Proc;

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
    let hello = example_wasm("hello.wasm");
    let cluster = IngressCluster::start();
    let host = cluster.serve("hello", &hello).await;
    let ingress = cluster.ingress.clone();

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
        wait_answering(&wasmtime_addr, "localhost", "wasmtime serve").await;
    } else {
        println!("wasmtime not found (cargo install wasmtime-cli --version 48.0.8 --locked): measuring the ingress alone");
    }

    println!("| target | connections | requests/s | p50 | p99 | errors |");
    println!("|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for connections in [1usize, 16, 64] {
        // Warm both up, then measure them one after the other.
        let _ = load(&ingress, &host, connections, 1).await;
        let ours = load(&ingress, &host, connections, secs).await;
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
