//! `backend`: an http-world component (`wasi:http/proxy`) on the
//! `flotilla-guest` SDK, for load-balancing demos behind a Service.
//!
//! - `GET /items`: a JSON list of items, each naming the instance that served
//!   it;
//! - `GET /items/ID`: one item, or `404` naming the ID;
//! - anything else, whatever the method: `backend <NAME>\n`, NAME being the
//!   instance's name (`FLOTILLA_INSTANCE_NAME`) or `unknown`. Run several
//!   replicas and the answers show which one was picked.

use flotilla_guest::http::{Error, Params, Request, Response, Router};
use flotilla_guest::serde::Serialize;

flotilla_guest::http_handler!(handle);

/// One thing the backend knows about.
#[derive(Serialize)]
#[serde(crate = "flotilla_guest::serde")]
struct Item {
    id: u32,
    name: &'static str,
    served_by: String,
}

const ITEMS: [(u32, &str); 3] = [(1, "anchor"), (2, "buoy"), (3, "compass")];

fn handle(req: Request) -> Response {
    Router::new()
        .get("/items", |_, _| Response::json(&items()))
        .get("/items/:id", item)
        .route_any("/*rest", |_, _| format!("backend {}\n", name()))
        .handle(req)
}

fn items() -> Vec<Item> {
    ITEMS
        .iter()
        .map(|&(id, name)| Item {
            id,
            name,
            served_by: self::name(),
        })
        .collect()
}

fn item(_req: Request, params: Params) -> Result<Response, Error> {
    let id = params.get("id").unwrap_or_default();
    items()
        .into_iter()
        .find(|item| item.id.to_string() == id)
        .map(|item| Response::json(&item))
        .ok_or_else(|| Error::not_found(format!("no item with id {id:?}")))
}

fn name() -> String {
    flotilla_guest::context()
        .instance_name()
        .unwrap_or("unknown")
        .to_owned()
}
