//! `sensor`: an edge sensor reader (`wasi:cli/run`), one per node as a
//! DaemonSet, on the `flotilla-guest` SDK.
//!
//! Every `INTERVAL_MS` milliseconds (default 2000) it reads its sensor and
//! posts the reading as JSON to `COLLECTOR_URL` (default
//! `http://collector/readings`, the Service `collector`). A failed post is
//! logged and the reader goes on: an edge link comes and goes. When the node
//! asks it to stop, it logs how many readings it sent and exits 0.
//!
//! The sensor is simulated: a temperature that drifts slowly around a value
//! derived from the node's name, so each node reads differently.

use std::time::Duration;

use flotilla_guest::serde::Serialize;
use flotilla_guest::{client, command, error, info, warn};

/// What is posted to the collector.
#[derive(Serialize)]
#[serde(crate = "flotilla_guest::serde")]
struct Reading<'a> {
    node: &'a str,
    instance: &'a str,
    seq: u64,
    celsius: f64,
}

fn main() {
    let ctx = flotilla_guest::context();
    let node = ctx.node_name().unwrap_or("local").to_owned();
    let instance = ctx.instance_name().unwrap_or("sensor").to_owned();
    let url = ctx
        .env("COLLECTOR_URL")
        .unwrap_or_else(|| "http://collector/readings".into());
    let interval = match ctx.env("INTERVAL_MS").map(|v| v.parse::<u64>()) {
        None => Duration::from_secs(2),
        Some(Ok(ms)) if ms >= 10 => Duration::from_millis(ms),
        Some(_) => {
            error!("INTERVAL_MS must be a whole number of milliseconds, at least 10");
            std::process::exit(2);
        }
    };
    info!("reading the sensor on {node} every {interval:?}, posting to {url}");

    let base = base_temperature(&node);
    let (mut seq, mut sent) = (0u64, 0u64);
    command::every(interval, || {
        seq += 1;
        let reading = Reading {
            node: &node,
            instance: &instance,
            seq,
            celsius: read_sensor(base, seq),
        };
        let result = client::post(&url)
            .timeout(Duration::from_secs(2))
            .json(&reading)
            .and_then(|request| request.send_ok());
        match result {
            Ok(_) => {
                sent += 1;
                info!("reading {seq} sent: {:.1} C", reading.celsius);
            }
            Err(e) => warn!("reading {seq} not sent: {e}"),
        }
    });
    info!("stopping: {sent} of {seq} readings sent");
}

/// 15 to 25 C, fixed per node name.
fn base_temperature(node: &str) -> f64 {
    let hash = node
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    15.0 + f64::from(hash % 100) / 10.0
}

/// A slow drift of +-2 C around the base.
fn read_sensor(base: f64, seq: u64) -> f64 {
    let phase = (seq % 60) as f64 / 60.0 * std::f64::consts::TAU;
    ((base + 2.0 * phase.sin()) * 10.0).round() / 10.0
}
