//! The API client: one QUIC connection to an apiserver, one stream per request.
//! Every Flotilla component that talks to the control plane uses this client: the
//! CLI, nodes, the scheduler and the controllers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::object::{Kind, Object};
use crate::tls::{self, IssuedCert};
use crate::wire::{
    read_frame, write_frame, ApiError, ApplyOutcome, Consistency, ErrorCode, FrameError,
    Propagation, Request, RequestV1, Response, ResponseV1, UploadChunk, WatchEvent, MAX_FRAME,
    MODULE_CHUNK,
};

/// How long a connection attempt may take before the server counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Errors a client sees.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No server answered at the address.
    #[error("unable to connect to the server at {addr}: {reason}")]
    Unreachable {
        /// The address dialled.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The connection or stream broke mid-request.
    #[error("connection to {addr} lost: {reason}")]
    Connection {
        /// The server.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A frame was bad.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The client configuration is unusable.
    #[error("client configuration {path}: {reason}")]
    Config {
        /// Where it was read from.
        path: String,
        /// What is wrong.
        reason: String,
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
fn client_certificate_advice(identity: &str) -> String {
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

type Result<T, E = ClientError> = std::result::Result<T, E>;

/// What a client needs to reach a cluster: written as `admin.config` by the first
/// server and read from `--config`, `FLOTILLA_CONFIG` or `~/.flotilla/config`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientConfig {
    /// The apiserver address, `HOST:PORT`.
    pub server: String,
    /// Who this client is (the certificate's common name), for display.
    pub identity: String,
    /// The cluster CA, PEM.
    pub ca_cert: String,
    /// The client certificate, PEM.
    pub client_cert: String,
    /// The client key, PEM.
    pub client_key: String,
}

impl ClientConfig {
    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ClientError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        serde_yaml_ng::from_str(&text).map_err(|e| ClientError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Writes a config file readable only by its owner.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_yaml_ng::to_string(self).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        }
        std::fs::rename(tmp, path)
    }

    /// The default location: `~/.flotilla/config`.
    pub fn default_path() -> Option<PathBuf> {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".flotilla").join("config"))
    }

    /// The client certificate and key.
    pub fn cert(&self) -> IssuedCert {
        IssuedCert {
            cert_pem: self.client_cert.clone(),
            key_pem: self.client_key.clone(),
        }
    }

    /// Checks that the client certificate is valid now, so that an expired one
    /// is named instead of failing the TLS handshake; `origin` (where the
    /// configuration was read from) goes into the message. Returns what the
    /// certificate says about itself.
    pub fn check_certificate(&self, origin: Option<&Path>) -> Result<tls::CertInfo> {
        check_client_cert(&self.client_cert, &self.identity, origin)
    }
}

/// [`ClientConfig::check_certificate`] for a certificate given as PEM;
/// `identity` names it should it carry no common name.
fn check_client_cert(
    cert_pem: &str,
    identity: &str,
    origin: Option<&Path>,
) -> Result<tls::CertInfo> {
    let info = tls::CertInfo::from_pem(cert_pem).map_err(|e| ClientError::Config {
        path: origin.map_or_else(|| identity.to_string(), |p| p.display().to_string()),
        reason: format!("clientCert: {e}"),
    })?;
    match info.problem_at(time::OffsetDateTime::now_utc()) {
        None => Ok(info),
        Some(problem) => {
            let identity = if info.identity.is_empty() {
                identity.to_string()
            } else {
                info.identity.clone()
            };
            Err(ClientError::ClientCertificate {
                advice: client_certificate_advice(&identity),
                identity,
                origin: origin.map(|p| p.display().to_string()),
                problem,
            })
        }
    }
}

/// A client configuration that several tasks hold while its certificate is
/// renewed under them: each connection attempt reads the current one.
#[derive(Clone, Debug)]
pub struct SharedClientConfig(Arc<std::sync::RwLock<ClientConfig>>);

impl SharedClientConfig {
    /// Shares `config`.
    pub fn new(config: ClientConfig) -> Self {
        Self(Arc::new(std::sync::RwLock::new(config)))
    }

    /// The configuration as it is now.
    pub fn get(&self) -> ClientConfig {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the certificate and key (after a renewal).
    pub fn set_cert(&self, cert: &IssuedCert) {
        let mut config = self.0.write().unwrap_or_else(|p| p.into_inner());
        config.client_cert = cert.cert_pem.clone();
        config.client_key = cert.key_pem.clone();
    }
}

impl From<ClientConfig> for SharedClientConfig {
    fn from(config: ClientConfig) -> Self {
        Self::new(config)
    }
}

/// Resolves `HOST:PORT`.
pub async fn resolve(addr: &str) -> Result<SocketAddr> {
    let unreachable = |reason: String| ClientError::Unreachable {
        addr: addr.to_string(),
        reason,
    };
    let mut addrs = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| unreachable(format!("cannot resolve the address: {e}")))?;
    addrs
        .next()
        .ok_or_else(|| unreachable("the address resolves to nothing".into()))
}

/// A local address to bind a client endpoint to: loopback stays on loopback.
pub fn client_bind_addr(server: &SocketAddr) -> SocketAddr {
    match server.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
        IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        IpAddr::V6(ip) if ip.is_loopback() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 0),
        IpAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
    }
}

/// QUIC transport settings shared by every Flotilla connection.
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(10))
            .expect("10 s is a valid idle timeout"),
    ));
    t.max_concurrent_bidi_streams(4096u32.into());
    Arc::new(t)
}

/// Bytes of a stateless-reset key.
const RESET_KEY_LEN: usize = 64;

/// The QUIC endpoint settings of a process that listens (a server peer, a
/// node). Its stateless-reset key is kept in `key_path`, made at the first
/// start, and its connection ids are keyed from it too: after a restart the
/// process recognises the ids its previous run gave out and can tell peers
/// still talking to that run that their connection is gone (a stateless
/// reset), so they dial again at once instead of waiting out the idle
/// timeout.
pub fn listening_endpoint_config(
    key_path: &std::path::Path,
) -> std::io::Result<quinn::EndpointConfig> {
    let key = match std::fs::read(key_path) {
        Ok(key) if key.len() == RESET_KEY_LEN => key,
        Ok(_) => new_reset_key(key_path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => new_reset_key(key_path)?,
        Err(e) => return Err(e),
    };
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let derived = ring::hmac::sign(&reset_key, b"flotilla connection ids");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&derived.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Ok(config)
}

/// A random reset key, written (owner-only, atomically) to `path`.
fn new_reset_key(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use rand::RngCore;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = vec![0u8; RESET_KEY_LEN];
    rand::thread_rng().fill_bytes(&mut key);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(&key)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)?;
    Ok(key)
}

/// Dials `addr` with a rustls client config and returns the connection, with the
/// endpoint that owns it.
pub async fn dial(
    addr: &str,
    rustls_config: rustls::ClientConfig,
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let unreachable = |reason: String| ClientError::Unreachable {
        addr: addr.to_string(),
        reason,
    };
    let sock = resolve(addr).await?;
    let alpns = rustls_config.alpn_protocols.clone();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_config)
        .map_err(|e| unreachable(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    let mut endpoint = quinn::Endpoint::client(client_bind_addr(&sock))
        .map_err(|e| unreachable(format!("cannot open a local socket: {e}")))?;
    endpoint.set_default_client_config(config);
    let connecting = endpoint
        .connect(sock, tls::SERVER_NAME)
        .map_err(|e| unreachable(e.to_string()))?;
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            if rejected_as_expired(&e) {
                if let Some(err) = explain_server_certificate(&endpoint, sock, addr, &alpns).await {
                    return Err(err);
                }
            }
            return Err(unreachable(e.to_string()));
        }
        Err(_) => return Err(unreachable("no answer (timed out)".into())),
    };
    Ok((endpoint, conn))
}

/// Whether this side's TLS refused the server's certificate for its validity
/// period (rustls sends the `certificate_expired` alert for both expired and
/// not yet valid certificates).
fn rejected_as_expired(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::TransportError(t) => {
            t.code == quinn::TransportErrorCode::crypto(tls::certificate_expired_alert())
        }
        _ => false,
    }
}

/// After a handshake failed on the server's certificate's validity: dials once
/// more only to read that certificate, and says which one it is and why it
/// failed. `None` when the second look shows nothing wrong (the first error
/// is then reported as it was).
async fn explain_server_certificate(
    endpoint: &quinn::Endpoint,
    sock: SocketAddr,
    addr: &str,
    alpns: &[Vec<u8>],
) -> Option<ClientError> {
    let (config, captured) = tls::capturing_client_config(alpns).ok()?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(config).ok()?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    let connecting = endpoint.connect_with(config, sock, tls::SERVER_NAME).ok()?;
    // The capturing verifier always fails the handshake after reading.
    let _ = tokio::time::timeout(CONNECT_TIMEOUT, connecting).await;
    let der = captured.lock().unwrap_or_else(|p| p.into_inner()).take()?;
    let info = tls::CertInfo::from_der(der.as_ref()).ok()?;
    let problem = info.problem_at(time::OffsetDateTime::now_utc())?;
    Some(ClientError::ServerCertificate {
        advice: server_certificate_advice(&info.identity),
        identity: info.identity,
        addr: addr.to_string(),
        problem,
    })
}

fn server_certificate_advice(identity: &str) -> String {
    if identity.starts_with("node:") {
        "the node renews its certificate through the apiserver while it is valid; once expired, the node must join again with a new token (`flotilla token create`, then restart it with --token TOKEN)".into()
    } else {
        "a server peer renews its certificate itself unless started with --cert-renew-at off; restart that peer with renewal on and it renews at start from the CA key in its data dir".into()
    }
}

/// A connection to an apiserver.
#[derive(Clone)]
pub struct Client {
    // Kept so the endpoint's socket lives as long as the connection.
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    addr: String,
}

impl Client {
    /// Connects with the credentials in `config`.
    pub async fn connect(config: &ClientConfig) -> Result<Self> {
        Self::connect_to(&config.server, config).await
    }

    /// Connects to `addr` with the credentials in `config`. A client
    /// certificate outside its validity period is an error before anything is
    /// sent.
    pub async fn connect_to(addr: &str, config: &ClientConfig) -> Result<Self> {
        config.check_certificate(None)?;
        let cert = config.cert();
        let tls = tls::client_config(&config.ca_cert, Some(&cert), tls::ALPN_API)?;
        let (endpoint, conn) = dial(addr, tls).await?;
        Ok(Self {
            _endpoint: endpoint,
            conn,
            addr: addr.to_string(),
        })
    }

    /// Connects with explicit CA and certificate.
    pub async fn connect_with(addr: &str, ca_pem: &str, cert: Option<&IssuedCert>) -> Result<Self> {
        if let Some(cert) = cert {
            check_client_cert(&cert.cert_pem, "the client certificate", None)?;
        }
        let tls = tls::client_config(ca_pem, cert, tls::ALPN_API)?;
        let (endpoint, conn) = dial(addr, tls).await?;
        Ok(Self {
            _endpoint: endpoint,
            conn,
            addr: addr.to_string(),
        })
    }

    /// Connects anonymously, trusting the server only if its CA has this fingerprint.
    pub async fn connect_pinned(addr: &str, ca_sha256: &str) -> Result<Self> {
        let tls = tls::pinned_client_config(ca_sha256, tls::ALPN_API)?;
        let (endpoint, conn) = dial(addr, tls).await?;
        Ok(Self {
            _endpoint: endpoint,
            conn,
            addr: addr.to_string(),
        })
    }

    /// Closes the connection: every stream on it (and on its clones) ends.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"closed by the client");
    }

    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    /// The address this client is connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The certificate the server presented on this connection: its identity
    /// (`peer:N`) and validity period.
    pub fn server_certificate(&self) -> Option<tls::CertInfo> {
        tls::connection_certificate(&self.conn)
    }

    /// The server's certificate identity and when that certificate expires
    /// (what `flotilla doctor` reports about a server).
    pub fn server_certificate_not_after(&self) -> Option<(String, time::OffsetDateTime)> {
        self.server_certificate()
            .map(|info| (info.identity, info.not_after))
    }

    fn lost(&self, reason: impl ToString) -> ClientError {
        ClientError::Connection {
            addr: self.addr.clone(),
            reason: reason.to_string(),
        }
    }

    async fn open(&self, req: RequestV1) -> Result<(quinn::SendStream, quinn::RecvStream)> {
        let (mut send, recv) = self.conn.open_bi().await.map_err(|e| self.lost(e))?;
        write_frame(&mut send, &Request::V1(req)).await?;
        send.finish().map_err(|e| self.lost(e))?;
        Ok((send, recv))
    }

    /// Sends one request and returns its one response; server errors become `Err`.
    pub async fn call(&self, req: RequestV1) -> Result<ResponseV1> {
        let (_send, mut recv) = self.open(req).await?;
        let resp: Option<Response> = read_frame(&mut recv, MAX_FRAME).await?;
        match resp {
            Some(Response::V1(ResponseV1::Error(e))) => Err(e.into()),
            Some(Response::V1(r)) => Ok(r),
            None => Err(self.lost("the server closed the stream without answering")),
        }
    }

    /// Reads one object.
    pub async fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Object> {
        match self
            .call(RequestV1::Get {
                kind,
                namespace: namespace.into(),
                name: name.into(),
                consistency: Consistency::Linearizable,
            })
            .await?
        {
            ResponseV1::Object(o) => Ok(o),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Lists objects; returns them and the revision the list reflects.
    pub async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Result<(Vec<Object>, u64)> {
        self.list_with(kind, namespace, label_selector, Consistency::Linearizable)
            .await
    }

    /// Lists objects with an explicit read consistency.
    pub async fn list_with(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        label_selector: &str,
        consistency: Consistency,
    ) -> Result<(Vec<Object>, u64)> {
        self.list_selected(kind, namespace, label_selector, "", consistency)
            .await
    }

    /// Lists objects matching a label and a field selector.
    pub async fn list_selected(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        label_selector: &str,
        field_selector: &str,
        consistency: Consistency,
    ) -> Result<(Vec<Object>, u64)> {
        match self
            .call(RequestV1::List {
                kind,
                namespace: namespace.map(str::to_string),
                label_selector: label_selector.into(),
                consistency,
                field_selector: field_selector.into(),
            })
            .await?
        {
            ResponseV1::List { items, revision } => Ok((items, revision)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    async fn object_call(&self, req: RequestV1) -> Result<Object> {
        match self.call(req).await? {
            ResponseV1::Object(o) => Ok(o),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Creates an object.
    pub async fn create(&self, object: Object) -> Result<Object> {
        self.object_call(RequestV1::Create { object }).await
    }

    /// Updates an object (compare-and-swap when it carries a resourceVersion).
    pub async fn update(&self, object: Object) -> Result<Object> {
        self.object_call(RequestV1::Update { object }).await
    }

    /// Updates an object's status.
    pub async fn update_status(&self, object: Object) -> Result<Object> {
        self.object_call(RequestV1::UpdateStatus { object }).await
    }

    /// Binds an unbound instance at `resource_version` to `node_name`;
    /// returns the bound instance's resourceVersion.
    pub async fn bind(
        &self,
        namespace: &str,
        name: &str,
        node_name: &str,
        resource_version: &str,
    ) -> Result<String> {
        let req = RequestV1::Bind {
            namespace: namespace.to_string(),
            name: name.to_string(),
            node_name: node_name.to_string(),
            resource_version: resource_version.to_string(),
        };
        match self.call(req).await? {
            ResponseV1::Bound { resource_version } => Ok(resource_version),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Creates or updates an object.
    pub async fn apply(&self, object: Object) -> Result<(Object, ApplyOutcome)> {
        match self.call(RequestV1::Apply { object }).await? {
            ResponseV1::Applied { object, outcome } => Ok((object, outcome)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Deletes an object; returns its last state and whether it is gone.
    pub async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        propagation: Propagation,
    ) -> Result<(Object, bool)> {
        match self
            .call(RequestV1::Delete {
                kind,
                namespace: namespace.into(),
                name: name.into(),
                resource_version: String::new(),
                propagation,
            })
            .await?
        {
            ResponseV1::Deleted { object, deleted } => Ok((object, deleted)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Uploads a module's bytes; returns the Module object.
    pub async fn upload_module(&self, bytes: &[u8], source: &str) -> Result<Object> {
        let digest = crate::module::digest_of(bytes);
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| self.lost(e))?;
        write_frame(
            &mut send,
            &Request::V1(RequestV1::UploadModule {
                digest,
                size: bytes.len() as u64,
                source: source.to_string(),
            }),
        )
        .await?;
        for chunk in bytes.chunks(MODULE_CHUNK) {
            let sent = write_frame(
                &mut send,
                &UploadChunk {
                    data: chunk.to_vec(),
                },
            )
            .await;
            if sent.is_err() {
                // The server refused early (size cap, bad digest): its answer says why.
                break;
            }
        }
        let _ = send.finish();
        match read_frame::<_, Response>(&mut recv, MAX_FRAME).await? {
            Some(Response::V1(ResponseV1::Object(o))) => Ok(o),
            Some(Response::V1(ResponseV1::Error(e))) => Err(e.into()),
            Some(Response::V1(other)) => Err(ClientError::Unexpected(format!("{other:?}"))),
            None => Err(self.lost("the server closed the stream without answering")),
        }
    }

    /// Downloads a module and checks it against its digest.
    pub async fn download_module(&self, digest: &str) -> Result<Vec<u8>> {
        let (_send, mut recv) = self
            .open(RequestV1::DownloadModule {
                digest: digest.to_string(),
            })
            .await?;
        let mut bytes = Vec::new();
        loop {
            match read_frame::<_, Response>(&mut recv, MAX_FRAME).await? {
                Some(Response::V1(ResponseV1::ModuleChunk(c))) => bytes.extend_from_slice(&c),
                Some(Response::V1(ResponseV1::Ok)) => break,
                Some(Response::V1(ResponseV1::Error(e))) => return Err(e.into()),
                Some(Response::V1(other)) => {
                    return Err(ClientError::Unexpected(format!("{other:?}")))
                }
                None => return Err(self.lost("the download ended early")),
            }
        }
        let actual = crate::module::digest_of(&bytes);
        if actual != digest {
            return Err(ClientError::Unexpected(format!(
                "downloaded module hashes to {actual}, expected {digest}"
            )));
        }
        Ok(bytes)
    }

    /// Opens a node request (logs, port-forward) relayed by the apiserver; the
    /// returned streams carry the node's frames and, for port-forward, raw bytes.
    pub async fn node_stream(
        &self,
        req: RequestV1,
    ) -> Result<(quinn::SendStream, quinn::RecvStream)> {
        let (mut send, recv) = self.conn.open_bi().await.map_err(|e| self.lost(e))?;
        write_frame(&mut send, &Request::V1(req)).await?;
        Ok((send, recv))
    }

    /// Starts a watch; the stream yields changes committed after `from_revision`.
    pub async fn watch(
        &self,
        kind: Option<Kind>,
        namespace: Option<&str>,
        label_selector: &str,
        from_revision: u64,
    ) -> Result<WatchStream> {
        self.watch_selected(kind, namespace, label_selector, "", from_revision)
            .await
    }

    /// Starts a watch of the objects matching a label and a field selector.
    pub async fn watch_selected(
        &self,
        kind: Option<Kind>,
        namespace: Option<&str>,
        label_selector: &str,
        field_selector: &str,
        from_revision: u64,
    ) -> Result<WatchStream> {
        let (send, recv) = self
            .open(RequestV1::Watch {
                kind,
                namespace: namespace.map(str::to_string),
                label_selector: label_selector.into(),
                from_revision,
                field_selector: field_selector.into(),
            })
            .await?;
        Ok(WatchStream {
            _send: send,
            recv,
            addr: self.addr.clone(),
        })
    }
}

/// The changes of a watch, in revision order.
pub struct WatchStream {
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
    addr: String,
}

impl WatchStream {
    /// The next change; `Ok(None)` when the server ends the watch.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>> {
        let resp: Option<Response> =
            read_frame(&mut self.recv, MAX_FRAME)
                .await
                .map_err(|e| ClientError::Connection {
                    addr: self.addr.clone(),
                    reason: e.to_string(),
                })?;
        match resp {
            None => Ok(None),
            Some(Response::V1(ResponseV1::Event(e))) => Ok(Some(e)),
            Some(Response::V1(ResponseV1::Error(e))) => Err(e.into()),
            Some(Response::V1(other)) => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}
