//! `hello`: an http-world component (`wasi:http/proxy`) on the
//! `flotilla-guest` SDK.
//!
//! Answers every request with `200 OK` and `hello from <NAME>`, NAME being
//! the instance's name (`FLOTILLA_INSTANCE_NAME`), or `world` outside
//! Flotilla.

use flotilla_guest::http::{Request, Response};

flotilla_guest::http_handler!(hello);

fn hello(_req: Request) -> Response {
    let ctx = flotilla_guest::context();
    let name = ctx.instance_name().unwrap_or("world");
    Response::text(format!("hello from {name}\n"))
}
