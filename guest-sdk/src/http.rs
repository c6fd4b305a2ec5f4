//! HTTP handlers: requests, responses, errors, routing and JSON.
//!
//! A handler is a plain function from [`Request`] to anything that is
//! [`IntoResponse`]; [`crate::http_handler!`] exports it as the component's
//! `wasi:http/incoming-handler`. A request's body is read whole when the
//! handler first asks for it (up to [`MAX_BODY`]); a response's is written
//! whole after the handler returns.

use std::cell::OnceCell;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;
use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::{InputStream, OutputStream, StreamError};

mod router;

pub use router::{Params, Router};

/// Largest request body a handler gets, and largest response body the
/// [`crate::client`] reads: 8 MiB. A bigger request is answered `413` before
/// the handler runs.
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// Bytes per stream call: the most one `blocking-write-and-flush` accepts
/// (wasi:io/streams) and a fair read size.
pub(crate) const CHUNK: usize = 4096;

/// An HTTP method.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `PATCH`
    Patch,
    /// `OPTIONS`
    Options,
    /// `CONNECT`
    Connect,
    /// `TRACE`
    Trace,
    /// Any other method, as sent.
    Other(String),
}

impl Method {
    /// The method as it appears on the wire (`GET`, `POST`, ...).
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Connect => "CONNECT",
            Method::Trace => "TRACE",
            Method::Other(m) => m,
        }
    }

    pub(crate) fn from_wasi(m: wasi::http::types::Method) -> Self {
        use wasi::http::types::Method as W;
        match m {
            W::Get => Method::Get,
            W::Head => Method::Head,
            W::Post => Method::Post,
            W::Put => Method::Put,
            W::Delete => Method::Delete,
            W::Patch => Method::Patch,
            W::Options => Method::Options,
            W::Connect => Method::Connect,
            W::Trace => Method::Trace,
            W::Other(m) => Method::Other(m),
        }
    }

    pub(crate) fn to_wasi(&self) -> wasi::http::types::Method {
        use wasi::http::types::Method as W;
        match self {
            Method::Get => W::Get,
            Method::Head => W::Head,
            Method::Post => W::Post,
            Method::Put => W::Put,
            Method::Delete => W::Delete,
            Method::Patch => W::Patch,
            Method::Options => W::Options,
            Method::Connect => W::Connect,
            Method::Trace => W::Trace,
            Method::Other(m) => W::Other(m.clone()),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Header names are compared case-insensitively; values are bytes.
pub type Headers = Vec<(String, Vec<u8>)>;

fn find_header<'a>(headers: &'a Headers, name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// An incoming request.
///
/// Each part is read from the host on first use, so a handler pays only for
/// what it looks at. The body is read whole, up to [`MAX_BODY`].
pub struct Request {
    method: OnceCell<Method>,
    /// Path and query.
    target: OnceCell<(String, String)>,
    headers: OnceCell<Headers>,
    body: OnceCell<Result<Vec<u8>, Error>>,
    /// The request as the host gave it, for the headers and body.
    source: Option<IncomingRequest>,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", self.method())
            .field("path", &self.path())
            .field("query", &self.query_string())
            .finish_non_exhaustive()
    }
}

impl Request {
    /// A request built by hand: for tests of handlers and routers.
    /// `path_with_query` is split at the first `?`.
    pub fn new(method: Method, path_with_query: &str) -> Self {
        Request {
            method: OnceCell::from(method),
            target: OnceCell::from(split_target(path_with_query)),
            headers: OnceCell::new(),
            body: OnceCell::new(),
            source: None,
        }
    }

    /// The same request with a header added.
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers();
        if let Some(headers) = self.headers.get_mut() {
            headers.push((name.to_owned(), value.into()));
        }
        self
    }

    /// The same request with this body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = OnceCell::from(Ok(body.into()));
        self
    }

    /// The method.
    pub fn method(&self) -> &Method {
        self.method.get_or_init(|| match &self.source {
            Some(request) => Method::from_wasi(request.method()),
            None => Method::Get,
        })
    }

    fn target(&self) -> &(String, String) {
        self.target.get_or_init(|| {
            let path_with_query = self
                .source
                .as_ref()
                .and_then(|request| request.path_with_query())
                .unwrap_or_default();
            split_target(&path_with_query)
        })
    }

    /// The path, without the query: `/items/7`.
    pub fn path(&self) -> &str {
        &self.target().0
    }

    /// The raw query string, without `?` (empty when there is none).
    pub fn query_string(&self) -> &str {
        &self.target().1
    }

    /// The first value of query parameter `key`, percent-decoded (`+` stays
    /// `+`); `Some("")` for `?key` and `?key=`. Not UTF-8 once decoded: `None`.
    pub fn query(&self, key: &str) -> Option<String> {
        query_param(self.query_string(), key)
    }

    /// Every header, in the order received.
    pub fn headers(&self) -> &Headers {
        self.headers.get_or_init(|| match &self.source {
            Some(request) => request.headers().entries(),
            None => Vec::new(),
        })
    }

    /// The first value of header `name` (any case) as text, if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(self.headers(), name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The body bytes: read whole on first use. A body over [`MAX_BODY`] is a
    /// `413` error, one that breaks off a `400`.
    pub fn body(&self) -> Result<&[u8], Error> {
        match self.body.get_or_init(|| self.read_body()) {
            Ok(bytes) => Ok(bytes),
            Err(e) => Err(e.clone()),
        }
    }

    /// Takes the body out of the request.
    pub fn into_body(self) -> Result<Vec<u8>, Error> {
        self.body()?;
        self.body.into_inner().unwrap_or_else(|| Ok(Vec::new()))
    }

    /// The body as text; a `400` error when it is not UTF-8.
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(self.body()?)
            .map_err(|e| Error::bad_request(format!("request body is not UTF-8: {e}")))
    }

    /// The body parsed as JSON into `T`; a `400` error saying where the body
    /// and `T` disagree.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(self.body()?)
            .map_err(|e| Error::bad_request(format!("request body is not the JSON expected: {e}")))
    }

    fn from_wasi(request: IncomingRequest) -> Self {
        Request {
            method: OnceCell::new(),
            target: OnceCell::new(),
            headers: OnceCell::new(),
            body: OnceCell::new(),
            source: Some(request),
        }
    }

    fn read_body(&self) -> Result<Vec<u8>, Error> {
        let Some(request) = &self.source else {
            return Ok(Vec::new());
        };
        let body = request
            .consume()
            .map_err(|()| Error::internal("the request body was already taken"))?;
        read_body(body).map_err(|e| match e {
            BodyError::TooLarge => Error::new(
                413,
                format!("request body is larger than the limit of {MAX_BODY} bytes"),
            ),
            BodyError::Stream(why) => {
                Error::bad_request(format!("reading the request body: {why}"))
            }
        })
    }
}

/// A response: status, headers, body.
///
/// Built by a handler, or returned by [`crate::client`] calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Headers,
    body: Vec<u8>,
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `200 OK`, `content-type: text/plain; charset=utf-8`.
    pub fn text(body: impl Into<String>) -> Self {
        Response::new(200)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into())
    }

    /// `200 OK`, `content-type: application/json`, the value serialized. A
    /// value that cannot be serialized (a map with non-string keys) gives `500`
    /// saying so.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new(200)
                .with_header("content-type", "application/json")
                .with_body(body),
            Err(e) => {
                Error::internal(format!("serializing the JSON response: {e}")).into_response()
            }
        }
    }

    /// `404 Not Found` with a plain message naming the path.
    pub fn not_found(path: &str) -> Self {
        Error::new(404, format!("nothing here: {path}")).into_response()
    }

    /// The same response with another status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// The same response with a header added.
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// The same response with this body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Every header.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The first value of header `name` (any case) as text, if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The body bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Takes the body out of the response.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// The body as text; an error (`502`: the peer sent it) when not UTF-8.
    pub fn text_body(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.body)
            .map_err(|e| Error::new(502, format!("response body is not UTF-8: {e}")))
    }

    /// The body parsed as JSON into `T`; an error (`502`: the peer sent it)
    /// saying where the body and `T` disagree.
    pub fn json_body<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::new(502, format!("response body is not the JSON expected: {e}")))
    }

    /// True for 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// An error a handler returns: a status and a message, answered as
/// `text/plain` with the message and a newline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    status: u16,
    message: String,
}

impl Error {
    /// An error with this status and message.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Error {
            status,
            message: message.into(),
        }
    }

    /// `400 Bad Request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::new(400, message)
    }

    /// `404 Not Found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(404, message)
    }

    /// `500 Internal Server Error`.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(500, message)
    }

    /// The status it is answered with.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for Error {}

/// What a handler may return.
pub trait IntoResponse {
    /// The response to send.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut body = self.message.into_bytes();
        body.push(b'\n');
        Response::new(self.status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body)
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        Response::text(self)
    }
}

impl IntoResponse for &str {
    fn into_response(self) -> Response {
        Response::text(self)
    }
}

impl<T: IntoResponse, E: IntoResponse> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(ok) => ok.into_response(),
            Err(e) => e.into_response(),
        }
    }
}

/// Serves one incoming request with `handler`; what [`crate::http_handler!`]
/// expands to.
#[doc(hidden)]
pub fn __serve(
    request: IncomingRequest,
    response_out: ResponseOutparam,
    handler: impl FnOnce(Request) -> Response,
) {
    // A HEAD response keeps its body: the host's HTTP server drops it and
    // keeps the content-length.
    let response = handler(Request::from_wasi(request));
    send_response(response_out, response);
}

fn send_response(response_out: ResponseOutparam, response: Response) {
    let mut headers = response.headers;
    if find_header(&headers, "content-length").is_none() {
        headers.push((
            "content-length".to_owned(),
            response.body.len().to_string().into_bytes(),
        ));
    }
    let fields = match Fields::from_list(&headers) {
        Ok(fields) => fields,
        Err(e) => {
            let message = format!("the handler set an invalid header: {e:?}\n");
            return send_response(
                response_out,
                Response::new(500).with_body(message.into_bytes()),
            );
        }
    };
    let outgoing = OutgoingResponse::new(fields);
    if outgoing.set_status_code(response.status).is_err() {
        let message = format!("the handler set an invalid status {}\n", response.status);
        return send_response(
            response_out,
            Response::new(500).with_body(message.into_bytes()),
        );
    }
    let Ok(body) = outgoing.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(outgoing));
    // A client that went away is not the handler's problem: the rest is dropped.
    let _ = write_body(body, &response.body);
}

pub(crate) fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), String> {
    {
        let stream: OutputStream = body
            .write()
            .map_err(|()| "the body stream was already taken".to_owned())?;
        for chunk in bytes.chunks(CHUNK) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| stream_error(&e))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))
}

pub(crate) enum BodyError {
    TooLarge,
    Stream(String),
}

pub(crate) fn read_body(body: IncomingBody) -> Result<Vec<u8>, BodyError> {
    let mut bytes = Vec::new();
    {
        let stream: InputStream = body
            .stream()
            .map_err(|()| BodyError::Stream("the body stream was already taken".into()))?;
        read_stream(&stream, &mut bytes)?;
    }
    drop(IncomingBody::finish(body));
    Ok(bytes)
}

pub(crate) fn read_stream(stream: &InputStream, bytes: &mut Vec<u8>) -> Result<(), BodyError> {
    loop {
        match stream.blocking_read(CHUNK as u64) {
            Ok(chunk) if bytes.len() + chunk.len() > MAX_BODY => return Err(BodyError::TooLarge),
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(()),
            Err(e) => return Err(BodyError::Stream(stream_error(&e))),
        }
    }
}

pub(crate) fn stream_error(e: &StreamError) -> String {
    match e {
        StreamError::Closed => "the stream is closed".into(),
        StreamError::LastOperationFailed(e) => match wasi::http::types::http_error_code(e) {
            Some(code) => format!("{code:?}"),
            None => e.to_debug_string(),
        },
    }
}

/// `/items?x=1` as (`/items`, `x=1`); an empty path is `/`.
fn split_target(path_with_query: &str) -> (String, String) {
    let (path, query) = path_with_query
        .split_once('?')
        .unwrap_or((path_with_query, ""));
    let path = if path.is_empty() { "/" } else { path };
    (path.to_owned(), query.to_owned())
}

/// The percent-decoded value of the first `key` parameter of `query`.
pub(crate) fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k) == key.as_bytes() {
            String::from_utf8(percent_decode(v)).ok()
        } else {
            None
        }
    })
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits stays as is.
pub fn percent_decode(s: &str) -> Vec<u8> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_found_and_decoded() {
        let req = Request::new(Method::Get, "/x?a=1&to=http%3A%2F%2Fb%2F&flag&e=");
        assert_eq!(req.path(), "/x");
        assert_eq!(req.query("a").as_deref(), Some("1"));
        assert_eq!(req.query("to").as_deref(), Some("http://b/"));
        assert_eq!(req.query("flag").as_deref(), Some(""));
        assert_eq!(req.query("e").as_deref(), Some(""));
        assert_eq!(req.query("missing"), None);
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%zz%41"), b"%zzA");
    }

    #[test]
    fn json_errors_say_what_is_wrong_and_answer_400() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Reading {
            celsius: f64,
        }
        let req = Request::new(Method::Post, "/").with_body(r#"{"celsius": "warm"}"#);
        let err = req.json::<Reading>().unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.message().contains("invalid type"), "{err}");
        let response = err.into_response();
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert!(response.body().ends_with(b"\n"));
    }

    #[test]
    fn results_turn_into_responses() {
        let ok: Result<&str, Error> = Ok("fine");
        assert_eq!(ok.into_response().status(), 200);
        let err: Result<&str, Error> = Err(Error::not_found("no item 7"));
        let r = err.into_response();
        assert_eq!((r.status(), r.body()), (404, &b"no item 7\n"[..]));
        let json = Response::json(&serde_json::json!({"n": 1}));
        assert_eq!(json.header("Content-Type"), Some("application/json"));
        assert_eq!(json.json_body::<serde_json::Value>().unwrap()["n"], 1);
    }
}
