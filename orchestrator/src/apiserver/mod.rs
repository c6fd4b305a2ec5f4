//! The apiserver: the only entry to the store. In layers, each a file:
//!
//! - [`transport`]: QUIC accept, one stream per request, frames; it
//!   authenticates each connection once (the certificate's identity, or an
//!   anonymous caller who may present a join token) and counts requests.
//! - [`router`]: one decoded request and its [`Caller`] in, authorization
//!   first, then the verb; callable without a network.
//! - [`authz`]: every rule that depends on who is calling, in one place.
//! - [`crud`] and [`namespaces`]: the object verbs, each a decision written
//!   through [`update`]'s `guaranteed_update` (read, decide, compare-and-swap,
//!   retry); [`watch`]: changes after a revision.
//! - [`joins`], [`tokens`], [`nodes`], [`modules`]: joining peers and nodes,
//!   relays to nodes, module blobs.
//!
//! Must never: write to the store except through [`Store::propose`] (and
//! there only from [`update`] and the few blind writes of tokens and blobs),
//! or accept an object that fails validation.

mod admission;
pub mod audit;
mod authz;
mod crud;
mod errors;
mod ipam;
mod joins;
mod keys;
mod metrics;
mod modules;
mod namespaces;
mod nodes;
mod router;
mod stored;
mod tokens;
mod transport;
mod update;
mod users;
mod watch;
mod watchhub;

pub use authz::Caller;
pub use errors::ApiResult;
pub use ipam::NetworkRanges;
pub use keys::{key_for, kind_prefix, namespace_prefix};
pub use metrics::ApiMetrics;
pub use router::Routed;
pub use stored::{decode_object, MAX_OBJECT_BYTES};
pub use watch::WatchFeed;

use std::sync::Arc;

use flotilla_client::tls;

use crate::ca::{self, CertificateAuthority};
use crate::store::cache::PrefixCache;
use crate::store::Store;

use errors::internal;

/// The apiserver of one store peer.
pub struct ApiServer {
    store: Arc<Store>,
    ca: CertificateAuthority,
    cluster_name: String,
    /// This peer's own certificate: what it shows nodes when it proxies logs
    /// and port-forwards to them (replaced when the peer renews it).
    peer_cert: std::sync::RwLock<tls::IssuedCert>,
    /// Lifetime of the certificates this apiserver signs (joining peers and
    /// nodes, renewals).
    cert_lifetime: time::Duration,
    /// Largest module accepted by upload.
    max_module_bytes: u64,
    /// Where node instance ranges and service cluster IPs come from.
    ranges: NetworkRanges,
    /// Where the next free range or address is looked for.
    ipam_hints: ipam::Hints,
    /// Hands Instance changes to the watchers of their node only.
    watch_hub: Arc<watchhub::WatchHub>,
    /// Requests served, their latency, watches open.
    metrics: ApiMetrics,
    /// The stored Roles and bindings the authorizer reads.
    rbac: Arc<PrefixCache<authz::bindings::Bindings>>,
    /// The namespaces that have ResourceQuotas and LimitRanges.
    limited: Arc<PrefixCache<admission::Limited>>,
    /// Where changes and refusals are recorded; `None` when turned off.
    audit: Option<audit::AuditLog>,
    /// When this apiserver was made: how long it has served tells doctor a
    /// component still starting from one that stopped.
    started: std::time::Instant,
    /// Unauthenticated connections open, by source address.
    anonymous: Arc<transport::AnonymousConnections>,
}

impl ApiServer {
    /// An apiserver over `store`, issuing certificates with `ca`, counting
    /// its requests in `metrics`.
    pub fn new(
        store: Arc<Store>,
        ca: CertificateAuthority,
        cluster_name: String,
        peer_cert: tls::IssuedCert,
        max_module_bytes: u64,
        ranges: NetworkRanges,
        metrics: ApiMetrics,
    ) -> Self {
        let watch_hub = watchhub::WatchHub::start(store.reader().clone());
        let rbac = PrefixCache::start(
            store.reader().clone(),
            &authz::bindings::RBAC_TOPS,
            "RBAC bindings",
            authz::bindings::read,
        );
        let limited = PrefixCache::start(
            store.reader().clone(),
            &admission::LIMIT_TOPS,
            "quotas and limit ranges",
            admission::read_limited,
        );
        Self {
            started: std::time::Instant::now(),
            anonymous: Arc::default(),
            store,
            ca,
            cluster_name,
            peer_cert: std::sync::RwLock::new(peer_cert),
            cert_lifetime: ca::DEFAULT_CERT_LIFETIME,
            max_module_bytes,
            ranges,
            ipam_hints: ipam::Hints::default(),
            watch_hub,
            metrics,
            rbac,
            limited,
            audit: None,
        }
    }

    /// Signs the certificates of joining peers and nodes, and renewals, for
    /// `lifetime` (default [`ca::DEFAULT_CERT_LIFETIME`]).
    pub fn with_cert_lifetime(mut self, lifetime: time::Duration) -> Self {
        self.cert_lifetime = lifetime;
        self
    }

    /// Records every change and every refusal in `log`.
    pub fn with_audit(mut self, log: audit::AuditLog) -> Self {
        self.audit = Some(log);
        self
    }

    /// Shows nodes `cert` from now on (after this peer renewed it).
    pub fn set_peer_cert(&self, cert: tls::IssuedCert) {
        *self.peer_cert.write().unwrap_or_else(|p| p.into_inner()) = cert;
    }

    fn peer_cert(&self) -> tls::IssuedCert {
        self.peer_cert
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The store behind this apiserver.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}
