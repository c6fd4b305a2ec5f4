//! [`Body`], the one HTTP body type of the node's data path: the ingress, the
//! forwarder, the tunnel between nodes, egress and the guests' wasi:http all
//! pass it on as it comes, so no hop holds a whole body in memory.
//!
//! Must never: collect a body except where a size cap is written next to it
//! (a probe's answer, a failure's message).

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};

/// A streamed HTTP body.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// Why a body stopped before its end: the sender went away, a hop failed, a
/// cap was reached. Carried to whoever reads the body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

impl BodyError {
    /// An error with this message.
    pub fn new(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

impl From<BodyError> for wasmtime_wasi_http::Error {
    fn from(e: BodyError) -> Self {
        wasmtime_wasi_http::Error::InternalError(Some(e.0))
    }
}

/// A body of these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// No body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Any body, its errors as [`BodyError`]s.
pub fn from<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    body.map_err(BodyError::new).boxed_unsync()
}

/// A body as wasi:http hands it to a guest.
pub fn to_wasi(body: Body) -> wasmtime_wasi_http::WasiBody {
    body.map_err(wasmtime_wasi_http::Error::from).boxed_unsync()
}

/// The whole of a body known to be small, or an error past `limit` bytes.
pub async fn collect(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    Limited::new(body, limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(BodyError::new)
}

/// `body`, failing once more than `limit` bytes went through it.
pub fn limited(body: Body, limit: usize) -> Body {
    Limited::new(body, limit)
        .map_err(BodyError::new)
        .boxed_unsync()
}
