//! A request that crosses nodes against one that does not, and the ingress
//! against `wasmtime serve`, all with `wrk`, side by side in one run.
//!
//! One `flotilla server` and two nodes, `a` and `b`, each with an ingress;
//! hello (one replica) is pinned to `b`. "cross-node" is hello through `a`'s
//! ingress (ingress on `a`, the tunnel to `b`, the guest on `b`);
//! "same-node" is hello through `b`'s own ingress; "wasmtime serve" is
//! `wasmtime serve -Scli` of wasmtime 48 on the same .wasm. `wrk -t1` at 1,
//! 16 and 64 connections; every round measures every target at every
//! concurrency, the targets' order reversed every other round, and the table
//! gives each figure's median over the rounds.
//!
//! With FLOTILLA_BENCH_COMPARE_BIN=PATH a second cluster of that build is
//! measured in the same rounds (before against after).
//!
//! Run (release): `apt-get install wrk`, `(cd examples && cargo build
//! --release)`, `cargo build --release -p flotilla-wasmtime-serve --example
//! wasmtime-serve`, then `cargo bench --bench cross_node`.
//! FLOTILLA_BENCH_SECS (default 6) sets the seconds per measurement,
//! FLOTILLA_BENCH_ROUNDS (default 3) the rounds;
//! WASMTIME=PATH runs another `wasmtime` binary's `serve`.
//!
//! With FLOTILLA_BENCH_PERF=1 it also says where a request's time goes: for
//! each build, `wrk -c1` cross-node and then same-node while `perf stat`
//! counts each node process's CPU time and context switches; divided by the
//! requests served, that is what each hop costs in CPU and wake-ups.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

#[path = "support/ingress.rs"]
mod ingress_support;
mod support;

use ingress_support::{example_wasm, free_addr, wait_answering, wrk, IngressCluster, Wrk};
use support::{env_or, median, Proc, BIN};

const CONNECTIONS: [usize; 3] = [1, 16, 64];

/// `wasmtime serve` of wasmtime 48: WASMTIME, or the `wasmtime-serve`
/// example built beside this binary.
fn wasmtime_serve() -> (PathBuf, Vec<&'static str>) {
    if let Some(bin) = std::env::var_os("WASMTIME") {
        return (PathBuf::from(bin), vec!["serve"]);
    }
    let beside = Path::new(BIN)
        .parent()
        .expect("the binary has a directory")
        .join("examples/wasmtime-serve");
    assert!(
        beside.exists(),
        "{} is missing: cargo build --release -p flotilla-wasmtime-serve --example wasmtime-serve (or set WASMTIME)",
        beside.display()
    );
    (beside, vec![])
}

struct Target {
    name: String,
    addr: String,
    host: String,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let secs = env_or("FLOTILLA_BENCH_SECS", 6);
    let rounds = env_or("FLOTILLA_BENCH_ROUNDS", 3) as usize;
    let hello = example_wasm("hello.wasm");

    let mut builds = vec![("this build".to_string(), BIN.to_string())];
    if let Ok(other) = std::env::var("FLOTILLA_BENCH_COMPARE_BIN") {
        builds.insert(0, ("baseline".to_string(), other));
    }
    let mut clusters = Vec::new();
    let mut targets = Vec::new();
    for (label, bin) in &builds {
        let cluster = IngressCluster::start_nodes(bin, &["a", "b"]);
        let host = cluster.serve_on("hello", &hello, Some("b")).await;
        targets.push(Target {
            name: format!("cross-node ({label})"),
            addr: cluster.ingresses[0].clone(),
            host: host.clone(),
        });
        targets.push(Target {
            name: format!("same-node ({label})"),
            addr: cluster.ingresses[1].clone(),
            host,
        });
        clusters.push(cluster);
    }

    let (wasmtime, args) = wasmtime_serve();
    let wasmtime_addr = free_addr();
    let _wasmtime = Proc(
        Command::new(&wasmtime)
            .args(args)
            .args(["-Scli", "--addr", &wasmtime_addr])
            .arg(&hello)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn wasmtime serve"),
    );
    wait_answering(&wasmtime_addr, "localhost", "wasmtime serve").await;
    targets.push(Target {
        name: "wasmtime serve".into(),
        addr: wasmtime_addr,
        host: "localhost".into(),
    });

    println!(
        "wrk -t1 -d{secs}s --latency, {rounds} rounds, {} targets",
        targets.len()
    );
    let mut runs: BTreeMap<(usize, usize), Vec<Wrk>> = BTreeMap::new();
    for round in 0..rounds {
        for (ci, &connections) in CONNECTIONS.iter().enumerate() {
            let mut order: Vec<usize> = (0..targets.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for ti in order {
                let t = &targets[ti];
                let _ = wrk(&t.addr, &t.host, connections, 1);
                let m = wrk(&t.addr, &t.host, connections, secs);
                eprintln!(
                    "round {round} {} c={connections}: {:.0} req/s p50 {:.3} ms p99 {:.3} ms",
                    t.name,
                    m.requests_per_sec,
                    ms(m.p50),
                    ms(m.p99)
                );
                runs.entry((ti, ci)).or_default().push(m);
            }
        }
    }

    let rps =
        |ti: usize, ci: usize| median(runs[&(ti, ci)].iter().map(|m| m.requests_per_sec).collect());
    let p50 = |ti: usize, ci: usize| median(runs[&(ti, ci)].iter().map(|m| ms(m.p50)).collect());
    let p99 = |ti: usize, ci: usize| median(runs[&(ti, ci)].iter().map(|m| ms(m.p99)).collect());
    println!("\n| target | connections | requests/s (median; min–max) | p50 | p99 | errors |");
    println!("|---|---|---|---|---|---|");
    for (ci, &connections) in CONNECTIONS.iter().enumerate() {
        for (ti, t) in targets.iter().enumerate() {
            let all = &runs[&(ti, ci)];
            let lo = all
                .iter()
                .map(|m| m.requests_per_sec)
                .fold(f64::MAX, f64::min);
            let hi = all.iter().map(|m| m.requests_per_sec).fold(0.0, f64::max);
            println!(
                "| {} | {connections} | {:.0} ({lo:.0}–{hi:.0}) | {:.3} ms | {:.3} ms | {} |",
                t.name,
                rps(ti, ci),
                p50(ti, ci),
                p99(ti, ci),
                all.iter().map(|m| m.errors).sum::<u64>()
            );
        }
    }
    println!();
    let wasmtime_ti = targets.len() - 1;
    for (bi, (label, _)) in builds.iter().enumerate() {
        let (cross, same) = (2 * bi, 2 * bi + 1);
        for (ci, &connections) in CONNECTIONS.iter().enumerate() {
            println!(
                "{label}, {connections} connections: cross/same requests/s {:.2}x, the hop adds {:.0} µs at p50; same-node ingress / wasmtime serve {:.2}x",
                rps(cross, ci) / rps(same, ci),
                (p50(cross, ci) - p50(same, ci)) * 1e3,
                rps(same, ci) / rps(wasmtime_ti, ci),
            );
        }
    }
    if std::env::var_os("FLOTILLA_BENCH_PERF").is_some() {
        println!("\n| build | path | requests | node a: CPU µs / request | node a: context switches / request | node b: CPU µs / request | node b: context switches / request |");
        println!("|---|---|---|---|---|---|---|");
        for (bi, (label, _)) in builds.iter().enumerate() {
            let pids = clusters[bi].node_pids();
            for (path, ti) in [("cross-node", 2 * bi), ("same-node", 2 * bi + 1)] {
                let t = &targets[ti];
                let counting: Vec<_> = pids.iter().map(|pid| perf_stat(*pid, secs)).collect();
                std::thread::sleep(Duration::from_millis(300));
                let m = wrk(&t.addr, &t.host, 1, secs - 1);
                let requests = m.requests_per_sec * (secs - 1) as f64;
                let per: Vec<(f64, f64)> = counting
                    .into_iter()
                    .map(|c| {
                        let (cpu_ms, switches) = read_perf_stat(c);
                        (cpu_ms * 1e3 / requests, switches / requests)
                    })
                    .collect();
                println!(
                    "| {label} | {path} | {requests:.0} | {:.1} | {:.2} | {:.1} | {:.2} |",
                    per[0].0, per[0].1, per[1].0, per[1].1
                );
            }
        }
    }
    drop(clusters);
}

/// `perf stat` of process `pid` for `secs` seconds, started.
fn perf_stat(pid: u32, secs: u64) -> std::process::Child {
    Command::new("perf")
        .args(["stat", "-x,", "-e", "task-clock,context-switches", "-p"])
        .arg(pid.to_string())
        .args(["--", "sleep", &secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("perf is not installed: apt-get install linux-perf")
}

/// What [`perf_stat`] counted: CPU milliseconds and context switches.
fn read_perf_stat(child: std::process::Child) -> (f64, f64) {
    let out = child.wait_with_output().expect("perf stat");
    let text = String::from_utf8_lossy(&out.stderr);
    let value = |event: &str| {
        text.lines()
            .find(|l| l.contains(event))
            .and_then(|l| l.split(',').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("perf stat counted no {event}:\n{text}"))
    };
    (value("task-clock"), value("context-switches"))
}
