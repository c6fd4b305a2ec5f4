//! # flotilla-guest: Flotilla workloads in a few lines
//!
//! A Flotilla workload is a WebAssembly component. This crate hides the
//! WASI 0.2 plumbing behind small, plain-Rust types so a workload is a
//! function, not a page of bindings:
//!
//! ```ignore
//! use flotilla_guest::http::{Request, Response};
//!
//! flotilla_guest::http_handler!(hello);
//!
//! fn hello(_req: Request) -> Response {
//!     let name = flotilla_guest::context().instance_name().unwrap_or("world").to_owned();
//!     Response::text(format!("hello from {name}\n"))
//! }
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`. The result is a
//! standard `wasi:http/proxy` component: Flotilla runs it (`world: http`), and
//! so does `wasmtime serve`.
//!
//! What is here:
//!
//! - [`http`]: the request and response types, the [`http_handler!`] export
//!   macro, [`http::Router`] for path routing, JSON helpers.
//! - [`client`]: calls to other services (`client::get("http://backend/items")`)
//!   over `wasi:http/outgoing-handler`, with timeouts and errors that say what
//!   failed.
//! - [`context()`]: which instance, namespace and node this is, and the spec's
//!   environment.
//! - [`log`]: levelled log lines on stderr, the shape `flotilla logs` shows.
//! - [`command`]: for command-world programs (`world: command`): a main loop
//!   that ends when the node asks the instance to stop.
//!
//! Every fallible call returns an error that says what failed; nothing in this
//! crate panics on what a peer sends.

#![warn(missing_docs)]

pub mod client;
pub mod command;
mod context;
pub mod http;
pub mod log;

pub use context::{
    context, Context, ENV_INSTANCE_NAME, ENV_NAMESPACE, ENV_NODE_NAME, ENV_STOP_SIGNAL,
};

/// Re-exported so derive macros work without a direct dependency.
pub use serde;
/// Re-exported so `serde_json::json!` and `Value` work without a direct dependency.
pub use serde_json;

/// What the export macros expand to; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use wasi;
    pub use wasi::exports::http::incoming_handler::Guest as IncomingHandler;
    pub use wasi::http::types::{IncomingRequest, ResponseOutparam};
}

/// Exports a function as the component's `wasi:http/incoming-handler`.
///
/// The function takes a [`http::Request`] and returns anything that is
/// [`http::IntoResponse`]: a [`http::Response`], a `String` or `&str` (200,
/// `text/plain`), or a `Result` of those with an [`http::Error`] (or anything
/// that converts into one, such as a [`client::ClientError`]) so `?` works.
///
/// ```ignore
/// flotilla_guest::http_handler!(handle);
///
/// fn handle(req: flotilla_guest::http::Request) -> Result<String, flotilla_guest::http::Error> {
///     let who = req.query("name").unwrap_or_else(|| "world".into());
///     Ok(format!("hello {who}\n"))
/// }
/// ```
///
/// Use it once per component. The host creates a fresh instance for every
/// request, so nothing is kept between requests.
#[macro_export]
macro_rules! http_handler {
    ($handler:path) => {
        struct __FlotillaHttpHandler;

        impl $crate::__private::IncomingHandler for __FlotillaHttpHandler {
            fn handle(
                request: $crate::__private::IncomingRequest,
                response_out: $crate::__private::ResponseOutparam,
            ) {
                $crate::http::__serve(request, response_out, |request| {
                    $crate::http::IntoResponse::into_response($handler(request))
                })
            }
        }

        $crate::__private::wasi::http::proxy::export!(__FlotillaHttpHandler);
    };
}
