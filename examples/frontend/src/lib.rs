//! `frontend`: an http-world component (`wasi:http/proxy`) on the
//! `flotilla-guest` SDK that calls another service for every request, to
//! show service-to-service HTTP.
//!
//! - `GET /items`: fetches `http://backend/items` (JSON), and answers
//!   `{"frontend": NAME, "items": [...]}`;
//! - anything else: sends `GET <target>` and answers the target's status with
//!   the body `frontend <NAME> -> <target's body>`. The target is the query
//!   parameter `to` (percent-decoded, e.g. `/?to=http%3A%2F%2F10.96.0.12%2F`),
//!   or `http://backend/` without one.
//!
//! A call that fails answers `502` (`504` on a timeout) with
//! `frontend <NAME> -> error: <what failed>`; a `to` that is not an http URL,
//! `400`. Calls time out after 5 s.

use std::time::Duration;

use flotilla_guest::client;
use flotilla_guest::http::{Error, IntoResponse, Method, Request, Response, Router};
use flotilla_guest::serde::{Deserialize, Serialize};

flotilla_guest::http_handler!(handle);

/// Where requests go without a `to` query parameter.
const DEFAULT_TARGET: &str = "http://backend/";

/// A backend that never answers costs a request 5 s, not forever.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What `backend` lists at `/items`.
#[derive(Serialize, Deserialize)]
#[serde(crate = "flotilla_guest::serde")]
struct Item {
    id: u32,
    name: String,
    served_by: String,
}

#[derive(Serialize)]
#[serde(crate = "flotilla_guest::serde")]
struct Page {
    frontend: String,
    items: Vec<Item>,
}

fn handle(req: Request) -> Response {
    Router::new()
        .get("/items", |_, _| items())
        .route_any("/*rest", |req, _| relay(req))
        .handle(req)
}

fn items() -> Result<Response, Error> {
    let items: Vec<Item> = client::request(Method::Get, "http://backend/items")
        .timeout(TIMEOUT)
        .send_ok()?
        .json_body()?;
    Ok(Response::json(&Page {
        frontend: name(),
        items,
    }))
}

fn relay(req: Request) -> Response {
    let prefix = format!("frontend {} -> ", name());
    let target = req.query("to").unwrap_or_else(|| DEFAULT_TARGET.to_owned());
    match client::request(Method::Get, &target)
        .timeout(TIMEOUT)
        .send()
    {
        Ok(answer) => {
            let mut body = prefix.into_bytes();
            body.extend_from_slice(answer.body());
            Response::new(answer.status())
                .with_header("content-type", "text/plain; charset=utf-8")
                .with_body(body)
        }
        Err(e) => {
            // The target came from the caller: a URL that cannot be sent is their mistake.
            let status = match e.kind() {
                client::ErrorKind::Invalid(_) => 400,
                _ => Error::from(e.clone()).status(),
            };
            Error::new(status, format!("{prefix}error: {e}")).into_response()
        }
    }
}

fn name() -> String {
    flotilla_guest::context()
        .instance_name()
        .unwrap_or("unknown")
        .to_owned()
}
