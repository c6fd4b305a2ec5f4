//! The QUIC transport of the API: one bidirectional stream per request, a
//! length-prefixed postcard frame each way (a stream of frames for watches,
//! logs and module chunks). It authenticates each connection once, from the
//! certificate the handshake verified, decodes each request once, hands it
//! to the router, and writes what comes back. It counts every request in the
//! metrics.
//!
//! Must never: decide anything about a request (the router and the verbs
//! do), or keep reading a peer's bytes past the caps.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_client::tls;
use flotilla_client::wire::{
    encode_frame, read_frame, write_frame, ApiError, ErrorCode, Request, Response, ResponseV1,
    UploadChunk, MAX_FRAME, MODULE_CHUNK,
};

use super::audit::AuditEvent;
use super::authz::{audit_target, Caller};
use super::errors::ApiResult;
use super::metrics::{self, result_of};
use super::router::Routed;
use super::watch::WatchFeed;
use super::ApiServer;

/// Whether a request of this verb (as the metrics label it) changes
/// something: those are audited whatever their result, the others only when
/// refused.
fn changes(verb: &str) -> bool {
    !matches!(
        verb,
        "get"
            | "list"
            | "watch"
            | "members"
            | "whoami"
            | "download"
            | "logs"
            | "clock"
            | "probe-tunnel"
            | "self-subject-review"
            | "access-review"
            | "list-tokens"
            | "unknown"
    )
}

fn audit_time() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    now.format(&format).unwrap_or_default()
}

fn invalid(msg: String) -> ApiError {
    ApiError::new(ErrorCode::Invalid, msg)
}

/// What a connection may do: a caller without a certificate may only join,
/// so it gets little of everything.
#[derive(Clone, Copy)]
struct Allowance {
    /// Streams open at once.
    streams: u32,
    /// Largest request frame.
    frame: usize,
    /// How long a request's frame may take to arrive.
    request_within: Duration,
    /// How long the connection may last, if bounded.
    lasts: Option<Duration>,
}

impl Allowance {
    /// A certificate of the cluster CA: nodes keep hundreds of watches.
    const AUTHENTICATED: Self = Self {
        streams: 4096,
        frame: MAX_FRAME,
        request_within: Duration::from_secs(30),
        lasts: None,
    };
    /// No certificate: a join is one small request and its answer.
    const ANONYMOUS: Self = Self {
        streams: 2,
        frame: 64 * 1024,
        request_within: Duration::from_secs(5),
        lasts: Some(Duration::from_secs(10)),
    };
}

/// Most unauthenticated connections at once from one address: joins are
/// one at a time, and a stranger must not hold the listener's memory.
pub const ANONYMOUS_PER_SOURCE: usize = 8;

/// The unauthenticated connections open from each address.
#[derive(Default)]
pub struct AnonymousConnections(std::sync::Mutex<HashMap<IpAddr, usize>>);

impl AnonymousConnections {
    fn admit(self: &Arc<Self>, from: IpAddr) -> Option<AnonymousSlot> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(from).or_default();
        if *count >= ANONYMOUS_PER_SOURCE {
            return None;
        }
        *count += 1;
        Some(AnonymousSlot {
            all: self.clone(),
            from,
        })
    }
}

/// One admitted unauthenticated connection; dropping it frees its place.
struct AnonymousSlot {
    all: Arc<AnonymousConnections>,
    from: IpAddr,
}

impl Drop for AnonymousSlot {
    fn drop(&mut self) {
        let mut open = self.all.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.from) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.from);
            }
        }
    }
}

impl ApiServer {
    /// Serves every stream of one client connection. One without a
    /// certificate gets two streams, small frames and ten seconds, and at
    /// most [`ANONYMOUS_PER_SOURCE`] such connections come from one address.
    pub async fn serve_connection(self: Arc<Self>, conn: quinn::Connection) {
        let caller = Caller::from_certificate(tls::connection_certificate(&conn));
        if !caller.is_anonymous() {
            return self
                .serve_streams(conn, caller, Allowance::AUTHENTICATED)
                .await;
        }
        let from = conn.remote_address().ip();
        let Some(_slot) = self.anonymous.admit(from) else {
            conn.close(
                3u32.into(),
                b"too many unauthenticated connections from this address",
            );
            return;
        };
        let allowance = Allowance::ANONYMOUS;
        let lasts = allowance.lasts.unwrap_or(Duration::MAX);
        let serving = self.serve_streams(conn.clone(), caller, allowance);
        if tokio::time::timeout(lasts, serving).await.is_err() {
            conn.close(
                4u32.into(),
                b"an unauthenticated connection may only join, within 10 s",
            );
        }
    }

    async fn serve_streams(
        self: Arc<Self>,
        conn: quinn::Connection,
        caller: Caller,
        allowance: Allowance,
    ) {
        conn.set_max_concurrent_bi_streams(allowance.streams.into());
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(_) => return,
            };
            let this = self.clone();
            let caller = caller.clone();
            tokio::spawn(async move {
                this.serve_stream(caller, allowance, send, recv).await;
            });
        }
    }

    async fn serve_stream(
        &self,
        caller: Caller,
        allowance: Allowance,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let started = Instant::now();
        let read = tokio::time::timeout(
            allowance.request_within,
            read_frame(&mut recv, allowance.frame),
        )
        .await;
        let req: Request = match read {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                let err = ApiError::new(ErrorCode::BadRequest, format!("bad request frame: {e}"));
                self.metrics.observe("unknown", "", "BadRequest", started);
                answer(&mut send, Err(err)).await;
                return;
            }
            Err(_) => {
                let err = ApiError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "the request did not arrive within {:?}",
                        allowance.request_within
                    ),
                );
                self.metrics.observe("unknown", "", "BadRequest", started);
                answer(&mut send, Err(err)).await;
                return;
            }
        };
        let Request::V1(req) = req;
        let (verb, kind) = metrics::labels_of(&req);
        let target = self.audit.as_ref().map(|_| audit_target(&req));
        let mut failure = String::new();
        let mut keep = |r: &ApiResult<ResponseV1>| {
            if let Err(e) = r {
                failure = e.message.clone();
            }
            result_of(r)
        };
        let result = match self.route(&caller, req).await {
            Routed::Answer(result) => {
                let label = keep(&result);
                answer(&mut send, result).await;
                label
            }
            Routed::Watch(Ok(feed)) => {
                // A watch is counted when it starts, not when it ends.
                self.metrics.observe(verb, kind, "ok", started);
                let _open = self.metrics.watch_open();
                send_watch(&mut send, feed).await;
                return;
            }
            Routed::Watch(Err(e)) => {
                let result = Err(e);
                let label = keep(&result);
                answer(&mut send, result).await;
                label
            }
            Routed::Upload {
                digest,
                size,
                source,
            } => {
                let result = match self.read_upload(&mut recv, &digest, size, &source).await {
                    Ok(bytes) => self
                        .store_module(&digest, size, &source, bytes)
                        .await
                        .map(ResponseV1::Object),
                    Err(e) => Err(e),
                };
                let label = keep(&result);
                answer(&mut send, result).await;
                label
            }
            Routed::Download { digest } => {
                let result = match self.module_chunks(&digest).await {
                    Ok(chunks) => send_chunks(&mut send, chunks).await,
                    Err(e) => Err(e),
                };
                let label = keep(&result);
                answer(&mut send, result).await;
                label
            }
            Routed::ToNode(req) => match self.proxy_to_node(&mut send, &mut recv, req).await {
                Ok(()) => "ok",
                Err(e) => {
                    let result = Err(e);
                    let label = keep(&result);
                    answer(&mut send, result).await;
                    label
                }
            },
        };
        self.metrics.observe(verb, kind, result, started);
        if let (Some(log), Some((namespace, name))) = (&self.audit, target) {
            let denied = matches!(result, "Forbidden" | "Unauthorized");
            if denied || changes(verb) {
                log.record(AuditEvent {
                    time: audit_time(),
                    identity: caller.name().to_string(),
                    groups: caller.groups().to_vec(),
                    verb: verb.to_string(),
                    kind: kind.to_string(),
                    namespace,
                    name,
                    result: result.to_string(),
                    message: failure,
                    latency_micros: u64::try_from(started.elapsed().as_micros())
                        .unwrap_or(u64::MAX),
                });
            }
        }
    }

    /// Reads an upload's chunks: exactly `size` bytes, refused as soon as the
    /// announcement is bad or the sender goes past it.
    async fn read_upload(
        &self,
        recv: &mut quinn::RecvStream,
        digest: &str,
        size: u64,
        source: &str,
    ) -> ApiResult<Vec<u8>> {
        self.check_upload(digest, size, source)?;
        let mut bytes = Vec::with_capacity(size as usize);
        while (bytes.len() as u64) < size {
            let chunk: UploadChunk = read_frame(recv, MAX_FRAME)
                .await
                .map_err(|e| invalid(format!("upload of {source}: {e}")))?
                .ok_or_else(|| {
                    invalid(format!(
                        "upload of {source} ended after {} of {size} bytes",
                        bytes.len()
                    ))
                })?;
            if chunk.data.len() > MODULE_CHUNK
                || bytes.len() as u64 + chunk.data.len() as u64 > size
            {
                return Err(invalid(format!(
                    "upload of {source} sent more than the {size} bytes it announced"
                )));
            }
            bytes.extend_from_slice(&chunk.data);
        }
        Ok(bytes)
    }
}

/// Writes the one answer of a request and ends the stream. An answer that
/// cannot be sent as a frame (too large) is replaced by an error saying so,
/// never dropped: the caller always hears why.
async fn answer(send: &mut quinn::SendStream, result: ApiResult<ResponseV1>) {
    let resp = result.unwrap_or_else(ResponseV1::Error);
    let frame = encode_frame(&Response::V1(resp)).or_else(|e| {
        tracing::warn!(error = %e, "an answer could not be encoded; the caller gets the error");
        encode_frame(&Response::V1(ResponseV1::Error(ApiError::new(
            ErrorCode::Internal,
            format!("the answer could not be sent: {e}"),
        ))))
    });
    match frame {
        Ok(frame) => {
            if let Err(e) = send.write_all(&frame).await {
                tracing::debug!(error = %e, "the caller went away before its answer was sent");
            }
        }
        Err(e) => tracing::error!(error = %e, "not even an error answer encodes"),
    }
    let _ = send.finish();
}

/// Sends a module's chunks; the closing `Ok` is the caller's answer.
async fn send_chunks(send: &mut quinn::SendStream, chunks: Vec<Vec<u8>>) -> ApiResult<ResponseV1> {
    for chunk in chunks {
        write_frame(send, &Response::V1(ResponseV1::ModuleChunk(chunk)))
            .await
            .map_err(super::errors::internal)?;
    }
    Ok(ResponseV1::Ok)
}

/// Sends a watch's events until the caller stops reading or the watch ends
/// (its error is the last frame).
async fn send_watch(send: &mut quinn::SendStream, mut feed: WatchFeed) {
    // Made once: a new one per change costs a lock and a registration.
    let stopped = send.stopped();
    tokio::pin!(stopped);
    loop {
        let next = tokio::select! {
            next = feed.next() => next,
            _ = &mut stopped => return,
        };
        match next {
            Ok(event) => {
                if write_frame(send, &Response::V1(ResponseV1::Event(event)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                answer(send, Err(e)).await;
                return;
            }
        }
    }
}
