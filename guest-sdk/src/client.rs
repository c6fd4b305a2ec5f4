//! Calling other services over `wasi:http/outgoing-handler`.
//!
//! Inside Flotilla, `http://NAME/`, `http://NAME.NAMESPACE/`,
//! `http://NAME.NAMESPACE.svc/` and a Service's cluster IP reach a ready
//! instance of that Service; anything outside the cluster must be listed in
//! the spec's `allowedOutboundHosts`, else the call fails with
//! [`ErrorKind::Denied`].
//!
//! ```ignore
//! let items: Vec<Item> = client::get("http://backend/items")?.json_body()?;
//! let reply = client::post("http://collector/readings")
//!     .json(&reading)?
//!     .timeout(Duration::from_secs(2))
//!     .send()?;
//! ```
//!
//! Every error says which call failed and why, and converts into an
//! [`http::Error`] (`502`, or `504` for a timeout) so `?` works in handlers.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use wasi::http::outgoing_handler;
use wasi::http::types::{ErrorCode, Fields, OutgoingRequest, RequestOptions, Scheme};

use crate::http::{self, read_stream, write_body, BodyError, Headers, Method, Response, MAX_BODY};

/// How long a call may wait to connect, for the response head, and between
/// body bytes, unless [`RequestBuilder::timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// `GET url`, sent at once.
pub fn get(url: &str) -> Result<Response, ClientError> {
    request(Method::Get, url).send()
}

/// A `POST` to `url`, to add a body to and [`send`](RequestBuilder::send).
pub fn post(url: &str) -> RequestBuilder {
    request(Method::Post, url)
}

/// A request with any method, to build and [`send`](RequestBuilder::send).
pub fn request(method: Method, url: &str) -> RequestBuilder {
    RequestBuilder {
        method,
        url: url.to_owned(),
        headers: Vec::new(),
        body: Vec::new(),
        timeout: DEFAULT_TIMEOUT,
    }
}

/// An outgoing request being built.
#[derive(Clone, Debug)]
#[must_use = "a request does nothing until it is sent"]
pub struct RequestBuilder {
    method: Method,
    url: String,
    headers: Headers,
    body: Vec<u8>,
    timeout: Duration,
}

impl RequestBuilder {
    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the body to `value` as JSON, with `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<Self, ClientError> {
        match serde_json::to_vec(value) {
            Ok(body) => Ok(self.header("content-type", "application/json").body(body)),
            Err(e) => Err(self.error(ErrorKind::Invalid(format!(
                "serializing the JSON body: {e}"
            )))),
        }
    }

    /// Sets the connect, response-head and between-bytes timeouts (each).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the request and reads the whole response (up to
    /// [`MAX_BODY`](crate::http::MAX_BODY)). Any status is a response; use
    /// [`Response::is_success`] or [`send_ok`](Self::send_ok) to treat 4xx and
    /// 5xx as errors.
    pub fn send(self) -> Result<Response, ClientError> {
        match self.try_send() {
            Ok(response) => Ok(response),
            Err(kind) => Err(self.error(kind)),
        }
    }

    /// Like [`send`](Self::send), but a status other than 2xx is an
    /// [`ErrorKind::Status`] error carrying the start of the body.
    pub fn send_ok(self) -> Result<Response, ClientError> {
        let (method, url) = (self.method.clone(), self.url.clone());
        let response = self.send()?;
        if response.is_success() {
            return Ok(response);
        }
        let body = String::from_utf8_lossy(response.body());
        let excerpt: String = body.trim_end().chars().take(200).collect();
        Err(ClientError {
            method,
            url,
            kind: ErrorKind::Status(response.status(), excerpt),
        })
    }

    fn error(&self, kind: ErrorKind) -> ClientError {
        ClientError {
            method: self.method.clone(),
            url: self.url.clone(),
            kind,
        }
    }

    fn try_send(&self) -> Result<Response, ErrorKind> {
        let target = Target::parse(&self.url).map_err(ErrorKind::Invalid)?;
        let fields = Fields::from_list(&self.headers)
            .map_err(|e| ErrorKind::Invalid(format!("invalid header: {e:?}")))?;
        let request = OutgoingRequest::new(fields);
        let refused = |part: &str| ErrorKind::Invalid(format!("the host refused the {part}"));
        request
            .set_method(&self.method.to_wasi())
            .map_err(|()| refused("method"))?;
        request
            .set_scheme(Some(&target.scheme))
            .map_err(|()| refused("scheme"))?;
        request
            .set_authority(Some(&target.authority))
            .map_err(|()| refused("host"))?;
        request
            .set_path_with_query(Some(&target.path))
            .map_err(|()| refused("path"))?;

        let options = RequestOptions::new();
        let nanos = u64::try_from(self.timeout.as_nanos()).unwrap_or(u64::MAX);
        // An error only means the host does not support that timeout.
        let _ = options.set_connect_timeout(Some(nanos));
        let _ = options.set_first_byte_timeout(Some(nanos));
        let _ = options.set_between_bytes_timeout(Some(nanos));

        let body = request
            .body()
            .map_err(|()| ErrorKind::Other("the request body was already taken".into()))?;
        let future = outgoing_handler::handle(request, Some(options)).map_err(ErrorKind::from)?;
        // Written after `handle`: the host reads it while sending.
        write_body(body, &self.body).map_err(ErrorKind::Other)?;

        let response = loop {
            match future.get() {
                Some(Ok(result)) => break result.map_err(ErrorKind::from)?,
                Some(Err(())) => return Err(ErrorKind::Other("response taken twice".into())),
                None => future.subscribe().block(),
            }
        };
        let status = response.status();
        let headers = response.headers().entries();
        let mut bytes = Vec::new();
        {
            let body = response
                .consume()
                .map_err(|()| ErrorKind::Other("the response body was already taken".into()))?;
            {
                let stream = body.stream().map_err(|()| {
                    ErrorKind::Other("the response stream was already taken".into())
                })?;
                read_stream(&stream, &mut bytes).map_err(|e| match e {
                    BodyError::TooLarge => ErrorKind::TooLarge,
                    BodyError::Stream(why) => {
                        ErrorKind::Other(format!("reading the response body: {why}"))
                    }
                })?;
            }
            drop(wasi::http::types::IncomingBody::finish(body));
        }
        let mut out = Response::new(status).with_body(bytes);
        for (name, value) in headers {
            out = out.with_header(&name, value);
        }
        Ok(out)
    }
}

#[derive(Debug)]
struct Target {
    scheme: Scheme,
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let without_fragment = url.split('#').next().unwrap_or_default();
        let (scheme, rest) = match without_fragment.split_once("://") {
            Some((s, rest)) if s.eq_ignore_ascii_case("http") => (Scheme::Http, rest),
            Some((s, rest)) if s.eq_ignore_ascii_case("https") => (Scheme::Https, rest),
            _ => return Err("not an http:// or https:// URL".into()),
        };
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        if authority.is_empty() {
            return Err("the URL has no host".into());
        }
        let path = match path.as_bytes().first() {
            None => "/".to_owned(),
            Some(b'?') => format!("/{path}"),
            Some(_) => path.to_owned(),
        };
        Ok(Target {
            scheme,
            authority: authority.to_owned(),
            path,
        })
    }
}

/// A call that failed: which one, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientError {
    method: Method,
    url: String,
    kind: ErrorKind,
}

impl ClientError {
    /// Why it failed.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The URL called.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The URL, a header or the body could not be sent as given.
    Invalid(String),
    /// The host denied the call (outside the cluster and not in
    /// `allowedOutboundHosts`).
    Denied,
    /// No such host or service.
    UnknownHost(String),
    /// The destination refused the connection, or had no instance to answer.
    Unavailable(String),
    /// No answer within the timeout.
    Timeout,
    /// The response body was larger than [`MAX_BODY`](crate::http::MAX_BODY).
    TooLarge,
    /// A status other than 2xx, from [`RequestBuilder::send_ok`]; with the
    /// start of the body.
    Status(u16, String),
    /// Anything else the host reported.
    Other(String),
}

impl From<ErrorCode> for ErrorKind {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::HttpRequestDenied => ErrorKind::Denied,
            ErrorCode::DnsError(e) => {
                ErrorKind::UnknownHost(e.rcode.unwrap_or_else(|| "name lookup failed".into()))
            }
            ErrorCode::DnsTimeout
            | ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::HttpResponseTimeout => ErrorKind::Timeout,
            ErrorCode::ConnectionRefused => ErrorKind::Unavailable("connection refused".into()),
            ErrorCode::DestinationUnavailable => {
                ErrorKind::Unavailable("destination unavailable".into())
            }
            ErrorCode::DestinationNotFound => {
                ErrorKind::UnknownHost("destination not found".into())
            }
            ErrorCode::HttpResponseBodySize(_) => ErrorKind::TooLarge,
            other => ErrorKind::Other(format!("{other:?}")),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Invalid(why) => write!(f, "invalid request: {why}"),
            ErrorKind::Denied => f.write_str(
                "denied: outgoing calls outside the cluster need the host in allowedOutboundHosts",
            ),
            ErrorKind::UnknownHost(why) => write!(f, "unknown host ({why})"),
            ErrorKind::Unavailable(why) => write!(f, "unavailable ({why})"),
            ErrorKind::Timeout => f.write_str("timed out"),
            ErrorKind::TooLarge => write!(f, "response body larger than {MAX_BODY} bytes"),
            ErrorKind::Status(status, body) if body.is_empty() => write!(f, "status {status}"),
            ErrorKind::Status(status, body) => write!(f, "status {status}: {body}"),
            ErrorKind::Other(why) => f.write_str(why),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.method, self.url, self.kind)
    }
}

impl std::error::Error for ClientError {}

impl From<ClientError> for http::Error {
    fn from(e: ClientError) -> Self {
        let status = match e.kind {
            ErrorKind::Timeout => 504,
            _ => 502,
        };
        http::Error::new(status, e.to_string())
    }
}

impl http::IntoResponse for ClientError {
    fn into_response(self) -> Response {
        http::Error::from(self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_host_and_path() {
        let t = Target::parse("http://backend").unwrap();
        assert_eq!((t.authority.as_str(), t.path.as_str()), ("backend", "/"));
        let t = Target::parse("HTTP://backend.default.svc:8080/items?x=1#frag").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("backend.default.svc:8080", "/items?x=1")
        );
        let t = Target::parse("http://10.96.0.1?q").unwrap();
        assert_eq!(t.path, "/?q");
        assert!(Target::parse("ftp://x/").unwrap_err().contains("http://"));
        assert!(Target::parse("http:///x").unwrap_err().contains("no host"));
    }

    #[test]
    fn errors_name_the_call_and_map_to_gateway_statuses() {
        let e = ClientError {
            method: Method::Get,
            url: "http://backend/items".into(),
            kind: ErrorKind::Timeout,
        };
        assert_eq!(e.to_string(), "GET http://backend/items: timed out");
        let as_http = http::Error::from(e);
        assert_eq!(as_http.status(), 504);
        let denied = ClientError {
            method: Method::Post,
            url: "http://example.com/".into(),
            kind: ErrorKind::from(ErrorCode::HttpRequestDenied),
        };
        assert!(
            denied.to_string().contains("allowedOutboundHosts"),
            "{denied}"
        );
        assert_eq!(http::Error::from(denied).status(), 502);
    }
}
