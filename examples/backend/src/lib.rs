//! `backend`: an http-world component (`wasi:http/proxy`) for load-balancing
//! demos behind a Service.
//!
//! It exports `wasi:http/incoming-handler` and answers every request, whatever
//! its method or path, with `200 OK`, `content-type: text/plain` and the body
//! `backend <NAME>\n`, where NAME is the `FLOTILLA_INSTANCE_NAME` environment
//! variable (set by the Flotilla node to the instance's name), or `unknown`
//! when it is unset. Run several replicas and the answers show which one was
//! picked.
//!
//! The host creates a fresh instance for every request, so there is no state
//! kept between requests.

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// The environment variable naming the instance.
const NAME_VAR: &str = "FLOTILLA_INSTANCE_NAME";

struct Backend;

wasi::http::proxy::export!(Backend);

impl wasi::exports::http::incoming_handler::Guest for Backend {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let body_text = format!("backend {}\n", instance_name());

        let headers = Fields::from_list(&[
            ("content-type".to_owned(), b"text/plain".to_vec()),
            (
                "content-length".to_owned(),
                body_text.len().to_string().into_bytes(),
            ),
        ])
        .expect("valid headers");
        let response = OutgoingResponse::new(headers);
        response.set_status_code(200).expect("valid status");
        let body = response.body().expect("body taken once");
        ResponseOutparam::set(response_out, Ok(response));

        let stream = body.write().expect("stream taken once");
        // One blocking write takes at most 4096 bytes; Flotilla names are far
        // shorter, but `wasmtime serve --env` accepts anything.
        for chunk in body_text.as_bytes().chunks(4096) {
            stream.blocking_write_and_flush(chunk).expect("write body");
        }
        drop(stream);
        OutgoingBody::finish(body, None).expect("finish body");
    }
}

/// `FLOTILLA_INSTANCE_NAME` when it is set and not empty, else `unknown`.
fn instance_name() -> String {
    wasi::cli::environment::get_environment()
        .into_iter()
        .find(|(k, v)| k == NAME_VAR && !v.is_empty())
        .map(|(_, v)| v)
        .unwrap_or_else(|| "unknown".to_owned())
}
