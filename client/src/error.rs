//! [`ClientError`]: what a client sees go wrong, with what to do about it.

use crate::tls;
use crate::wire::{ApiError, ErrorCode, FrameError};

/// Errors a client sees.
/// The error underneath a [`ClientError`], kept whole for
/// [`std::error::Error::source`]; a plain sentence when nothing failed
/// underneath (a stream that ended early, a timeout).
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error with what was being done when it happened, e.g. "cannot resolve
/// the address: …".
#[derive(Debug, thiserror::Error)]
#[error("{doing}: {source}")]
pub struct While {
    /// What was being done.
    pub doing: &'static str,
    /// What failed.
    #[source]
    pub source: Cause,
}

impl While {
    /// `source`, met while `doing`.
    pub fn cause(doing: &'static str, source: impl Into<Cause>) -> Cause {
        Box::new(While {
            doing,
            source: source.into(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No server answered at the address.
    #[error("unable to connect to the server at {addr}: {source}")]
    Unreachable {
        /// The address dialled.
        addr: String,
        /// Why.
        #[source]
        source: Cause,
    },
    /// The server answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The connection or stream broke mid-request.
    #[error("connection to {addr} lost: {source}")]
    Connection {
        /// The server.
        addr: String,
        /// Why.
        #[source]
        source: Cause,
    },
    /// A frame was bad.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The client configuration is unusable.
    #[error("client configuration {path}: {source}")]
    Config {
        /// Where it was read from.
        path: String,
        /// What is wrong.
        #[source]
        source: Cause,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The server sent an answer that does not fit the request.
    #[error("unexpected response from the server: {0}")]
    Unexpected(String),
    /// This client's own certificate is outside its validity period; the
    /// server would refuse it, so no connection is attempted.
    #[error("your client certificate ({identity}{}) {problem}; {advice}", origin.as_ref().map(|o| format!(", from {o}")).unwrap_or_default())]
    ClientCertificate {
        /// Its identity, e.g. `user:admin`.
        identity: String,
        /// Where it was read from, when known.
        origin: Option<String>,
        /// What is wrong, e.g. `expired at 2025-01-01T00:00:00Z`.
        problem: String,
        /// What to do about it.
        advice: String,
    },
    /// The server presented a certificate outside its validity period.
    #[error("the server's certificate ({identity} at {addr}) {problem}; {advice}")]
    ServerCertificate {
        /// Its identity, e.g. `peer:1`.
        identity: String,
        /// The address dialled.
        addr: String,
        /// What is wrong, e.g. `expired at 2025-01-01T00:00:00Z`.
        problem: String,
        /// What to do about it.
        advice: String,
    },
}

/// What the holder of an expired or not yet valid certificate can do, by the
/// kind of identity.
pub(crate) fn client_certificate_advice(identity: &str) -> String {
    if identity.starts_with("node:") {
        "the node must join again: make a token with `flotilla token create` and restart the node with --token TOKEN (it keeps its name and data dir)".into()
    } else if identity.starts_with("peer:") {
        "a server peer renews its own certificate from the CA key in its data dir: restart it with certificate renewal on (--cert-renew-at)".into()
    } else {
        "server peers renew DATA_DIR/admin.config along with their own certificates (unless started with --cert-renew-at off): copy a fresh one from a running peer's data dir, or pass --config DATA_DIR/admin.config".into()
    }
}

impl ClientError {
    /// The API error code, if the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api(e) => Some(e.code),
            _ => None,
        }
    }
}

pub(crate) type Result<T, E = ClientError> = std::result::Result<T, E>;
