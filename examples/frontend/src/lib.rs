//! `frontend`: an http-world component (`wasi:http/proxy`) that calls another
//! service for every request, to show service-to-service HTTP.
//!
//! For each incoming request it sends `GET <target>` through
//! `wasi:http/outgoing-handler` and answers:
//!
//! - when the call returns a response: the backend's status code and the body
//!   `frontend <NAME> -> <backend body>`, the backend body passed on byte for
//!   byte (`backend`'s body already ends in a newline);
//! - when the call fails with a wasi:http `ErrorCode` (denied, no such host,
//!   refused, timed out, reading the body failed, ...): `502` and the body
//!   `frontend <NAME> -> error: <ErrorCode in Debug form>\n`;
//! - when the `to` parameter is not a usable URL: `400` and the body
//!   `frontend <NAME> -> error: <what is wrong>\n`.
//!
//! The target is the query parameter `to` (percent-decoded, e.g.
//! `/?to=http%3A%2F%2F10.96.0.12%2F`), or `http://backend/` without one. NAME
//! is the `FLOTILLA_INSTANCE_NAME` environment variable, or `unknown`.
//!
//! Everything is parsed by hand so the component needs only the `wasi` crate.

use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    RequestOptions, ResponseOutparam, Scheme,
};
use wasi::io::streams::StreamError;

/// The environment variable naming the instance.
const NAME_VAR: &str = "FLOTILLA_INSTANCE_NAME";

/// Where requests go without a `to` query parameter.
const DEFAULT_TARGET: &str = "http://backend/";

/// Connect, first-byte and between-bytes timeout of the outgoing request, in
/// nanoseconds: a backend that never answers costs a request 5 s, not forever.
const TIMEOUT_NS: u64 = 5_000_000_000;

/// Largest backend body passed on. Bigger ones are an error, so a chatty
/// backend cannot push the instance past its memory limit.
const MAX_BODY: usize = 64 * 1024;

/// Bytes per stream call: the most one `blocking-write-and-flush` accepts
/// (wasi:io/streams), and a fair read size.
const CHUNK: usize = 4096;

struct Frontend;

wasi::http::proxy::export!(Frontend);

impl wasi::exports::http::incoming_handler::Guest for Frontend {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let mut body = format!("frontend {} -> ", instance_name()).into_bytes();
        let target = request.path_with_query().unwrap_or_default();
        drop(request);

        let status = match outgoing_request(&target) {
            Err(why) => {
                body.extend_from_slice(format!("error: {why}\n").as_bytes());
                400
            }
            Ok(outgoing) => match send(outgoing) {
                Ok((status, backend_body)) => {
                    body.extend_from_slice(&backend_body);
                    status
                }
                Err(code) => {
                    body.extend_from_slice(format!("error: {code:?}\n").as_bytes());
                    502
                }
            },
        };
        respond(response_out, status, &body);
    }
}

// === outgoing request ===

/// A `GET` request for the target named by the incoming request's
/// `path_with_query`, or why it cannot be made.
fn outgoing_request(path_with_query: &str) -> Result<OutgoingRequest, String> {
    let url = match query_param(path_with_query, "to") {
        None => DEFAULT_TARGET.to_owned(),
        Some(bytes) => String::from_utf8(bytes)
            .map_err(|_| "the `to` parameter is not UTF-8 once percent-decoded".to_owned())?,
    };
    let (scheme, authority, path) = split_url(&url)?;

    let request = OutgoingRequest::new(Fields::new());
    let invalid = |part: &str| format!("{url:?}: the host refused its {part}");
    request
        .set_method(&Method::Get)
        .map_err(|()| invalid("method"))?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| invalid("scheme"))?;
    request
        .set_authority(Some(authority))
        .map_err(|()| invalid("host"))?;
    request
        .set_path_with_query(Some(&path))
        .map_err(|()| invalid("path"))?;
    Ok(request)
}

/// Splits an `http://` or `https://` URL into scheme, authority and path with
/// query (`/` when empty); the fragment is dropped, as it is never sent.
fn split_url(url: &str) -> Result<(Scheme, &str, String), String> {
    let without_fragment = url.split('#').next().unwrap_or_default();
    let (scheme, rest) = match without_fragment.split_once("://") {
        Some((s, rest)) if s.eq_ignore_ascii_case("http") => (Scheme::Http, rest),
        Some((s, rest)) if s.eq_ignore_ascii_case("https") => (Scheme::Https, rest),
        _ => {
            return Err(format!(
                "{url:?} is not an http:// or https:// URL (e.g. ?to=http://backend/)"
            ))
        }
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    if authority.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let path = match path.as_bytes().first() {
        None => "/".to_owned(),
        Some(b'?') => format!("/{path}"),
        Some(_) => path.to_owned(),
    };
    Ok((scheme, authority, path))
}

/// Sends `request` and reads the whole response: its status and body.
fn send(request: OutgoingRequest) -> Result<(u16, Vec<u8>), ErrorCode> {
    let options = RequestOptions::new();
    // An error only means the host does not support that timeout.
    let _ = options.set_connect_timeout(Some(TIMEOUT_NS));
    let _ = options.set_first_byte_timeout(Some(TIMEOUT_NS));
    let _ = options.set_between_bytes_timeout(Some(TIMEOUT_NS));

    // The request has no body: one that is never taken is sent empty.
    let future = outgoing_handler::handle(request, Some(options))?;
    let response = loop {
        match future.get() {
            Some(result) => break result.expect("response taken once")?,
            None => future.subscribe().block(),
        }
    };
    let status = response.status();

    // Declared in this order so they drop child-first: the stream before the
    // body before the response.
    let body = response.consume().expect("body consumed once");
    let stream = body.stream().expect("stream taken once");
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(CHUNK as u64) {
            Ok(chunk) if bytes.len() + chunk.len() > MAX_BODY => {
                return Err(ErrorCode::HttpResponseBodySize(Some(MAX_BODY as u64)));
            }
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(wasi::http::types::http_error_code(&e)
                    .unwrap_or_else(|| ErrorCode::InternalError(Some(e.to_debug_string()))));
            }
        }
    }
    Ok((status, bytes))
}

// === query string ===

/// The percent-decoded value of the first `key` parameter in the query of
/// `path_with_query` (`Some` but empty for `?key` and `?key=`). `+` is kept
/// as is: it is a literal in URLs, the values this is meant for.
fn query_param(path_with_query: &str, key: &str) -> Option<Vec<u8>> {
    let (_, query) = path_with_query.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == key.as_bytes()).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits stays as is.
fn percent_decode(s: &str) -> Vec<u8> {
    let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16));
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

// === answer ===

/// Answers `status` with a `text/plain` `body`.
fn respond(response_out: ResponseOutparam, status: u16, body_bytes: &[u8]) {
    let headers = Fields::from_list(&[
        ("content-type".to_owned(), b"text/plain".to_vec()),
        (
            "content-length".to_owned(),
            body_bytes.len().to_string().into_bytes(),
        ),
    ])
    .expect("valid headers");
    let response = OutgoingResponse::new(headers);
    // The status is 400, 502 or one the host already accepted from the backend.
    response.set_status_code(status).expect("valid status");
    let body = response.body().expect("body taken once");
    ResponseOutparam::set(response_out, Ok(response));

    let stream = body.write().expect("stream taken once");
    for chunk in body_bytes.chunks(CHUNK) {
        stream.blocking_write_and_flush(chunk).expect("write body");
    }
    drop(stream);
    OutgoingBody::finish(body, None).expect("finish body");
}

/// `FLOTILLA_INSTANCE_NAME` when it is set and not empty, else `unknown`.
fn instance_name() -> String {
    wasi::cli::environment::get_environment()
        .into_iter()
        .find(|(k, v)| k == NAME_VAR && !v.is_empty())
        .map(|(_, v)| v)
        .unwrap_or_else(|| "unknown".to_owned())
}
