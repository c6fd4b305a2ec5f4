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

/// `body`, failing when its sender sends nothing for `idle`: a client that
/// stops halfway does not hold a guest's request open for good.
pub fn idle_timeout(body: Body, idle: std::time::Duration) -> Body {
    IdleTimeout {
        body,
        idle,
        timer: Box::pin(tokio::time::sleep(idle)),
    }
    .boxed_unsync()
}

struct IdleTimeout {
    body: Body,
    idle: std::time::Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for IdleTimeout {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(frame)
            }
            Poll::Pending => match std::future::Future::poll(this.timer.as_mut(), cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyError(format!(
                    "the request body sent nothing for {:?}",
                    this.idle
                ))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
