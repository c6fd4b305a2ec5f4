//! The router: one decoded request and its authenticated caller in, one
//! answer (or the stream a transport must carry) out. Authorization runs here
//! first, for every request kind; then the request goes to the verb that
//! serves it. Nothing here knows QUIC: a transport decodes, calls
//! [`ApiServer::route`], and writes what comes back, so unit tests call it
//! with no network at all, and an HTTP front end shares every rule.

use flotilla_client::wire::{Member, RequestV1, ResponseV1};

use super::authz::{authorize, Caller};
use super::errors::{bad_request, store_error, ApiResult};
use super::stored::{parse_selectors, scope};
use super::tokens;
use super::watch::WatchFeed;
use super::ApiServer;

/// Where a request goes after the router.
pub enum Routed {
    /// Answered.
    Answer(ApiResult<ResponseV1>),
    /// A watch: the transport sends the feed's events until the caller
    /// leaves (or the error, when it could not start).
    Watch(ApiResult<WatchFeed>),
    /// A module upload: the transport reads `size` bytes of chunks and hands
    /// them to [`ApiServer::store_module`].
    Upload {
        /// `sha256:<hex>` the bytes must hash to.
        digest: String,
        /// Bytes announced.
        size: u64,
        /// Where they came from, for display.
        source: String,
    },
    /// A module download: the transport sends [`ApiServer::module_chunks`].
    Download {
        /// `sha256:<hex>`.
        digest: String,
    },
    /// Logs or a port-forward: the transport relays the stream to the node
    /// running the instance ([`ApiServer::node_for_instance`]).
    ToNode(RequestV1),
}

impl ApiServer {
    /// Authorizes `req` for `caller` and serves it, or says which stream the
    /// transport must carry.
    pub async fn route(&self, caller: &Caller, req: RequestV1) -> Routed {
        if let Err(e) = authorize(caller, &req) {
            return Routed::Answer(Err(e));
        }
        match req {
            RequestV1::Watch {
                kind,
                namespace,
                label_selector,
                from_revision,
                field_selector,
            } => {
                Routed::Watch(parse_selectors(&label_selector, &field_selector).and_then(
                    |selectors| self.open_watch(kind, namespace, selectors, from_revision),
                ))
            }
            RequestV1::UploadModule {
                digest,
                size,
                source,
            } => Routed::Upload {
                digest,
                size,
                source,
            },
            RequestV1::DownloadModule { digest } => Routed::Download { digest },
            req @ (RequestV1::Logs { .. } | RequestV1::PortForward { .. }) => Routed::ToNode(req),
            other => Routed::Answer(self.answer(caller, other).await),
        }
    }

    /// Serves a request that has one answer; streaming requests are refused
    /// (a caller without a transport cannot carry them).
    pub async fn handle(&self, caller: &Caller, req: RequestV1) -> ApiResult<ResponseV1> {
        match self.route(caller, req).await {
            Routed::Answer(answer) => answer,
            _ => Err(bad_request(
                "this request streams: it needs a transport that carries its stream",
            )),
        }
    }

    /// The verbs with one answer, already authorized.
    async fn answer(&self, caller: &Caller, req: RequestV1) -> ApiResult<ResponseV1> {
        match req {
            RequestV1::WhoAmI => Ok(ResponseV1::Identity(caller.name().to_string())),
            RequestV1::Clock => Ok(ResponseV1::Clock {
                unix_micros: flotilla_api::meta::unix_micros_now(),
            }),
            RequestV1::JoinPeer {
                token,
                address,
                csr_pem,
            } => self.join_peer(&token, &address, &csr_pem).await,
            RequestV1::JoinNode {
                token,
                name,
                csr_pem,
            } => self.join_node(&token, &name, &csr_pem).await,
            RequestV1::RenewCertificate { csr_pem } => self.renew_certificate(caller, &csr_pem),
            RequestV1::Get {
                kind,
                namespace,
                name,
                consistency,
            } => self
                .get(kind, &namespace, &name, consistency)
                .await
                .map(ResponseV1::Object),
            RequestV1::List {
                kind,
                namespace,
                label_selector,
                consistency,
                field_selector,
            } => {
                let selectors = parse_selectors(&label_selector, &field_selector)?;
                let (items, revision) = self
                    .list_objects(kind, namespace.as_deref(), &selectors, consistency)
                    .await?;
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
                let ns = scope(kind, &namespace);
                self.delete(caller, kind, &ns, &name, &resource_version, propagation)
                    .await
                    .map(|(object, deleted)| ResponseV1::Deleted { object, deleted })
            }
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
            RequestV1::ProbeTunnel { from, to, .. } => self.probe_tunnel(&from, &to).await,
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
                self.store
                    .add_peer(id, address)
                    .await
                    .map_err(store_error)?;
                Ok(ResponseV1::Ok)
            }
            RequestV1::Watch { .. }
            | RequestV1::UploadModule { .. }
            | RequestV1::DownloadModule { .. }
            | RequestV1::Logs { .. }
            | RequestV1::PortForward { .. } => Err(bad_request(format!(
                "{} streams and was routed to the wrong handler",
                super::metrics::labels_of(&req).0
            ))),
        }
    }
}
