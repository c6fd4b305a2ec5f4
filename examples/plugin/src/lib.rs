//! `plugin`: an untrusted plugin (`wasi:http/proxy`) on the `flotilla-guest`
//! SDK, deployed with tight limits to show each one hit and reported.
//!
//! - `GET /`: what it can be asked to do.
//! - `GET /alloc?mb=N`: allocates and touches N MiB. Within the memory limit
//!   it answers `allocated N MiB`; over it, the node refuses the memory, the
//!   request is killed, the caller gets `502 ... OOMKilled: memory limit ...`
//!   and the instance's log says so.
//! - `GET /spin`: computes forever without calling the host. The node kills
//!   the request after its busy timeout (`flotilla node --busy-timeout`,
//!   default 10 s): `502 ... CpuLimit: cpu limit exceeded ...`, logged too.
//!   The CPU limit (`resources.limits.cpu`) throttles it meanwhile, so the
//!   neighbours keep their share.
//! - `GET /clock`: reads the clock forever. Each read is a call into the
//!   host, so the busy timeout never ends it; the request's deadline
//!   (`flotilla node --request-timeout`, default 60 s) does:
//!   `DeadlineExceeded`, logged, and the caller gets its answer or timeout.
//! - `GET /fetch?url=URL`: calls URL. With no `allowedOutboundHosts` every
//!   host outside the cluster is denied: `502 ... denied ...`, and the node
//!   records an `EgressDenied` event. `&times=N` (up to 10,000) calls it N
//!   times, as a plugin hammering a host would: the node still records one
//!   Event, its count moving.

use std::hint::black_box;

use flotilla_guest::client;
use flotilla_guest::http::{Error, Request, Response, Router};

flotilla_guest::http_handler!(handle);

const MIB: usize = 1024 * 1024;

fn handle(req: Request) -> Response {
    Router::new()
        .get("/", |_, _| {
            "plugin: GET /alloc?mb=N, GET /spin, GET /clock, GET /fetch?url=URL\n"
        })
        .get("/alloc", |req, _| alloc(req))
        .get("/spin", |_, _| spin())
        .get("/clock", |_, _| clock())
        .get("/fetch", |req, _| fetch(req))
        .handle(req)
}

fn alloc(req: Request) -> Result<String, Error> {
    let mb: usize = req
        .query("mb")
        .and_then(|v| v.parse().ok())
        .filter(|&mb| mb <= 4096)
        .ok_or_else(|| Error::bad_request("mb: expected a whole number of MiB up to 4096"))?;
    let mut block = vec![0u8; mb * MIB];
    // Touch every page so the memory is really used, not just reserved.
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    let touched = black_box(&block)
        .iter()
        .step_by(4096)
        .filter(|&&b| b == 1)
        .count();
    Ok(format!("allocated {mb} MiB ({touched} pages)\n"))
}

fn spin() -> String {
    let mut x: u64 = black_box(1);
    loop {
        x = black_box(
            x.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        );
        if x == 0 {
            // Practically never: keeps the loop from being proven endless.
            return format!("spun to {x}\n");
        }
    }
}

fn clock() -> String {
    let started = std::time::Instant::now();
    loop {
        if black_box(started.elapsed()).as_secs() == u64::MAX {
            // Never: keeps the loop from being proven endless.
            return "the clock ran out\n".into();
        }
    }
}

fn fetch(req: Request) -> Result<Response, Error> {
    let url = req
        .query("url")
        .unwrap_or_else(|| "http://example.com/".into());
    let times: u32 = match req.query("times") {
        None => 1,
        Some(v) => v
            .parse()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| Error::bad_request("times: expected a whole number from 1 to 10000"))?,
    };
    for _ in 1..times {
        let _ = client::get(&url);
    }
    Ok(client::get(&url)?)
}
