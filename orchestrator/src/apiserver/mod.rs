//! The apiserver: the only entry to the store. It authenticates each connection
//! by its certificate (or lets an anonymous caller present a join token),
//! authorizes, defaults and validates objects, and turns each verb into
//! compare-and-swap store commands. Get, list and watch are served from the local
//! replica, behind a read barrier unless the caller asks for a stale read.
//!
//! Must never: write to the store except through [`Store::propose`], or accept an
//! object that fails validation.

mod ipam;
mod keys;
mod metrics;
mod modules;
mod nodes;
mod tokens;
mod watchhub;

pub use ipam::NetworkRanges;
pub use metrics::ApiMetrics;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use flotilla_api::fields::FieldSelector;
use flotilla_api::labels::LabelSelector;
use flotilla_api::meta::{now_timestamp, FOREGROUND_FINALIZER};
use flotilla_api::object::{Kind, Object};
use flotilla_api::tls::{self, CertificateAuthority};
use flotilla_api::token::JoinToken;
use flotilla_api::wire::{
    read_frame, write_frame, ApiError, ApplyOutcome, Consistency, ErrorCode, EventType, JoinedPeer,
    Member, Propagation, Request, RequestV1, Response, ResponseV1, WatchEvent, MAX_FRAME,
};

use crate::store::{Action, Command, Op, Precondition, Rejection, Store, StoreError, StoredValue};

pub use keys::{key_for, kind_prefix, namespace_prefix};

/// Largest encoded object the apiserver accepts.
pub const MAX_OBJECT_BYTES: usize = 1024 * 1024;

/// How many times a server-side read-modify-write retries on a conflict.
const CAS_RETRIES: usize = 5;

type ApiResult<T> = Result<T, ApiError>;

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No certificate: may only join.
    Anonymous,
    /// A certificate signed by the cluster CA with this common name.
    Identity(String),
}

impl Caller {
    fn name(&self) -> &str {
        match self {
            Caller::Anonymous => "",
            Caller::Identity(id) => id,
        }
    }
}

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
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NoQuorum(msg) => ApiError::new(ErrorCode::NoQuorum, msg),
        StoreError::Invalid(msg) => ApiError::new(ErrorCode::Invalid, msg),
        other => ApiError::new(ErrorCode::Internal, other.to_string()),
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

fn describe(kind: Kind, namespace: &str, name: &str) -> String {
    if kind.namespaced() {
        format!("{} \"{name}\" in namespace \"{namespace}\"", kind.plural())
    } else {
        format!("{} \"{name}\"", kind.plural())
    }
}

fn not_found(kind: Kind, namespace: &str, name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("{} not found", describe(kind, namespace, name)),
    )
}

fn conflict(kind: Kind, namespace: &str, name: &str, detail: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!(
            "conflict: {} was modified since it was read ({detail}); get it again and reapply your change",
            describe(kind, namespace, name)
        ),
    )
}

/// Decodes a stored object and stamps its resourceVersion.
pub fn decode_object(stored: &StoredValue) -> ApiResult<Object> {
    let mut obj: Object = postcard::from_bytes(&stored.value)
        .map_err(|e| internal(format!("stored object does not decode: {e}")))?;
    obj.meta_mut().resource_version = stored.mod_revision.to_string();
    Ok(obj)
}

fn encode_object(obj: &Object) -> ApiResult<Vec<u8>> {
    let mut copy = obj.clone();
    copy.meta_mut().resource_version.clear();
    let bytes = postcard::to_allocvec(&copy).map_err(internal)?;
    if bytes.len() > MAX_OBJECT_BYTES {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            format!(
                "{}: the object is {} bytes encoded; the limit is {MAX_OBJECT_BYTES} bytes",
                obj.meta().name,
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

fn parse_revision(rv: &str, field: &str) -> ApiResult<Option<u64>> {
    if rv.is_empty() {
        return Ok(None);
    }
    rv.parse::<u64>().map(Some).map_err(|_| {
        ApiError::new(
            ErrorCode::Invalid,
            format!("{field}: \"{rv}\" is not a resourceVersion (expected a decimal revision)"),
        )
    })
}

fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn validate(obj: &Object) -> ApiResult<()> {
    obj.validate().map_err(|errs| {
        ApiError::new(
            ErrorCode::Invalid,
            format!(
                "{} \"{}\" is invalid: {errs}",
                obj.kind().as_str(),
                obj.meta().name
            ),
        )
    })
}

fn rejection_error(obj_kind: Kind, namespace: &str, name: &str, r: Rejection) -> ApiError {
    match r {
        Rejection::Exists { .. } => ApiError::new(
            ErrorCode::AlreadyExists,
            format!("{} already exists", describe(obj_kind, namespace, name)),
        ),
        Rejection::Missing { .. } => not_found(obj_kind, namespace, name),
        Rejection::Conflict {
            expected, actual, ..
        } => conflict(
            obj_kind,
            namespace,
            name,
            &format!("resourceVersion {expected} was given, the object is at {actual}"),
        ),
    }
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
        Self {
            store,
            ca,
            cluster_name,
            peer_cert: std::sync::RwLock::new(peer_cert),
            cert_lifetime: tls::DEFAULT_CERT_LIFETIME,
            max_module_bytes,
            ranges,
            ipam_hints: ipam::Hints::default(),
            watch_hub,
            metrics,
        }
    }

    /// Signs the certificates of joining peers and nodes, and renewals, for
    /// `lifetime` (default [`tls::DEFAULT_CERT_LIFETIME`]).
    pub fn with_cert_lifetime(mut self, lifetime: time::Duration) -> Self {
        self.cert_lifetime = lifetime;
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

    /// Serves every stream of one client connection.
    pub async fn serve_connection(self: Arc<Self>, conn: quinn::Connection) {
        let cert = tls::connection_certificate(&conn);
        let caller = match &cert {
            Some(c) if !c.identity.is_empty() => Caller::Identity(c.identity.clone()),
            _ => Caller::Anonymous,
        };
        // TLS checked the certificate at the handshake; a renewal also needs
        // it to be valid still when asked (a connection may outlive it).
        let cert_not_after = cert.map(|c| c.not_after);
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(_) => return,
            };
            let this = self.clone();
            let caller = caller.clone();
            tokio::spawn(async move {
                this.serve_stream(caller, cert_not_after, send, recv).await;
            });
        }
    }

    async fn serve_stream(
        &self,
        caller: Caller,
        cert_not_after: Option<time::OffsetDateTime>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let started = Instant::now();
        let req: Request = match read_frame(&mut recv, MAX_FRAME).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let err = ApiError::new(ErrorCode::BadRequest, format!("bad request frame: {e}"));
                self.metrics.observe("unknown", "", "BadRequest", started);
                let _ = write_frame(&mut send, &Response::V1(ResponseV1::Error(err))).await;
                let _ = send.finish();
                return;
            }
        };
        let Request::V1(req) = req;
        let (verb, kind) = metrics::labels_of(&req);
        if let RequestV1::RenewCertificate { csr_pem } = &req {
            let result = self.renew_certificate(&caller, cert_not_after, csr_pem);
            self.metrics
                .observe(verb, kind, metrics::result_of(&result), started);
            let resp = result.unwrap_or_else(ResponseV1::Error);
            let _ = write_frame(&mut send, &Response::V1(resp)).await;
            let _ = send.finish();
            return;
        }
        // A watch is counted when it starts (in `serve_watch`), not when it ends.
        if let Some(result) = self.serve_request(caller, &mut send, &mut recv, req).await {
            self.metrics.observe(verb, kind, result, started);
        }
    }

    /// Serves one request; returns its result label, or `None` for a watch
    /// that has counted itself.
    async fn serve_request(
        &self,
        caller: Caller,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
        req: RequestV1,
    ) -> Option<&'static str> {
        if let RequestV1::Watch {
            kind,
            namespace,
            label_selector,
            from_revision,
            field_selector,
        } = req
        {
            let checked = self
                .authorize(&caller, "watch")
                .and_then(|()| parse_selectors(&label_selector, &field_selector));
            let selectors = match checked {
                Ok(s) => s,
                Err(e) => {
                    let result = metrics::code_label(e.code);
                    let _ = write_frame(send, &Response::V1(ResponseV1::Error(e))).await;
                    let _ = send.finish();
                    return Some(result);
                }
            };
            self.serve_watch(send, kind, namespace, selectors, from_revision)
                .await;
            return None;
        }
        let streaming = matches!(
            req,
            RequestV1::UploadModule { .. }
                | RequestV1::DownloadModule { .. }
                | RequestV1::Logs { .. }
                | RequestV1::PortForward { .. }
        );
        if streaming {
            if let Err(e) = self.authorize(&caller, "this request") {
                let result = metrics::code_label(e.code);
                let _ = write_frame(send, &Response::V1(ResponseV1::Error(e))).await;
                let _ = send.finish();
                return Some(result);
            }
            let result = match req {
                RequestV1::UploadModule {
                    digest,
                    size,
                    source,
                } => self
                    .serve_upload(recv, &digest, size, &source)
                    .await
                    .map(ResponseV1::Object),
                RequestV1::DownloadModule { digest } => self.serve_download(send, &digest).await,
                other => match self.proxy_to_node(send, recv, other).await {
                    Ok(()) => return Some("ok"),
                    Err(e) => Err(e),
                },
            };
            let label = metrics::result_of(&result);
            let resp = match result {
                Ok(r) => r,
                Err(e) => ResponseV1::Error(e),
            };
            let _ = write_frame(send, &Response::V1(resp)).await;
            let _ = send.finish();
            return Some(label);
        }
        let result = self.handle(&caller, req).await;
        let label = metrics::result_of(&result);
        let resp = match result {
            Ok(r) => r,
            Err(e) => ResponseV1::Error(e),
        };
        let _ = write_frame(send, &Response::V1(resp)).await;
        let _ = send.finish();
        Some(label)
    }

    fn authorize(&self, caller: &Caller, verb: &str) -> ApiResult<()> {
        match caller {
            Caller::Identity(_) => Ok(()),
            Caller::Anonymous => Err(ApiError::new(
                ErrorCode::Unauthorized,
                format!("{verb} needs a client certificate signed by the cluster CA; anonymous callers may only join"),
            )),
        }
    }

    /// Handles one non-streaming request.
    pub async fn handle(&self, caller: &Caller, req: RequestV1) -> ApiResult<ResponseV1> {
        match req {
            RequestV1::JoinPeer {
                token,
                address,
                csr_pem,
            } => self.join_peer(&token, &address, &csr_pem).await,
            RequestV1::WhoAmI => Ok(ResponseV1::Identity(caller.name().to_string())),
            RequestV1::Clock => Ok(ResponseV1::Clock {
                unix_micros: flotilla_api::meta::unix_micros_now(),
            }),
            RequestV1::JoinNode {
                token,
                name,
                csr_pem,
            } => self.join_node(&token, &name, &csr_pem).await,
            other => {
                self.authorize(caller, "this request")?;
                self.handle_authorized(caller, other).await
            }
        }
    }

    async fn handle_authorized(&self, caller: &Caller, req: RequestV1) -> ApiResult<ResponseV1> {
        match req {
            RequestV1::Get {
                kind,
                namespace,
                name,
                consistency,
            } => {
                self.barrier(consistency).await?;
                let ns = self.scope(kind, &namespace);
                let obj = self.read(kind, &ns, &name)?;
                obj.map(ResponseV1::Object)
                    .ok_or_else(|| not_found(kind, &ns, &name))
            }
            RequestV1::List {
                kind,
                namespace,
                label_selector,
                consistency,
                field_selector,
            } => {
                let selectors = parse_selectors(&label_selector, &field_selector)?;
                self.barrier(consistency).await?;
                let indexed = match (kind, selectors.1.node_name()) {
                    (Kind::Instance, Some(node)) => {
                        self.list_node_instances(node, namespace.as_deref(), &selectors)
                            .await?
                    }
                    _ => None,
                };
                let (items, revision) = match indexed {
                    Some(r) => r,
                    None => self.list_selected(kind, namespace.as_deref(), &selectors)?,
                };
                Ok(ResponseV1::List { items, revision })
            }
            RequestV1::Create { object } => self.create(object).await.map(ResponseV1::Object),
            RequestV1::Update { object } => self
                .update(caller, object, false)
                .await
                .map(ResponseV1::Object),
            RequestV1::UpdateStatus { object } => self
                .update(caller, object, true)
                .await
                .map(ResponseV1::Object),
            RequestV1::Apply { object } => self
                .apply(caller, object)
                .await
                .map(|(object, outcome)| ResponseV1::Applied { object, outcome }),
            RequestV1::Delete {
                kind,
                namespace,
                name,
                resource_version,
                propagation,
            } => {
                let ns = self.scope(kind, &namespace);
                self.delete(caller, kind, &ns, &name, &resource_version, propagation)
                    .await
                    .map(|(object, deleted)| ResponseV1::Deleted { object, deleted })
            }
            RequestV1::ProbeTunnel { from, to, .. } => self.probe_tunnel(&from, &to).await,
            RequestV1::Bind {
                namespace,
                name,
                node_name,
                resource_version,
            } => self
                .bind(caller, &namespace, &name, &node_name, &resource_version)
                .await
                .map(|rev| ResponseV1::Bound {
                    resource_version: rev.to_string(),
                }),
            RequestV1::CreateToken { ttl_seconds } => {
                let token = tokens::create(&self.store, &self.ca, ttl_seconds).await?;
                Ok(ResponseV1::Token(token))
            }
            RequestV1::Members => Ok(ResponseV1::Members(
                self.store
                    .members()
                    .into_iter()
                    .map(|m| Member {
                        id: m.id,
                        address: m.address,
                        role: m.role.to_string(),
                        matched_index: m.matched_index,
                    })
                    .collect(),
            )),
            RequestV1::RemoveMember { id } => {
                self.store.remove_peer(id).await.map_err(store_error)?;
                Ok(ResponseV1::Ok)
            }
            RequestV1::AddPeer { id, address } => {
                if caller.name() != format!("peer:{id}") {
                    return Err(ApiError::new(
                        ErrorCode::Forbidden,
                        format!(
                            "only peer:{id} may add itself; the caller is {}",
                            caller.name()
                        ),
                    ));
                }
                self.store
                    .add_peer(id, address)
                    .await
                    .map_err(store_error)?;
                Ok(ResponseV1::Ok)
            }
            RequestV1::Watch { .. }
            | RequestV1::JoinPeer { .. }
            | RequestV1::JoinNode { .. }
            | RequestV1::WhoAmI
            | RequestV1::Clock
            | RequestV1::UploadModule { .. }
            | RequestV1::DownloadModule { .. }
            | RequestV1::Logs { .. }
            | RequestV1::PortForward { .. }
            | RequestV1::RenewCertificate { .. } => Err(ApiError::new(
                ErrorCode::BadRequest,
                "request routed to the wrong handler",
            )),
        }
    }

    fn scope(&self, kind: Kind, namespace: &str) -> String {
        if !kind.namespaced() {
            String::new()
        } else if namespace.is_empty() {
            "default".to_string()
        } else {
            namespace.to_string()
        }
    }

    async fn barrier(&self, consistency: Consistency) -> ApiResult<()> {
        match consistency {
            Consistency::Linearizable => self.store.read_barrier().await.map_err(store_error),
            Consistency::Stale => Ok(()),
        }
    }

    /// The stored object an update made at resourceVersion `expected` (any
    /// when `None`) applies to. No read barrier up front: only when this
    /// replica's view says no (it may lag) is it brought up to date, once,
    /// and `Ok(None)` asks the caller to read again.
    async fn stored_for_update(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        expected: Option<u64>,
        synced: &mut bool,
    ) -> ApiResult<Option<StoredValue>> {
        let stored = self.read_stored(kind, ns, name)?;
        let behind = match (&stored, expected) {
            (None, _) => true,
            (Some(s), Some(expected)) => expected > s.mod_revision,
            (Some(_), None) => false,
        };
        if behind && !*synced {
            self.store.read_barrier().await.map_err(store_error)?;
            *synced = true;
            return Ok(None);
        }
        let Some(stored) = stored else {
            return Err(not_found(kind, ns, name));
        };
        if let Some(expected) = expected.filter(|e| *e != stored.mod_revision) {
            return Err(conflict(
                kind,
                ns,
                name,
                &format!(
                    "resourceVersion {expected} was given, the object is at {}",
                    stored.mod_revision
                ),
            ));
        }
        Ok(Some(stored))
    }

    fn read_stored(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> ApiResult<Option<StoredValue>> {
        self.store
            .reader()
            .get(&key_for(kind, namespace, name))
            .map_err(internal)
    }

    fn read(&self, kind: Kind, namespace: &str, name: &str) -> ApiResult<Option<Object>> {
        self.read_stored(kind, namespace, name)?
            .map(|v| decode_object(&v))
            .transpose()
    }

    /// Lists objects from the local replica; returns them with the revision they
    /// are at least as new as.
    pub fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> ApiResult<(Vec<Object>, u64)> {
        let selectors = parse_selectors(label_selector, "")?;
        self.list_selected(kind, namespace, &selectors)
    }

    fn list_selected(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        (labels, fields): &(LabelSelector, FieldSelector),
    ) -> ApiResult<(Vec<Object>, u64)> {
        // Read the revision first: a change applied during the scan is then
        // replayed by a watch from this revision rather than missed.
        let revision = self.store.reader().revision();
        let prefix = match namespace {
            Some(ns) if kind.namespaced() => namespace_prefix(kind, ns),
            _ => kind_prefix(kind),
        };
        let mut items = Vec::new();
        for (_, stored) in self.store.reader().scan(&prefix).map_err(internal)? {
            let obj = decode_object(&stored)?;
            if labels.matches(&obj.meta().labels) && fields.matches(&obj) {
                items.push(obj);
            }
        }
        Ok((items, revision))
    }

    /// A node's instances through the hub's index: only its keys are read.
    /// `None` when the index is not current (the caller scans instead).
    async fn list_node_instances(
        &self,
        node: &str,
        namespace: Option<&str>,
        (labels, fields): &(LabelSelector, FieldSelector),
    ) -> ApiResult<Option<(Vec<Object>, u64)>> {
        let revision = self.store.reader().revision();
        let Some(keys) = self.watch_hub.keys_of(node, revision).await else {
            return Ok(None);
        };
        let prefix = namespace.map(|ns| namespace_prefix(Kind::Instance, ns));
        let mut items = Vec::new();
        for key in keys {
            if prefix
                .as_ref()
                .is_some_and(|p| !key.starts_with(p.as_str()))
            {
                continue;
            }
            let Some(stored) = self.store.reader().get(&key).map_err(internal)? else {
                continue;
            };
            let obj = decode_object(&stored)?;
            if labels.matches(&obj.meta().labels) && fields.matches(&obj) {
                items.push(obj);
            }
        }
        Ok(Some((items, revision)))
    }

    async fn commit(&self, ops: Vec<Op>) -> ApiResult<Result<u64, Rejection>> {
        let resp = self
            .store
            .propose(Command { ops })
            .await
            .map_err(store_error)?;
        Ok(match resp.rejected {
            Some(r) => Err(r),
            None => Ok(resp.revision),
        })
    }

    /// The revision of `namespace` if it accepts new objects, read from this
    /// replica; the create then commits only if the namespace is still at it.
    fn namespace_guard(&self, namespace: &str) -> ApiResult<u64> {
        let stored = self
            .read_stored(Kind::Namespace, "", namespace)?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    format!(
                        "namespace \"{namespace}\" not found; create it first (kind: Namespace)"
                    ),
                )
            })?;
        if decode_object(&stored)?.meta().is_being_deleted() {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "namespace \"{namespace}\" is being deleted; nothing new can be created in it"
                ),
            ));
        }
        Ok(stored.mod_revision)
    }

    fn prepare_new(&self, mut object: Object) -> ApiResult<Object> {
        object.apply_defaults();
        let kind = object.kind();
        let meta = object.meta_mut();
        if !kind.namespaced() {
            meta.namespace.clear();
        }
        meta.uid = new_uid();
        meta.creation_timestamp = now_timestamp();
        meta.deletion_timestamp.clear();
        meta.resource_version.clear();
        meta.generation = 1;
        validate(&object)?;
        Ok(object)
    }

    /// Creates an object.
    pub async fn create(&self, object: Object) -> ApiResult<Object> {
        let mut object = self.prepare_new(object)?;
        let kind = object.kind();
        let (ns, name) = (object.meta().namespace.clone(), object.meta().name.clone());
        let unallocated = object.clone();
        let ns_key = key_for(Kind::Namespace, "", &ns);
        // No read barrier up front: the precondition on the object's key and the
        // guard on its namespace's revision make the write safe from any replica.
        // Only when this replica's view says no (it may lag) is it brought up to
        // date and asked again.
        let mut synced = false;
        let mut lost_allocation = false;
        for _ in 0..CAS_RETRIES {
            object = unallocated.clone();
            let allocation = self.allocate(&mut object, lost_allocation)?;
            let object_op = Op {
                key: key_for(kind, &ns, &name),
                precondition: Precondition::Absent,
                action: Action::Put(encode_object(&object)?),
            };
            let mut ops = Vec::with_capacity(3);
            ops.extend(allocation);
            if kind.namespaced() {
                match self.namespace_guard(&ns) {
                    Ok(rev) => ops.push(Op {
                        key: ns_key.clone(),
                        precondition: Precondition::ModRevision(rev),
                        action: Action::Check,
                    }),
                    Err(e) if synced => return Err(e),
                    Err(_) => {
                        self.store.read_barrier().await.map_err(store_error)?;
                        synced = true;
                        continue;
                    }
                }
            }
            ops.push(object_op);
            match self.commit(ops).await? {
                Ok(rev) => {
                    let mut out = object;
                    out.meta_mut().resource_version = rev.to_string();
                    return Ok(out);
                }
                Err(Rejection::Exists { key }) if Self::is_allocation(&key) => {
                    if !unallocated_is_empty(&unallocated) {
                        return Err(ApiError::new(
                            ErrorCode::Conflict,
                            format!(
                                "{} \"{name}\": its address or range is already allocated to another object",
                                kind.as_str()
                            ),
                        ));
                    }
                    lost_allocation = true;
                    self.store.read_barrier().await.map_err(store_error)?;
                }
                Err(Rejection::Conflict { key, .. }) | Err(Rejection::Missing { key })
                    if key == ns_key =>
                {
                    self.store.read_barrier().await.map_err(store_error)?;
                    synced = true;
                }
                Err(r) => return Err(rejection_error(kind, &ns, &name, r)),
            }
        }
        Err(conflict(
            kind,
            &ns,
            &name,
            "its namespace kept changing; retries exhausted",
        ))
    }

    /// Replaces spec and metadata (or, with `status`, only the status), with
    /// compare-and-swap on the resourceVersion the object carries.
    pub async fn update(
        &self,
        caller: &Caller,
        mut object: Object,
        status: bool,
    ) -> ApiResult<Object> {
        if !status {
            object.apply_defaults();
        }
        let kind = object.kind();
        let ns = self.scope(kind, &object.meta().namespace);
        object.meta_mut().namespace = ns.clone();
        let name = object.meta().name.clone();
        let expected = parse_revision(&object.meta().resource_version, "metadata.resourceVersion")?;
        // No read barrier up front: the write's precondition on the stored
        // revision makes it safe from any replica. Only when this replica's
        // view says no (it may lag) is it brought up to date and asked again.
        let mut synced = false;
        for _ in 0..CAS_RETRIES {
            let Some(stored) = self
                .stored_for_update(kind, &ns, &name, expected, &mut synced)
                .await?
            else {
                continue;
            };
            let current = decode_object(&stored)?;
            check_mirror(caller, &current)?;
            let next = if status {
                let mut next = current.clone();
                next.copy_status_from(&object);
                next
            } else {
                let mut desired = object.clone();
                ipam::carry_allocations(&current, &mut desired)?;
                let mut next = merge_update(&current, &desired);
                mark_bound(&current, &mut next);
                next
            };
            validate(&next)?;
            let key = key_for(kind, &ns, &name);
            let finished =
                !status && next.meta().is_being_deleted() && next.meta().finalizers.is_empty();
            let mut ops = vec![Op {
                key,
                precondition: Precondition::ModRevision(stored.mod_revision),
                action: if finished {
                    Action::Delete
                } else {
                    Action::Put(encode_object(&next)?)
                },
            }];
            if finished {
                ops.extend(Self::release(&next));
            }
            match self.commit(ops).await? {
                Ok(rev) => {
                    let mut out = next;
                    out.meta_mut().resource_version = rev.to_string();
                    return Ok(out);
                }
                Err(Rejection::Conflict { .. }) if expected.is_none() => {
                    self.store.read_barrier().await.map_err(store_error)?;
                    synced = true;
                }
                Err(Rejection::Conflict { .. }) if !synced => {
                    // Read from a lagging replica: the given version may
                    // still be the newest.
                    self.store.read_barrier().await.map_err(store_error)?;
                    synced = true;
                }
                Err(r) => return Err(rejection_error(kind, &ns, &name, r)),
            }
        }
        Err(conflict(
            kind,
            &ns,
            &name,
            "it kept changing; retries exhausted",
        ))
    }

    /// Binds an unbound instance to a node: the update the scheduler makes,
    /// with only the names on the wire. Compare-and-swap on the
    /// resourceVersion as `update`.
    pub async fn bind(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
        node_name: &str,
        resource_version: &str,
    ) -> ApiResult<u64> {
        let kind = Kind::Instance;
        let ns = self.scope(kind, namespace);
        let expected = parse_revision(resource_version, "resourceVersion")?;
        let mut synced = false;
        for _ in 0..CAS_RETRIES {
            let Some(stored) = self
                .stored_for_update(kind, &ns, name, expected, &mut synced)
                .await?
            else {
                continue;
            };
            let current = decode_object(&stored)?;
            check_mirror(caller, &current)?;
            let Object::Instance(mut instance) = current else {
                return Err(not_found(kind, &ns, name));
            };
            if !instance.spec.node_name.is_empty() {
                return Err(conflict(
                    kind,
                    &ns,
                    name,
                    &format!("it is bound to node {} already", instance.spec.node_name),
                ));
            }
            if instance.metadata.is_being_deleted() {
                return Err(conflict(kind, &ns, name, "it is being deleted"));
            }
            instance.bind_to(node_name);
            let next = Object::Instance(instance);
            validate(&next)?;
            let ops = vec![Op {
                key: key_for(kind, &ns, name),
                precondition: Precondition::ModRevision(stored.mod_revision),
                action: Action::Put(encode_object(&next)?),
            }];
            match self.commit(ops).await? {
                Ok(rev) => return Ok(rev),
                Err(Rejection::Conflict { .. }) if expected.is_none() || !synced => {
                    self.store.read_barrier().await.map_err(store_error)?;
                    synced = true;
                }
                Err(r) => return Err(rejection_error(kind, &ns, name, r)),
            }
        }
        Err(conflict(
            kind,
            &ns,
            name,
            "it kept changing; retries exhausted",
        ))
    }

    /// Creates the object, or updates it if its desired state differs.
    pub async fn apply(
        &self,
        caller: &Caller,
        object: Object,
    ) -> ApiResult<(Object, ApplyOutcome)> {
        let mut object = object;
        object.apply_defaults();
        let kind = object.kind();
        let ns = self.scope(kind, &object.meta().namespace);
        object.meta_mut().namespace = ns.clone();
        let name = object.meta().name.clone();
        validate(&object)?;
        self.store.read_barrier().await.map_err(store_error)?;
        for _ in 0..CAS_RETRIES {
            let Some(stored) = self.read_stored(kind, &ns, &name)? else {
                match self.create(object.clone()).await {
                    Ok(created) => return Ok((created, ApplyOutcome::Created)),
                    Err(e) if e.code == ErrorCode::AlreadyExists => continue,
                    Err(e) => return Err(e),
                }
            };
            let current = decode_object(&stored)?;
            check_mirror(caller, &current)?;
            let mut desired = object.clone();
            desired.meta_mut().resource_version.clear();
            // A manifest that names no node keeps the binding the scheduler made.
            if let (Object::Instance(d), Object::Instance(c)) = (&mut desired, &current) {
                if d.spec.node_name.is_empty() {
                    d.spec.node_name = c.spec.node_name.clone();
                }
            }
            ipam::carry_allocations(&current, &mut desired)?;
            if current.same_desired_state(&desired) {
                return Ok((current, ApplyOutcome::Unchanged));
            }
            let next = merge_update(&current, &desired);
            validate(&next)?;
            let op = Op {
                key: key_for(kind, &ns, &name),
                precondition: Precondition::ModRevision(stored.mod_revision),
                action: Action::Put(encode_object(&next)?),
            };
            match self.commit(vec![op]).await? {
                Ok(rev) => {
                    let mut out = next;
                    out.meta_mut().resource_version = rev.to_string();
                    return Ok((out, ApplyOutcome::Configured));
                }
                Err(Rejection::Conflict { .. }) | Err(Rejection::Missing { .. }) => continue,
                Err(r) => return Err(rejection_error(kind, &ns, &name, r)),
            }
        }
        Err(conflict(
            kind,
            &ns,
            &name,
            "it kept changing; retries exhausted",
        ))
    }

    /// Deletes an object, or marks it deleting while finalizers remain.
    pub async fn delete(
        &self,
        caller: &Caller,
        kind: Kind,
        namespace: &str,
        name: &str,
        resource_version: &str,
        propagation: Propagation,
    ) -> ApiResult<(Object, bool)> {
        let expected = parse_revision(resource_version, "resourceVersion")?;
        if kind == Kind::Namespace && name == "default" {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "namespace \"default\" cannot be deleted",
            ));
        }
        self.store.read_barrier().await.map_err(store_error)?;
        for _ in 0..CAS_RETRIES {
            let stored = self
                .read_stored(kind, namespace, name)?
                .ok_or_else(|| not_found(kind, namespace, name))?;
            if let Some(expected) = expected {
                if expected != stored.mod_revision {
                    return Err(conflict(
                        kind,
                        namespace,
                        name,
                        &format!(
                            "resourceVersion {expected} was given, the object is at {}",
                            stored.mod_revision
                        ),
                    ));
                }
            }
            let current = decode_object(&stored)?;
            check_mirror(caller, &current)?;
            let key = key_for(kind, namespace, name);
            if kind == Kind::Namespace {
                return self.delete_namespace(current, stored.mod_revision).await;
            }
            let foreground = propagation == Propagation::Foreground && kind.owns_instances();
            if !current.meta().finalizers.is_empty() || foreground {
                if current.meta().is_being_deleted() {
                    return Ok((current, false));
                }
                let mut marked = current.clone();
                marked.meta_mut().deletion_timestamp = now_timestamp();
                if foreground && !marked.meta().has_finalizer(FOREGROUND_FINALIZER) {
                    marked
                        .meta_mut()
                        .finalizers
                        .push(FOREGROUND_FINALIZER.to_string());
                }
                let op = Op {
                    key,
                    precondition: Precondition::ModRevision(stored.mod_revision),
                    action: Action::Put(encode_object(&marked)?),
                };
                match self.commit(vec![op]).await? {
                    Ok(rev) => {
                        marked.meta_mut().resource_version = rev.to_string();
                        return Ok((marked, false));
                    }
                    Err(_) if expected.is_none() => continue,
                    Err(r) => return Err(rejection_error(kind, namespace, name, r)),
                }
            }
            let mut ops = vec![Op {
                key,
                precondition: Precondition::ModRevision(stored.mod_revision),
                action: Action::Delete,
            }];
            ops.extend(Self::release(&current));
            if propagation == Propagation::Orphan {
                ops.extend(self.orphan_ops(namespace, &current.meta().uid)?);
            }
            match self.commit(ops).await? {
                Ok(_) => return Ok((current, true)),
                Err(_) if expected.is_none() => continue,
                Err(r) => return Err(rejection_error(kind, namespace, name, r)),
            }
        }
        Err(conflict(
            kind,
            namespace,
            name,
            "it kept changing; retries exhausted",
        ))
    }

    /// Writes that drop references to the owner with `uid` from the instances
    /// of `namespace`, committed with the owner's delete so no collector sees
    /// them ownerless in between.
    fn orphan_ops(&self, namespace: &str, uid: &str) -> ApiResult<Vec<Op>> {
        let prefix = namespace_prefix(Kind::Instance, namespace);
        let mut ops = Vec::new();
        for (key, stored) in self.store.reader().scan(&prefix).map_err(internal)? {
            let mut obj = decode_object(&stored)?;
            let refs = &mut obj.meta_mut().owner_references;
            let before = refs.len();
            refs.retain(|r| r.uid != uid);
            if refs.len() != before {
                ops.push(Op {
                    key,
                    precondition: Precondition::ModRevision(stored.mod_revision),
                    action: Action::Put(encode_object(&obj)?),
                });
            }
        }
        Ok(ops)
    }

    /// Marks the namespace Terminating (no new objects), deletes what is in it,
    /// then the namespace itself. Objects held by finalizers keep it Terminating.
    async fn delete_namespace(
        &self,
        current: Object,
        mod_revision: u64,
    ) -> ApiResult<(Object, bool)> {
        let name = current.meta().name.clone();
        let ns_key = key_for(Kind::Namespace, "", &name);
        let mut marked = current.clone();
        let mut ns_revision = mod_revision;
        if !marked.meta().is_being_deleted() {
            marked.meta_mut().deletion_timestamp = now_timestamp();
            if let Object::Namespace(ns) = &mut marked {
                ns.status.phase = flotilla_api::namespace::NamespacePhase::Terminating;
            }
            let op = Op {
                key: ns_key.clone(),
                precondition: Precondition::ModRevision(mod_revision),
                action: Action::Put(encode_object(&marked)?),
            };
            match self.commit(vec![op]).await? {
                Ok(rev) => ns_revision = rev,
                Err(r) => return Err(rejection_error(Kind::Namespace, "", &name, r)),
            }
        }
        let mut remaining = 0usize;
        for kind in Kind::ALL.into_iter().filter(|k| k.namespaced()) {
            let prefix = namespace_prefix(kind, &name);
            let items = self.store.reader().scan(&prefix).map_err(internal)?;
            let mut ops = Vec::new();
            for (key, stored) in items {
                let obj = decode_object(&stored)?;
                if obj.meta().finalizers.is_empty() {
                    ops.push(Op {
                        key,
                        precondition: Precondition::ModRevision(stored.mod_revision),
                        action: Action::Delete,
                    });
                    ops.extend(Self::release(&obj));
                } else {
                    remaining += 1;
                    if !obj.meta().is_being_deleted() {
                        let mut m = obj.clone();
                        m.meta_mut().deletion_timestamp = now_timestamp();
                        ops.push(Op {
                            key,
                            precondition: Precondition::ModRevision(stored.mod_revision),
                            action: Action::Put(encode_object(&m)?),
                        });
                    }
                }
            }
            for chunk in ops.chunks(256) {
                if let Err(r) = self.commit(chunk.to_vec()).await? {
                    tracing::debug!(
                        ?r,
                        "namespace cleanup raced a change; the next delete retries"
                    );
                    remaining += 1;
                }
            }
        }
        if remaining > 0 {
            marked.meta_mut().resource_version = ns_revision.to_string();
            return Ok((marked, false));
        }
        let op = Op {
            key: ns_key,
            precondition: Precondition::ModRevision(ns_revision),
            action: Action::Delete,
        };
        match self.commit(vec![op]).await? {
            Ok(_) => Ok((marked, true)),
            Err(r) => Err(rejection_error(Kind::Namespace, "", &name, r)),
        }
    }

    async fn join_peer(&self, token: &str, address: &str, csr_pem: &str) -> ApiResult<ResponseV1> {
        let token = JoinToken::parse(token)
            .map_err(|e| ApiError::new(ErrorCode::Unauthorized, format!("join refused: {e}")))?;
        tokens::check(&self.store, &token).await?;
        let ip: Option<IpAddr> = address.parse::<std::net::SocketAddr>().ok().map(|s| s.ip());
        let next_id = self.allocate_peer_id().await?;
        let addrs: Vec<IpAddr> = ip.into_iter().collect();
        let cert_pem = self
            .ca
            .sign_csr_for(
                csr_pem,
                &format!("peer:{next_id}"),
                &addrs,
                self.cert_lifetime,
            )
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("csr: {e}")))?;
        Ok(ResponseV1::Joined(JoinedPeer {
            id: next_id,
            cert_pem,
            ca_cert_pem: self.ca.cert_pem.clone(),
            ca_key_pem: self.ca.key_pem.clone(),
            cluster_name: self.cluster_name.clone(),
        }))
    }

    /// Hands out peer ids through the store, so concurrent joins never share one.
    async fn allocate_peer_id(&self) -> ApiResult<u64> {
        let key = keys::PEER_ID_KEY;
        for _ in 0..CAS_RETRIES {
            let members_next = self.store.members().iter().map(|m| m.id).max().unwrap_or(0) + 1;
            let current = self.store.reader().get(key).map_err(internal)?;
            let (next, precondition) = match &current {
                Some(v) => {
                    let stored: u64 = postcard::from_bytes(&v.value).map_err(internal)?;
                    (
                        stored.max(members_next),
                        Precondition::ModRevision(v.mod_revision),
                    )
                }
                None => (members_next, Precondition::Absent),
            };
            let value = postcard::to_allocvec(&(next + 1)).map_err(internal)?;
            let op = Op {
                key: key.to_string(),
                precondition,
                action: Action::Put(value),
            };
            if self.commit(vec![op]).await?.is_ok() {
                return Ok(next);
            }
        }
        Err(ApiError::new(
            ErrorCode::Conflict,
            "too many peers joining at once; try again",
        ))
    }

    async fn serve_watch(
        &self,
        send: &mut quinn::SendStream,
        kind: Option<Kind>,
        namespace: Option<String>,
        (labels, fields): (LabelSelector, FieldSelector),
        from_revision: u64,
    ) {
        let prefix = match (kind, namespace.as_deref()) {
            (Some(k), Some(ns)) if k.namespaced() => namespace_prefix(k, ns),
            (Some(k), _) => kind_prefix(k),
            (None, _) => "/".to_string(),
        };
        // A node's watch of its instances is fed by the hub; register before
        // reading the window so nothing falls in between.
        let hub = match (kind, fields.node_name()) {
            (Some(Kind::Instance), Some(node)) => {
                let (id, rx) = self.watch_hub.subscribe(node);
                Some(HubFeed {
                    hub: self.watch_hub.clone(),
                    node: node.to_string(),
                    id,
                    rx,
                    skip_through: from_revision,
                })
            }
            _ => None,
        };
        let kind_label = kind.map_or("", |k| k.as_str());
        let started = Instant::now();
        let top = kind.map(|k| k.plural());
        let mut stream = match self.store.reader().watch_under(from_revision, top) {
            Ok(s) => s,
            Err(too_old) => {
                self.metrics.observe("watch", kind_label, "TooOld", started);
                let err = ApiError::new(ErrorCode::TooOld, too_old.to_string());
                let _ = write_frame(send, &Response::V1(ResponseV1::Error(err))).await;
                let _ = send.finish();
                return;
            }
        };
        self.metrics.observe("watch", kind_label, "ok", started);
        let _open = self.metrics.watch_open();
        let mut hub = hub;
        // Made once: a new one per change costs a lock and a registration.
        let stopped = send.stopped();
        tokio::pin!(stopped);
        loop {
            let next = tokio::select! {
                next = next_change(&mut stream, hub.as_mut()) => next,
                _ = &mut stopped => return,
            };
            let change = match next {
                Ok(Some(c)) => c,
                Ok(None) => {
                    let err = ApiError::new(
                        ErrorCode::TooOld,
                        "the watch was reset (this peer installed a snapshot); list again and watch from the list's revision",
                    );
                    let _ = write_frame(send, &Response::V1(ResponseV1::Error(err))).await;
                    let _ = send.finish();
                    return;
                }
                Err(too_old) => {
                    let err = ApiError::new(ErrorCode::TooOld, too_old.to_string());
                    let _ = write_frame(send, &Response::V1(ResponseV1::Error(err))).await;
                    let _ = send.finish();
                    return;
                }
            };
            if !change.key.starts_with(&prefix) || keys::is_internal(&change.key) {
                continue;
            }
            let decoded = change.memo.get_or_init(|| match decode_object(&change.value) {
                Ok(o) => Some(o),
                Err(e) => {
                    tracing::warn!(key = %change.key, error = %e, "skipping an undecodable object in a watch");
                    None
                }
            });
            let Some(Some(shared)) = decoded else {
                continue;
            };
            if let Some(ns) = namespace.as_deref() {
                if shared.kind().namespaced() && shared.meta().namespace != ns {
                    continue;
                }
            }
            if !labels.matches(&shared.meta().labels) || !fields.matches(shared) {
                continue;
            }
            let object = shared.clone();
            let event_type = if change.deleted {
                EventType::Deleted
            } else if change.value.create_revision == change.value.mod_revision {
                EventType::Added
            } else {
                EventType::Modified
            };
            let event = WatchEvent {
                revision: change.revision,
                event_type,
                object,
            };
            if write_frame(send, &Response::V1(ResponseV1::Event(event)))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Creates a namespace if it does not exist (used for `default` at start).
    pub async fn ensure_namespace(&self, name: &str) -> ApiResult<()> {
        let ns = Object::new_empty(Kind::Namespace, "", name);
        match self.create(ns).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == ErrorCode::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Mirror objects of static instances belong to their node: only it may change
/// or remove them; everyone else changes the manifest on the node.
fn check_mirror(caller: &Caller, current: &Object) -> ApiResult<()> {
    let Object::Instance(i) = current else {
        return Ok(());
    };
    if !i
        .metadata
        .annotations
        .contains_key(flotilla_api::instance::MIRROR_ANNOTATION)
    {
        return Ok(());
    }
    if caller.name() == format!("node:{}", i.spec.node_name) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::Forbidden,
        format!(
            "instance \"{}\" mirrors a static instance of node \"{}\" and is read-only; change the manifest in that node's --manifests-dir",
            i.metadata.name, i.spec.node_name
        ),
    ))
}

/// The object an update stores: the caller's spec and user metadata over the
/// current object's server-owned fields and status.
/// A watcher's queue from the hub, and the revision through which the
/// store's window already delivered.
struct HubFeed {
    hub: Arc<watchhub::WatchHub>,
    node: String,
    id: u64,
    rx: tokio::sync::mpsc::Receiver<Arc<crate::store::state_machine::Change>>,
    skip_through: u64,
}

impl Drop for HubFeed {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.node, self.id);
    }
}

/// The next change for a watch: from the store's stream, or, for a hub-fed
/// watch, the window's backlog and then the hub's queue.
async fn next_change(
    stream: &mut crate::store::state_machine::ChangeStream,
    hub: Option<&mut HubFeed>,
) -> Result<Option<Arc<crate::store::state_machine::Change>>, crate::store::state_machine::TooOld> {
    let Some(feed) = hub else {
        return stream.next().await;
    };
    if let Some(c) = stream.next_buffered() {
        feed.skip_through = feed.skip_through.max(c.revision);
        return Ok(Some(c));
    }
    loop {
        match feed.rx.recv().await {
            Some(c) if c.revision <= feed.skip_through => continue,
            Some(c) => return Ok(Some(c)),
            None => return Ok(None),
        }
    }
}

fn parse_selectors(labels: &str, fields: &str) -> ApiResult<(LabelSelector, FieldSelector)> {
    let labels = LabelSelector::parse(labels)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("label selector: {e}")))?;
    let fields = FieldSelector::parse(fields)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("field selector: {e}")))?;
    Ok((labels, fields))
}

/// True when the object asked for no particular address or range.
fn unallocated_is_empty(object: &Object) -> bool {
    match object {
        Object::Node(n) => n.spec.instance_cidr.is_empty(),
        Object::Service(s) => s.spec.cluster_ip.is_empty(),
        _ => true,
    }
}

/// An instance given a node by this update is marked Scheduled in the same
/// write, as Kubernetes' binding does.
fn mark_bound(current: &Object, next: &mut Object) {
    if let (Object::Instance(before), Object::Instance(after)) = (current, next) {
        if before.spec.node_name.is_empty() && !after.spec.node_name.is_empty() {
            let node = after.spec.node_name.clone();
            after.bind_to(&node);
        }
    }
}

fn merge_update(current: &Object, desired: &Object) -> Object {
    let mut next = current.clone();
    next.copy_spec_from(desired);
    {
        let d = desired.meta();
        let m = next.meta_mut();
        m.labels = d.labels.clone();
        m.annotations = d.annotations.clone();
        m.owner_references = d.owner_references.clone();
        m.finalizers = d.finalizers.clone();
    }
    let mut probe = current.clone();
    probe.copy_spec_from(desired);
    if probe != *current {
        next.meta_mut().generation = current.meta().generation + 1;
    }
    next
}
