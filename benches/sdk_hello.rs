//! What the guest SDK costs: hello on the SDK (`examples/hello`) against the
//! same hello written by hand on the raw wasi bindings
//! (`examples/hello-wasi`), both served by one node's ingress in the same
//! run, turn about: requests per second at 1 and 16 keep-alive connections,
//! and the .wasm sizes.
//!
//! Run: build the examples (`cd examples && cargo build --release`), then
//! `cargo bench --bench sdk_hello` (FLOTILLA_BENCH_SECS sets the seconds per
//! measurement, default 5; FLOTILLA_BENCH_ROUNDS the rounds, default 5).

use std::time::Duration;

#[path = "support/ingress.rs"]
mod ingress_support;
mod support;

use support::{env_or, median};

use ingress_support::{example_wasm, load, IngressCluster};

#[tokio::main]
async fn main() {
    let secs = env_or("FLOTILLA_BENCH_SECS", 5);
    let rounds = env_or("FLOTILLA_BENCH_ROUNDS", 5);
    let sdk = example_wasm("hello.wasm");
    let raw = example_wasm("hello_wasi.wasm");
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    let (sdk_size, raw_size) = (size(&sdk), size(&raw));
    println!(
        "size: hello (SDK) {sdk_size} bytes, hello-wasi (by hand) {raw_size} bytes, ratio {:.2}",
        sdk_size as f64 / raw_size as f64
    );

    let cluster = IngressCluster::start();
    let sdk_host = cluster.serve("hello-sdk", &sdk).await;
    let raw_host = cluster.serve("hello-wasi", &raw).await;
    let targets = [("hello (SDK)", sdk_host), ("hello-wasi", raw_host)];
    for (_, host) in &targets {
        let _ = load(&cluster.ingress, host, 16, 2).await;
    }

    println!("| connections | round | target | requests/s | p50 | p99 | errors |");
    println!("|---|---|---|---|---|---|---|");
    for connections in [1usize, 16] {
        let mut rps: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut ratios = Vec::new();
        for round in 0..rounds {
            // Turn about, and who goes first alternates, so drift hits both.
            let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut this_round = [0.0; 2];
            for i in order {
                let (name, host) = &targets[i];
                let m = load(&cluster.ingress, host, connections, secs).await;
                let r = m.requests as f64 / m.secs;
                this_round[i] = r;
                rps[i].push(r);
                println!(
                    "| {connections} | {round} | {name} | {r:.0} | {:.3} ms | {:.3} ms | {} |",
                    m.p50.as_secs_f64() * 1e3,
                    m.p99.as_secs_f64() * 1e3,
                    m.errors
                );
            }
            ratios.push(this_round[0] / this_round[1]);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (sdk_median, raw_median) = (median(rps[0].clone()), median(rps[1].clone()));
        println!(
            "{connections} connections: median requests/s SDK {sdk_median:.0}, by hand {raw_median:.0}; \
             SDK / by hand = {:.3} (median of per-round ratios {:.3})",
            sdk_median / raw_median,
            median(ratios)
        );
    }
}
