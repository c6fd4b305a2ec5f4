//! `collector`: the Service edge sensors post readings to (`wasi:http/proxy`),
//! on the `flotilla-guest` SDK.
//!
//! - `POST /readings` with a JSON reading (`node`, `instance`, `seq`,
//!   `celsius`): logs `reading from NODE: CELSIUS C (seq N)` and answers `202`
//!   with `{"accepted": true, "collector": NAME}`. A body that is not such a
//!   reading, or a temperature outside -80..=150 C, is answered `400` saying
//!   what is wrong, and logged as a warning.
//! - `GET /`: what this is.
//!
//! The host makes a fresh instance per request, so the collector keeps
//! nothing itself: `flotilla logs` of its instances is the record.

use flotilla_guest::http::{Error, Request, Response, Router};
use flotilla_guest::serde::Deserialize;
use flotilla_guest::{info, warn};

flotilla_guest::http_handler!(handle);

/// One sensor reading.
#[derive(Deserialize)]
#[serde(crate = "flotilla_guest::serde")]
struct Reading {
    node: String,
    instance: String,
    seq: u64,
    celsius: f64,
}

fn handle(req: Request) -> Response {
    Router::new()
        .get("/", |_, _| {
            "collector: POST /readings with {node, instance, seq, celsius}\n"
        })
        .post("/readings", |req, _| accept(req))
        .handle(req)
}

fn accept(req: Request) -> Result<Response, Error> {
    let reading: Reading = req
        .json()
        .inspect_err(|e| warn!("rejected a reading: {e}"))?;
    if !(-80.0..=150.0).contains(&reading.celsius) {
        let e = Error::bad_request(format!("celsius: {} is outside -80..=150", reading.celsius));
        warn!("rejected a reading from {}: {}", reading.node, e.message());
        return Err(e);
    }
    info!(
        "reading from {}: {:.1} C (seq {}, {})",
        reading.node, reading.celsius, reading.seq, reading.instance
    );
    let name = flotilla_guest::context()
        .instance_name()
        .unwrap_or("collector")
        .to_owned();
    Ok(Response::json(&flotilla_guest::serde_json::json!({
        "accepted": true,
        "collector": name,
    }))
    .with_status(202))
}
