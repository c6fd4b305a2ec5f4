//! One control-plane peer: a store peer and its apiserver on one QUIC endpoint.
//! ALPN picks the protocol of each connection: `flotilla-api/1` for clients,
//! `flotilla-raft/1` for other peers.
//!
//! Start-up, in this order, because each step needs the one before:
//! 1. bind the UDP socket (its address is what the peer advertises),
//! 2. find or make the identity: resume from the data dir, join with a token, or
//!    make a new cluster (CA, `peer:1`, `admin.config`), and renew what is due
//!    (`certs`: a peer down past its renewal point renews before it serves),
//! 3. open the store and start serving (peers must reach us before we are added),
//! 4. initialize a new cluster, or ask the cluster to add this joined peer,
//! 5. make sure namespace `default` exists.
//!
//! Ready (for `/readyz`) when the store knows a raft leader and the apiserver
//! has served its first writes (the namespaces of step 5).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use flotilla_client::tls::{self, IssuedCert, ALPN_API, ALPN_RAFT};
use flotilla_client::{Cause, Client, ClientError};

use crate::ca::{self, CertificateAuthority};
use flotilla_client::token::JoinToken;
use flotilla_client::wire::{read_frame, write_frame, RequestV1, ResponseV1};
use flotilla_telemetry::{Readiness, Telemetry};

use crate::apiserver::audit::AuditLog;
use crate::apiserver::{ApiMetrics, ApiServer};
use crate::certs::{
    self, quic_peer_client_config, quic_server_config, write_admin_config, CertPaths, CertPolicy,
    PeerCerts, Users,
};
use crate::controllers::ControllerMetrics;
use crate::leader::{run_elected, Election, LeaderMetrics, SYSTEM_NAMESPACE};
use crate::scheduler::SchedulerMetrics;
use crate::store::network::{PeerNet, PeerRequest, PeerResponse, MAX_PEER_FRAME};
use crate::store::{Store, StoreConfig};

/// Errors starting or running a server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// File trouble in the data dir.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Certificates could not be made or loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The join was refused or failed.
    #[error("join failed: {step}: {source}")]
    Join {
        /// The step that failed.
        step: String,
        /// Why.
        #[source]
        source: Cause,
    },
    /// The join token is malformed.
    #[error("{0}")]
    Token(#[from] flotilla_client::token::TokenError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Raft stopped on a fatal error while serving (its storage failed).
    #[error("the store on this peer failed: {0}")]
    StoreFailed(String),
    /// The data dir holds something unexpected.
    #[error("{0}")]
    DataDir(String),
    /// A file in the data dir, or what is made from it, could not be used.
    #[error("{what}: {source}")]
    Unusable {
        /// The file, or what was being made.
        what: String,
        /// Why.
        #[source]
        source: Cause,
    },
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
}

impl ServerError {
    fn join(step: impl Into<String>, source: impl Into<Cause>) -> Self {
        ServerError::Join {
            step: step.into(),
            source: source.into(),
        }
    }

    pub(crate) fn unusable(what: impl AsRef<std::path::Path>, source: impl Into<Cause>) -> Self {
        ServerError::Unusable {
            what: what.as_ref().display().to_string(),
            source: source.into(),
        }
    }
}

pub(crate) type Result<T, E = ServerError> = std::result::Result<T, E>;

/// Settings of a server peer.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where everything of this peer lives.
    pub data_dir: PathBuf,
    /// Address to listen on (`127.0.0.1:0` picks a free port on first start and
    /// keeps it afterwards).
    pub listen: String,
    /// Address other peers and clients should use, if not the listen address.
    pub advertise: Option<String>,
    /// Join an existing cluster: (address of a member, token).
    pub join: Option<(String, String)>,
    /// Watch history window (changes).
    pub history: usize,
    /// Log entries between snapshots.
    pub snapshot_every: u64,
    /// How long writes wait for a quorum.
    pub write_timeout: Duration,
    /// Largest module accepted by upload, bytes.
    pub max_module_bytes: u64,
    /// Run the scheduler in this process (as a client of this apiserver).
    pub scheduler: bool,
    /// Run the controllers in this process (as a client of this apiserver).
    pub controllers: bool,
    /// Timing of the controllers.
    pub controller_settings: crate::controllers::Settings,
    /// Lease duration of the scheduler's and controllers' leader election.
    pub leader_lease: Duration,
    /// Node instance ranges and service cluster IPs.
    pub ranges: crate::apiserver::NetworkRanges,
    /// Where the peer's metrics and readiness checks go (served by the
    /// caller, if at all).
    pub telemetry: Telemetry,
    /// Lifetime of every certificate this peer issues: its own, joining
    /// peers', nodes', the admin's, its components'.
    pub cert_lifetime: Duration,
    /// When this peer renews its own, its components' and the admin's
    /// certificates (nodes have their own `--cert-renew-at`).
    pub cert_renew_at: tls::RenewAt,
    /// Where the apiserver records changes and refusals; `None` for off.
    pub audit_log: Option<crate::apiserver::audit::AuditConfig>,
}

impl ServerConfig {
    /// Defaults for a data dir and listen address.
    pub fn new(data_dir: PathBuf, listen: String) -> Self {
        Self {
            audit_log: Some(crate::apiserver::audit::AuditConfig::in_dir(&data_dir)),
            data_dir,
            listen,
            advertise: None,
            join: None,
            history: 10_000,
            snapshot_every: 10_000,
            write_timeout: Duration::from_secs(5),
            max_module_bytes: 64 * 1024 * 1024,
            scheduler: true,
            controllers: true,
            controller_settings: crate::controllers::Settings::default(),
            leader_lease: crate::leader::DEFAULT_LEASE_DURATION,
            ranges: crate::apiserver::NetworkRanges::default(),
            telemetry: Telemetry::default(),
            cert_lifetime: ca::DEFAULT_CERT_LIFETIME.unsigned_abs(),
            cert_renew_at: tls::RenewAt::default(),
        }
    }
}

/// Lease the schedulers elect their leader with.
pub const SCHEDULER_LEASE: &str = "flotilla-scheduler";
/// Lease the controller managers elect their leader with.
pub const CONTROLLERS_LEASE: &str = "flotilla-controllers";

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
struct PeerFile {
    id: u64,
    address: String,
    cluster_name: String,
    /// Set until the cluster has added this joined peer: where to ask.
    #[serde(default)]
    pending_join: Option<String>,
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

pub(crate) fn write_private(path: &Path, text: &str) -> Result<()> {
    flotilla_client::files::write_private(path, text.as_bytes()).map_err(io_err(path))
}

struct Identity {
    peer: PeerFile,
    ca: CertificateAuthority,
    cert: IssuedCert,
    fresh_cluster: bool,
}

struct Paths {
    ca_cert: PathBuf,
    ca_key: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    peer: PathBuf,
    admin: PathBuf,
    store: PathBuf,
    quic_reset_key: PathBuf,
}

impl Paths {
    fn new(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            cert: dir.join("peer.crt"),
            key: dir.join("peer.key"),
            peer: dir.join("peer.json"),
            admin: dir.join("admin.config"),
            store: dir.join("store"),
            quic_reset_key: dir.join("quic-reset.key"),
        }
    }
}

fn save_peer_file(paths: &Paths, peer: &PeerFile) -> Result<()> {
    let text =
        serde_json::to_string_pretty(peer).map_err(|e| ServerError::unusable(&paths.peer, e))?;
    write_private(&paths.peer, &text)
}

fn load_identity(paths: &Paths) -> Result<Option<Identity>> {
    if !paths.peer.exists() {
        return Ok(None);
    }
    let peer: PeerFile = serde_json::from_str(&read_text(&paths.peer)?)
        .map_err(|e| ServerError::unusable(&paths.peer, e))?;
    Ok(Some(Identity {
        peer,
        ca: CertificateAuthority {
            cert_pem: read_text(&paths.ca_cert)?,
            key_pem: read_text(&paths.ca_key)?,
        },
        cert: IssuedCert {
            cert_pem: read_text(&paths.cert)?,
            key_pem: read_text(&paths.key)?,
        },
        fresh_cluster: false,
    }))
}

fn save_credentials(paths: &Paths, ca: &CertificateAuthority, cert: &IssuedCert) -> Result<()> {
    write_private(&paths.ca_cert, &ca.cert_pem)?;
    write_private(&paths.ca_key, &ca.key_pem)?;
    write_private(&paths.cert, &cert.cert_pem)?;
    write_private(&paths.key, &cert.key_pem)
}

fn new_cluster(paths: &Paths, address: &str, policy: &CertPolicy) -> Result<Identity> {
    let cluster_name = "flotilla".to_string();
    let ca = CertificateAuthority::generate(&cluster_name)?;
    let ip = address.parse::<SocketAddr>().ok().map(|s| s.ip());
    let cert = ca.issue_for(
        "peer:1",
        &ip.into_iter().collect::<Vec<_>>(),
        policy.lifetime,
    )?;
    save_credentials(paths, &ca, &cert)?;
    write_admin_config(&ca, &paths.admin, address, policy.lifetime)?;
    let peer = PeerFile {
        id: 1,
        address: address.to_string(),
        cluster_name,
        pending_join: None,
    };
    save_peer_file(paths, &peer)?;
    Ok(Identity {
        peer,
        ca,
        cert,
        fresh_cluster: true,
    })
}

async fn join_cluster(
    paths: &Paths,
    address: &str,
    join_addr: &str,
    token_text: &str,
    policy: &CertPolicy,
) -> Result<Identity> {
    let token = JoinToken::parse(token_text)?;
    let client = Client::connect_pinned(join_addr, &token.ca_sha256)
        .await
        .map_err(|e| ServerError::join("connecting to the cluster", e))?;
    let (key_pem, csr_pem) = tls::generate_csr("peer")?;
    let resp = client
        .call(RequestV1::JoinPeer {
            token: token_text.trim().to_string(),
            address: address.to_string(),
            csr_pem,
        })
        .await
        .map_err(|e| ServerError::join("asking to join", e))?;
    let ResponseV1::Joined(joined) = resp else {
        return Err(ServerError::join(
            "asking to join",
            format!("unexpected answer: {resp:?}"),
        ));
    };
    let ca = CertificateAuthority {
        cert_pem: joined.ca_cert_pem,
        key_pem: joined.ca_key_pem,
    };
    if ca.fingerprint()? != token.ca_sha256 {
        return Err(ServerError::join(
            "checking the cluster's CA",
            "the cluster sent a CA that does not match the token's fingerprint",
        ));
    }
    let cert = IssuedCert {
        cert_pem: joined.cert_pem,
        key_pem,
    };
    save_credentials(paths, &ca, &cert)?;
    write_admin_config(&ca, &paths.admin, address, policy.lifetime)?;
    let peer = PeerFile {
        id: joined.id,
        address: address.to_string(),
        cluster_name: joined.cluster_name,
        pending_join: Some(join_addr.to_string()),
    };
    save_peer_file(paths, &peer)?;
    Ok(Identity {
        peer,
        ca,
        cert,
        fresh_cluster: false,
    })
}

/// A running server peer.
pub struct Server {
    /// The address it listens on and advertises.
    pub address: String,
    /// Its raft id.
    pub id: u64,
    /// Where the admin client config was written.
    pub admin_config: PathBuf,
    api: Arc<ApiServer>,
    endpoint: quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Its readiness checks, whose `/readyz` says when the store failed.
    health: flotilla_telemetry::Health,
}

impl Server {
    /// Starts a peer as configured.
    pub async fn start(config: ServerConfig) -> Result<Self> {
        let ServerConfig {
            data_dir,
            listen,
            advertise,
            join,
            history,
            snapshot_every,
            write_timeout,
            max_module_bytes,
            scheduler,
            controllers,
            controller_settings,
            leader_lease,
            ranges,
            telemetry,
            cert_lifetime,
            cert_renew_at,
            audit_log,
        } = config;
        let policy = CertPolicy::new(cert_lifetime, cert_renew_at)?;
        // First, so that a caller serving `/readyz` during a slow start (a
        // join) never sees a daemon without checks, which would read as ready.
        let serving = Readiness::not_ready(
            "starting: the apiserver has not yet written its namespaces (default, flotilla-node-lease, flotilla-system)",
        );
        telemetry.health.add("apiserver", &serving);
        flotilla_client::files::create_private_dir(&data_dir).map_err(io_err(&data_dir))?;
        let paths = Paths::new(&data_dir);
        let existing = load_identity(&paths)?;

        let mut bind = listen.clone();
        if let Some(id) = &existing {
            if listen.ends_with(":0") {
                bind = id.peer.address.clone();
            }
        }
        let socket = std::net::UdpSocket::bind(&bind).map_err(|source| ServerError::Bind {
            addr: bind.clone(),
            source,
        })?;
        let local = socket.local_addr().map_err(|source| ServerError::Bind {
            addr: bind.clone(),
            source,
        })?;
        let address = advertise.unwrap_or_else(|| local.to_string());

        let identity = match existing {
            Some(id) => id,
            None => match &join {
                Some((join_addr, token)) => {
                    join_cluster(&paths, &address, join_addr, token, &policy).await?
                }
                None => new_cluster(&paths, &address, &policy)?,
            },
        };
        let address = identity.peer.address.clone();

        let certs = Arc::new(PeerCerts::new(
            identity.ca.clone(),
            identity.peer.id,
            &address,
            identity.cert.clone(),
            CertPaths {
                cert: paths.cert.clone(),
                key: paths.key.clone(),
                admin: paths.admin.clone(),
            },
            policy,
        ));
        certs.prepare()?;
        let server_config = quic_server_config(&identity.ca.cert_pem, &certs.current())?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| ServerError::DataDir("no async runtime for QUIC".into()))?;
        let endpoint_config = flotilla_client::listening_endpoint_config(&paths.quic_reset_key)
            .map_err(|e| ServerError::unusable(&paths.quic_reset_key, e))?;
        let endpoint = quinn::Endpoint::new(endpoint_config, Some(server_config), socket, runtime)
            .map_err(|source| ServerError::Bind {
                addr: bind.clone(),
                source,
            })?;
        let peer_client = quic_peer_client_config(&identity.ca.cert_pem, &certs.current())?;
        let net = Arc::new(PeerNet::new(endpoint.clone(), peer_client));

        let mut store_config = StoreConfig::new(identity.peer.id, paths.store.clone());
        store_config.history = history;
        store_config.snapshot_every = snapshot_every;
        store_config.write_timeout = write_timeout;
        let store = Store::open(store_config, net.clone()).await?;
        store.register_metrics(&telemetry.registry);
        let weak_store = Arc::downgrade(&store);
        telemetry.health.add_check("store", move || {
            let Some(store) = weak_store.upgrade() else {
                return Err("the store is shut down".into());
            };
            let m = store.raft().metrics().borrow().clone();
            if let Err(fatal) = &m.running_state {
                return Err(format!(
                    "the store on this peer failed: {fatal}; the peer exits"
                ));
            }
            match m.current_leader {
                Some(_) => Ok(()),
                None => Err(format!(
                    "no raft leader known to peer {} (term {}); a majority of store peers must answer",
                    m.id, m.current_term
                )),
            }
        });
        let mut api = ApiServer::new(
            store.clone(),
            identity.ca.clone(),
            identity.peer.cluster_name.clone(),
            certs.current(),
            max_module_bytes,
            ranges,
            ApiMetrics::register(&telemetry.registry),
        )
        .with_cert_lifetime(policy.lifetime);
        if let Some(audit) = audit_log {
            let path = audit.path.clone();
            api = api.with_audit(AuditLog::open(audit).map_err(io_err(&path))?);
        }
        let api = Arc::new(api);

        let mut tasks = vec![
            tokio::spawn(accept_loop(endpoint.clone(), api.clone())),
            tokio::spawn(certs::run(
                certs.clone(),
                Users {
                    endpoint: endpoint.clone(),
                    net,
                    api: api.clone(),
                },
            )),
        ];

        if identity.fresh_cluster {
            store.initialize(&address).await?;
        }
        if let Some(join_addr) = identity.peer.pending_join.clone() {
            request_membership(&identity, &certs.current(), &join_addr, &address).await?;
            let mut peer = identity.peer.clone();
            peer.pending_join = None;
            save_peer_file(&paths, &peer)?;
        }
        let component_config = |name: &str| certs.component_config(name);
        let leader_metrics = LeaderMetrics::register(&telemetry.registry);
        if scheduler {
            let election = Election::new(SCHEDULER_LEASE, "scheduler", leader_lease)
                .with_metrics(&leader_metrics);
            let metrics = SchedulerMetrics::register(&telemetry.registry);
            tasks.push(tokio::spawn(run_elected(
                component_config("scheduler")?,
                election,
                move |config| crate::scheduler::run(config, metrics.clone()),
            )));
        }
        if controllers {
            let election = controller_settings.published_on(
                Election::new(CONTROLLERS_LEASE, "controllers", leader_lease)
                    .with_metrics(&leader_metrics),
            );
            let metrics = ControllerMetrics::register(&telemetry.registry);
            tasks.push(tokio::spawn(run_elected(
                component_config("controllers")?,
                election,
                move |config| {
                    crate::controllers::run(config, controller_settings.clone(), metrics.clone())
                },
            )));
        }
        let ns_api = api.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let ensured = async {
                    ns_api
                        .ensure_namespace(flotilla_api::namespace::DEFAULT_NAMESPACE)
                        .await?;
                    ns_api
                        .ensure_namespace(flotilla_api::lease::NODE_LEASE_NAMESPACE)
                        .await?;
                    ns_api.ensure_namespace(SYSTEM_NAMESPACE).await
                };
                match ensured.await {
                    Ok(()) => {
                        serving.set_ready();
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "namespace default not ensured yet");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }));

        Ok(Self {
            address,
            id: identity.peer.id,
            admin_config: paths.admin,
            api,
            endpoint,
            tasks,
            health: telemetry.health.clone(),
        })
    }

    /// The apiserver (for in-process components).
    pub fn api(&self) -> &Arc<ApiServer> {
        &self.api
    }

    /// Resolves when this peer's store has failed (its storage): logged, and
    /// said on `/readyz`, for the caller to exit on without shutting down (as
    /// a crash would).
    pub async fn store_failed(&self) -> ServerError {
        let why = self.api.store().failure().await;
        tracing::error!(
            "the store on this peer failed: {why}; it serves no more writes and exits, for a supervisor to restart it"
        );
        // Up until `/readyz` has said so (its store check reads raft's state)
        // to whoever asks, or for a bounded while when nothing does.
        let _ =
            tokio::time::timeout(STORE_FAILED_EXIT_AFTER, self.health.unready_answer_sent()).await;
        ServerError::StoreFailed(why)
    }

    /// Stops serving and stops raft.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.endpoint.close(0u32.into(), b"shutting down");
        self.api.store().shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

async fn request_membership(
    identity: &Identity,
    cert: &IssuedCert,
    join_addr: &str,
    address: &str,
) -> Result<()> {
    let mut last: Option<ClientError> = None;
    for attempt in 0..20 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let client = match Client::connect_with(join_addr, &identity.ca.cert_pem, Some(cert)).await
        {
            Ok(c) => c,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        match client
            .call(RequestV1::AddPeer {
                id: identity.peer.id,
                address: address.to_string(),
            })
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    let step = format!("the cluster at {join_addr} did not add this peer");
    Err(match last {
        Some(e) => ServerError::join(step, e),
        None => ServerError::join(step, "no attempt was made"),
    })
}

async fn accept_loop(endpoint: quinn::Endpoint, api: Arc<ApiServer>) {
    while let Some(incoming) = endpoint.accept().await {
        let api = api.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "handshake failed");
                    return;
                }
            };
            let alpn = conn
                .handshake_data()
                .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|d| d.protocol);
            match alpn.as_deref() {
                Some(p) if p == ALPN_API => api.serve_connection(conn).await,
                Some(p) if p == ALPN_RAFT => serve_peer_connection(conn, api.store().clone()).await,
                _ => conn.close(1u32.into(), b"unknown protocol"),
            }
        });
    }
}

async fn serve_peer_connection(conn: quinn::Connection, store: Arc<Store>) {
    let peer = tls::connection_identity(&conn)
        .and_then(|id| id.strip_prefix("peer:").and_then(|n| n.parse::<u64>().ok()));
    let Some(peer) = peer else {
        conn.close(2u32.into(), b"the raft protocol needs a peer certificate");
        return;
    };
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let store = store.clone();
        tokio::spawn(async move {
            let resp = match read_frame::<_, PeerRequest>(&mut recv, MAX_PEER_FRAME).await {
                Ok(Some(req)) => store.handle_peer(peer, req).await,
                Ok(None) => return,
                Err(e) => PeerResponse::Refused(format!("bad frame: {e}")),
            };
            let _ = write_frame(&mut send, &resp).await;
            let _ = send.finish();
        });
    }
}

/// Runs a peer until `shutdown` resolves.
pub async fn run(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let server = Server::start(config).await?;
    println!(
        "flotilla server: peer {} listening on {} (admin credentials: {})",
        server.id,
        server.address,
        server.admin_config.display()
    );
    tokio::select! {
        () = shutdown => {
            server.shutdown().await;
            Ok(())
        }
        failed = server.store_failed() => {
            // Not shut down: that would flush the key space onto the disk
            // that failed (see the caller).
            std::mem::forget(server);
            Err(failed)
        }
    }
}

/// The longest a peer whose store failed stays up for `/readyz` to say so
/// before it exits.
const STORE_FAILED_EXIT_AFTER: Duration = Duration::from_secs(2);
