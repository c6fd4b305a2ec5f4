//! The API wire protocol: length-prefixed postcard frames on QUIC streams, one
//! bidirectional stream per request; versioned request and response enums.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of postcard.
//! Frames over the cap are refused before anything is allocated; a frame must
//! decode exactly, trailing bytes are an error.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use flotilla_api::object::{Kind, Object};

/// Largest frame a peer may send (16 MiB).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame announced more bytes than the cap.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("truncated frame: the stream ended after {got} of {want} bytes")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes announced.
        want: usize,
    },
    /// The frame is not a valid message.
    #[error("malformed frame: {0}")]
    Decode(String),
    /// A message could not be encoded.
    #[error("encode: {0}")]
    Encode(String),
}

/// Encodes `msg` as one frame of at most [`MAX_FRAME`].
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    encode_frame_max(msg, MAX_FRAME)
}

/// Encodes `msg` as one frame of at most `max` bytes (for links whose
/// receivers take larger frames).
pub fn encode_frame_max<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_allocvec(msg).map_err(|e| FrameError::Encode(e.to_string()))?;
    if body.len() > max {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max,
        });
    }
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a frame body, rejecting trailing bytes.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| FrameError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Decode(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Writes one frame.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let frame = encode_frame(msg)?;
    w.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` when the stream ends cleanly before a new frame.
pub async fn read_frame<R, T>(r: &mut R, max: usize) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len_buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len_buf[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated { got, want: 4 });
        }
        got += n;
    }
    let len = u32::from_be_bytes(len_buf) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = r.read(&mut body[got..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated { got, want: len });
        }
        got += n;
    }
    decode_body(&body).map(Some)
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began (the default).
    #[default]
    Linearizable,
    /// Whatever this peer has applied; cheaper, and served without a quorum.
    Stale,
}

/// How a delete treats the objects the deleted one owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Propagation {
    /// Delete the owner now; dependents are collected afterwards.
    #[default]
    Background,
    /// Dependents are deleted before the owner disappears.
    Foreground,
    /// Dependents are kept and lose their owner reference.
    Orphan,
}

/// A request, versioned.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Version 1 of the protocol.
    V1(RequestV1),
}

/// What a client can ask of the apiserver.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum RequestV1 {
    /// Read one object.
    Get {
        /// Kind.
        kind: Kind,
        /// Namespace ("" for cluster-scoped kinds).
        namespace: String,
        /// Name.
        name: String,
        /// Read freshness.
        consistency: Consistency,
    },
    /// List objects of one kind.
    List {
        /// Kind.
        kind: Kind,
        /// Namespace; `None` lists across all namespaces.
        namespace: Option<String>,
        /// Label selector text (`a=b,c!=d`), empty for all.
        label_selector: String,
        /// Read freshness.
        consistency: Consistency,
        /// Field selector text (`spec.nodeName=edge-1`), empty for all.
        field_selector: String,
        /// Most objects in the answer; 0 for all of them, which fails when
        /// they are more than one answer can carry.
        limit: u32,
        /// Where the previous page ended (its answer's `continue_token`);
        /// empty for the first page.
        continue_token: String,
    },
    /// Create an object; fails if it exists.
    Create {
        /// The object.
        object: Object,
    },
    /// Replace an object's spec and metadata; compare-and-swap when the object
    /// carries a resourceVersion.
    Update {
        /// The object.
        object: Object,
    },
    /// Replace an object's status; compare-and-swap when it carries a resourceVersion.
    UpdateStatus {
        /// The object.
        object: Object,
    },
    /// Create, or update what differs (what `flotilla apply` sends).
    Apply {
        /// The object.
        object: Object,
    },
    /// Delete an object (or mark it deleting while finalizers remain).
    Delete {
        /// Kind.
        kind: Kind,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Only delete if the object is at this resourceVersion ("" for any).
        resource_version: String,
        /// What happens to dependents.
        propagation: Propagation,
    },
    /// Stream changes after `from_revision` (0: from now).
    Watch {
        /// Kind, or every kind.
        kind: Option<Kind>,
        /// Namespace, or all.
        namespace: Option<String>,
        /// Label selector text.
        label_selector: String,
        /// Deliver changes committed after this revision.
        from_revision: u64,
        /// Field selector text (`spec.nodeName=edge-1`), empty for all.
        field_selector: String,
    },
    /// Make a node join token (the request of clients from before typed
    /// tokens; `CreateJoinToken` says which kind).
    CreateToken {
        /// Lifetime in seconds.
        ttl_seconds: u64,
    },
    /// The store's peers.
    Members,
    /// Remove a store peer.
    RemoveMember {
        /// The peer's id.
        id: u64,
    },
    /// A new store peer asks for its certificate (anonymous, token-authenticated).
    JoinPeer {
        /// The join token.
        token: String,
        /// The address the new peer listens on.
        address: String,
        /// CSR for the new peer's key, PEM.
        csr_pem: String,
    },
    /// A peer holding its certificate asks to be added to the store's membership.
    AddPeer {
        /// The peer's id.
        id: u64,
        /// Its address.
        address: String,
    },
    /// Who the server thinks the caller is.
    WhoAmI,
    /// Upload a module: after this frame the client sends [`UploadChunk`] frames
    /// with exactly `size` bytes, then finishes its side of the stream.
    UploadModule {
        /// `sha256:<hex>` of the bytes.
        digest: String,
        /// Total bytes.
        size: u64,
        /// Where it came from (file name), for display.
        source: String,
    },
    /// Download a module's bytes: answered by `ModuleChunk` frames, then `Ok`.
    DownloadModule {
        /// `sha256:<hex>`.
        digest: String,
    },
    /// A new node asks for its certificate (anonymous, token-authenticated).
    JoinNode {
        /// The join token.
        token: String,
        /// The node's name.
        name: String,
        /// CSR for the node's key, PEM.
        csr_pem: String,
    },
    /// An instance's log: answered by `LogChunk` frames (and more while following).
    Logs {
        /// Namespace.
        namespace: String,
        /// Instance name.
        name: String,
        /// Keep streaming new output.
        follow: bool,
        /// Only the last N lines.
        tail: Option<u64>,
        /// The log of the previous run.
        previous: bool,
    },
    /// Carry one HTTP/1.1 connection to an http-world instance: after an `Ok`
    /// answer the stream is a raw byte pipe to the instance.
    PortForward {
        /// Namespace.
        namespace: String,
        /// Instance name.
        name: String,
    },
    /// A node asks for a new certificate before its current one expires,
    /// authenticated by that (still valid) certificate; the answer is
    /// `RenewedCertificate` for the same identity, over the CSR's key.
    RenewCertificate {
        /// CSR for the new key, PEM (its subject is ignored).
        csr_pem: String,
    },
    /// This peer's wall clock (answered to anyone, as `WhoAmI`): `flotilla
    /// doctor` compares the peers' clocks with it.
    Clock,
    /// Node `from` sends a probe through the node-to-node tunnel to node `to`
    /// and reports the round trip and both clocks. A client leaves
    /// `to_address` empty; the apiserver fills in `to`'s tunnel address and
    /// relays the request to `from`.
    ProbeTunnel {
        /// The node that sends the probe.
        from: String,
        /// The node probed.
        to: String,
        /// `to`'s tunnel address (filled in by the apiserver).
        to_address: String,
    },
    /// Bind an unbound instance to a node (Kubernetes' binding
    /// subresource): the scheduler's write, without sending the object back
    /// and forth. Fails with a conflict when the instance is at another
    /// resourceVersion, already bound, or being deleted. Answered `Bound`.
    Bind {
        /// Namespace ("" for `default`).
        namespace: String,
        /// Instance name.
        name: String,
        /// The node.
        node_name: String,
        /// The instance's resourceVersion the decision was made on.
        resource_version: String,
    },
    /// Who the caller is and which groups it is in (Kubernetes'
    /// SelfSubjectReview, `flotilla auth whoami`). Answered `Subject`.
    SelfSubjectReview,
    /// Whether a subject may make a request described by verb, resource,
    /// namespace and name (`flotilla auth can-i`). An empty `identity` asks
    /// about the caller (anyone may); another subject's review needs
    /// `create` on `subjectaccessreviews`. Answered `Access`.
    AccessReview {
        /// `user:alice`, `node:edge-1`, …; empty for the caller.
        identity: String,
        /// The subject's groups (with `identity`).
        groups: Vec<String>,
        /// `get`, `list`, …
        verb: String,
        /// `instances`, `instances/logs`, `tokens`, …
        resource: String,
        /// The namespace ("" for cluster-scoped or all namespaces).
        namespace: String,
        /// The object's name ("" for none).
        name: String,
    },
    /// Sign a user's client certificate over a CSR's key (`flotilla user
    /// create`): `user:NAME`, in `groups`, for `ttl_seconds`. Needs `create`
    /// on `users`. Answered `UserCertificate`.
    SignUser {
        /// The user's name, without `user:`.
        name: String,
        /// The groups to put the user in.
        groups: Vec<String>,
        /// CSR for the user's key, PEM (its subject is ignored).
        csr_pem: String,
        /// Lifetime of the certificate.
        ttl_seconds: u64,
    },
    /// Make a join token of `kind`, valid for `ttl_seconds` and, when
    /// `uses` is not 0, for that many joins. Answered `Token`.
    CreateJoinToken {
        /// Whom the token admits.
        kind: TokenKind,
        /// Lifetime in seconds.
        ttl_seconds: u64,
        /// Joins allowed; 0 for any number until it expires.
        uses: u32,
    },
    /// The join tokens (never their secrets). Answered `Tokens`.
    ListTokens,
    /// Revoke a join token by id: it admits no one from now on.
    RevokeToken {
        /// The token's id (the third part of its text).
        id: String,
    },
}

/// Whom a join token admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenKind {
    /// A node (`flotilla node --token`): gets a node certificate only.
    Node,
    /// A store peer (`flotilla server --join --token`): gets the CA key.
    Peer,
    /// Made before tokens had kinds: admits either.
    Any,
}

impl std::fmt::Display for TokenKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenKind::Node => "node",
            TokenKind::Peer => "peer",
            TokenKind::Any => "any",
        })
    }
}

/// A join token as `flotilla token list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    /// Its id.
    pub id: String,
    /// Whom it admits.
    pub kind: TokenKind,
    /// When it expires, seconds since the Unix epoch.
    pub expires_unix: i64,
    /// Joins it still allows; `None` for any number.
    pub uses_left: Option<u32>,
    /// Joins it admitted.
    pub used: u32,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// One piece of an uploaded module.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadChunk {
    /// The bytes (at most [`MODULE_CHUNK`]).
    pub data: Vec<u8>,
}

/// Bytes per upload or download chunk.
pub const MODULE_CHUNK: usize = 1024 * 1024;

/// A response, versioned.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// Version 1 of the protocol.
    V1(ResponseV1),
}

/// The apiserver's answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ResponseV1 {
    /// One object.
    Object(Object),
    /// A list, or one page of it: the objects are at least as new as
    /// `revision`, so a watch from it misses nothing.
    List {
        /// Objects.
        items: Vec<Object>,
        /// The store revision the list reflects (for every page, the first
        /// page's).
        revision: u64,
        /// Asks for the next page when not empty.
        continue_token: String,
    },
    /// The outcome of an apply.
    Applied {
        /// The object as stored.
        object: Object,
        /// What happened.
        outcome: ApplyOutcome,
    },
    /// A delete: the object is gone (`deleted`) or marked deleting.
    Deleted {
        /// The object's last state.
        object: Object,
        /// Whether it is gone (false: waiting on finalizers or dependents).
        deleted: bool,
    },
    /// One change of a watch.
    Event(WatchEvent),
    /// A join token.
    Token(String),
    /// Store peers.
    Members(Vec<Member>),
    /// A new peer's credentials.
    Joined(JoinedPeer),
    /// The caller's identity ("" when anonymous).
    Identity(String),
    /// A piece of a module being downloaded.
    ModuleChunk(Vec<u8>),
    /// A new node's credentials.
    JoinedNode {
        /// Its certificate, PEM.
        cert_pem: String,
        /// The cluster CA certificate, PEM.
        ca_cert_pem: String,
    },
    /// A piece of an instance's log.
    LogChunk(Vec<u8>),
    /// Done, nothing to return.
    Ok,
    /// The request failed.
    Error(ApiError),
    /// A renewed certificate (answer to `RenewCertificate`).
    RenewedCertificate {
        /// The new certificate, PEM.
        cert_pem: String,
    },
    /// A wall clock reading, microseconds since the Unix epoch.
    Clock {
        /// The reading.
        unix_micros: i64,
        /// How long this apiserver has been serving.
        serving_millis: u64,
    },
    /// The answer to `ProbeTunnel`.
    TunnelProbe {
        /// From sending the probe to its answer, measured by `from`.
        round_trip_micros: u64,
        /// `from`'s wall clock when the answer came, microseconds since the epoch.
        from_clock_micros: i64,
        /// How far `to`'s clock is ahead of `from`'s (negative: behind),
        /// taking the answer to be read halfway through the round trip.
        to_clock_offset_micros: i64,
    },
    /// The answer to `Bind`: the instance's new resourceVersion.
    Bound {
        /// The resourceVersion of the bound instance.
        resource_version: String,
    },
    /// The answer to `SelfSubjectReview`.
    Subject {
        /// The caller's identity.
        identity: String,
        /// Its groups.
        groups: Vec<String>,
    },
    /// The answer to `AccessReview`.
    Access {
        /// Whether the request would be authorized.
        allowed: bool,
        /// Why, or what is missing.
        reason: String,
    },
    /// The answer to `SignUser`.
    UserCertificate {
        /// The user's certificate, PEM.
        cert_pem: String,
    },
    /// The answer to `ListTokens`.
    Tokens(Vec<TokenInfo>),
}

/// What `apply` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyOutcome {
    /// It did not exist.
    Created,
    /// It existed and differed.
    Configured,
    /// It existed and was the same.
    Unchanged,
}

impl std::fmt::Display for ApplyOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApplyOutcome::Created => "created",
            ApplyOutcome::Configured => "configured",
            ApplyOutcome::Unchanged => "unchanged",
        })
    }
}

/// What a watch reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Gone.
    Deleted,
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        })
    }
}

/// One change seen by a watch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WatchEvent {
    /// The revision the change was committed at.
    pub revision: u64,
    /// What happened.
    pub event_type: EventType,
    /// The object after the change (its last state for deletes).
    pub object: Object,
}

/// A store peer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    /// Raft id.
    pub id: u64,
    /// Address it listens on.
    pub address: String,
    /// leader, follower or learner.
    pub role: String,
    /// Highest log index known to be replicated to it (leader's view), if known.
    pub matched_index: Option<u64>,
}

/// Credentials for a new store peer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinedPeer {
    /// Its raft id.
    pub id: u64,
    /// Its certificate, PEM.
    pub cert_pem: String,
    /// The cluster CA certificate, PEM.
    pub ca_cert_pem: String,
    /// The cluster CA key, PEM: every store peer can issue certificates.
    pub ca_key_pem: String,
    /// The cluster's name.
    pub cluster_name: String,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The object does not exist.
    NotFound,
    /// The object exists already.
    AlreadyExists,
    /// The object changed since the caller read it.
    Conflict,
    /// The object breaks a rule.
    Invalid,
    /// The request itself is malformed.
    BadRequest,
    /// The caller has no identity, or a bad token.
    Unauthorized,
    /// The caller may not do this.
    Forbidden,
    /// The store cannot commit: no quorum.
    NoQuorum,
    /// A watch asked for a revision older than the history window.
    TooOld,
    /// The server cannot serve right now (starting, shutting down).
    Unavailable,
    /// A bug or an I/O failure on the server.
    Internal,
}

/// An error the server reports.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct ApiError {
    /// Category.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// Makes an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_reject_bad_input() {
        let msg = Request::V1(RequestV1::CreateToken { ttl_seconds: 60 });
        let frame = encode_frame(&msg).unwrap();
        let mut r = &frame[..];
        let back: Request = read_frame(&mut r, MAX_FRAME).await.unwrap().unwrap();
        assert!(matches!(
            back,
            Request::V1(RequestV1::CreateToken { ttl_seconds: 60 })
        ));

        let mut oversized = &(u32::MAX).to_be_bytes()[..];
        let err = read_frame::<_, Request>(&mut oversized, MAX_FRAME)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");

        let mut truncated = &frame[..frame.len() - 1];
        let err = read_frame::<_, Request>(&mut truncated, MAX_FRAME)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Truncated { .. }), "{err}");

        let mut trailing = frame[4..].to_vec();
        trailing.push(0);
        assert!(decode_body::<Request>(&trailing).is_err());

        let garbage = [0xffu8; 32];
        assert!(decode_body::<Request>(&garbage).is_err());
    }
}
