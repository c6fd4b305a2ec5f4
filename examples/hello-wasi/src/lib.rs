//! `hello-wasi`: the hand-written baseline of `hello` (no SDK), an http-world component (`wasi:http/proxy`).
//!
//! It exports `wasi:http/incoming-handler` and answers every request with
//! `200 OK`, `content-type: text/plain` and the body `hello from <NAME>\n`,
//! where NAME is the `FLOTILLA_INSTANCE_NAME` environment variable (set by the
//! Flotilla node to the instance's name), or `world` when it is unset.
//!
//! The host creates a fresh instance for every request, so there is no state
//! kept between requests.

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// The environment variable naming the instance.
const NAME_VAR: &str = "FLOTILLA_INSTANCE_NAME";

struct Hello;

wasi::http::proxy::export!(Hello);

impl wasi::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let body_text = format!("hello from {}\n", instance_name());

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

        // The body is far below the 4096-byte limit of one blocking write.
        let stream = body.write().expect("stream taken once");
        stream
            .blocking_write_and_flush(body_text.as_bytes())
            .expect("write body");
        drop(stream);
        OutgoingBody::finish(body, None).expect("finish body");
    }
}

/// `FLOTILLA_INSTANCE_NAME` when it is set and not empty, else `world`.
fn instance_name() -> String {
    wasi::cli::environment::get_environment()
        .into_iter()
        .find(|(k, v)| k == NAME_VAR && !v.is_empty())
        .map(|(_, v)| v)
        .unwrap_or_else(|| "world".to_owned())
}
