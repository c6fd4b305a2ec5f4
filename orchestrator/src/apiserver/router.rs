//! The router: one decoded request and its authenticated caller in, one
//! answer (or the stream a transport must carry) out. Authorization runs here
//! first, for every request kind; then the request goes to the verb that
//! serves it. Nothing here knows QUIC: a transport decodes, calls
//! [`ApiServer::route`], and writes what comes back, so unit tests call it
//! with no network at all, and an HTTP front end shares every rule.

use flotilla_client::wire::{ApiError, ErrorCode, Member, RequestV1, ResponseV1, TokenKind};

use super::authz::{authorize, check_current, Caller, Change};
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
        if let Err(e) = self.authorize(caller, &req).await {
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
            RequestV1::DownloadModule { digest } => match caller.node() {
                Some(node) => match self.node_runs_module(node, &digest).await {
                    Ok(()) => Routed::Download { digest },
                    Err(e) => Routed::Answer(Err(e)),
                },
                None => Routed::Download { digest },
            },
            req @ (RequestV1::Logs { .. } | RequestV1::PortForward { .. }) => Routed::ToNode(req),
            other => Routed::Answer(self.answer(caller, other).await),
        }
    }

    /// Authorizes `req`; a refusal is decided again on bindings read on the
    /// spot, so it never rests on the cache's lag behind this peer's state.
    async fn authorize(&self, caller: &Caller, req: &RequestV1) -> ApiResult<()> {
        if let Some(id) = caller.peer_id() {
            if self.store.was_removed(id) {
                return Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    format!("peer:{id} was removed from the cluster; its certificate no longer works (join again with a peer token)"),
                ));
            }
        }
        match authorize(caller, req, &self.rbac.current()) {
            // Node restriction reads no bindings: a node's refusals are final.
            Err(e) if e.code == ErrorCode::Forbidden && caller.node().is_none() => {
                authorize(caller, req, &self.rbac.refresh())
            }
            decided => decided,
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
            RequestV1::SelfSubjectReview => Ok(ResponseV1::Subject {
                identity: caller.name().to_string(),
                groups: caller.groups().to_vec(),
            }),
            RequestV1::AccessReview {
                identity,
                groups,
                verb,
                resource,
                namespace,
                name,
            } => self.review_access(caller, identity, groups, verb, resource, namespace, name),
            RequestV1::SignUser {
                name,
                groups,
                csr_pem,
                ttl_seconds,
            } => self.sign_user(name, groups, csr_pem, ttl_seconds),
            RequestV1::Clock => Ok(ResponseV1::Clock {
                unix_micros: flotilla_api::meta::unix_micros_now(),
                serving_millis: u64::try_from(self.started.elapsed().as_millis())
                    .unwrap_or(u64::MAX),
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
            } => {
                let object = self.get(kind, &namespace, &name, consistency).await?;
                check_current(caller, Change::Read, &object)?;
                Ok(ResponseV1::Object(object))
            }
            RequestV1::List {
                kind,
                namespace,
                label_selector,
                consistency,
                field_selector,
                limit,
                continue_token,
            } => {
                let selectors = parse_selectors(&label_selector, &field_selector)?;
                let page = self
                    .list_objects(
                        kind,
                        namespace.as_deref(),
                        &selectors,
                        consistency,
                        (limit, &continue_token),
                    )
                    .await?;
                Ok(ResponseV1::List {
                    items: page.items,
                    revision: page.revision,
                    continue_token: page.continue_token,
                })
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
                let token =
                    tokens::create(&self.store, &self.ca, TokenKind::Node, ttl_seconds, 0).await?;
                Ok(ResponseV1::Token(token))
            }
            RequestV1::CreateJoinToken {
                kind,
                ttl_seconds,
                uses,
            } => {
                let token = tokens::create(&self.store, &self.ca, kind, ttl_seconds, uses).await?;
                Ok(ResponseV1::Token(token))
            }
            RequestV1::ListTokens => Ok(ResponseV1::Tokens(tokens::list(&self.store).await?)),
            RequestV1::RevokeToken { id } => {
                tokens::revoke(&self.store, &id).await?;
                Ok(ResponseV1::Ok)
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
                self.store.mark_removed(id).await.map_err(store_error)?;
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

#[cfg(test)]
mod tests {
    //! The router driven directly: a one-peer store on disk, no listener, no
    //! client; every request is a value in and a value out.

    use std::sync::Arc;
    use std::time::Duration;

    use flotilla_api::instance::MIRROR_ANNOTATION;
    use flotilla_api::manifest::parse_manifests;
    use flotilla_api::meta::OwnerReference;
    use flotilla_api::object::{Kind, Object};
    use flotilla_client::wire::{ApplyOutcome, Consistency, ErrorCode, Propagation, RequestV1};

    use super::*;
    use crate::apiserver::{ApiMetrics, NetworkRanges};
    use crate::ca::CertificateAuthority;
    use crate::store::network::PeerNet;
    use crate::store::{Store, StoreConfig};

    struct Fixture {
        api: ApiServer,
        _dir: tempfile::TempDir,
    }

    /// An apiserver over a fresh one-peer store. The store's peer network is
    /// a client endpoint that never dials: one peer has no one to call.
    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("test").unwrap();
        let cert = ca.issue("peer:1", &[]).unwrap();
        let tls = flotilla_client::tls::client_config(
            &ca.cert_pem,
            Some(&cert),
            flotilla_client::tls::ALPN_RAFT,
            flotilla_client::tls::ServerIdentity::AnyPeer,
        )
        .unwrap();
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let net = Arc::new(PeerNet::new(
            endpoint,
            quinn::ClientConfig::new(Arc::new(quic)),
        ));
        let store = Store::open(StoreConfig::new(1, dir.path().to_path_buf()), net)
            .await
            .unwrap();
        store.initialize("127.0.0.1:1").await.unwrap();
        assert_eq!(
            store.wait_for_leader(Duration::from_secs(10)).await,
            Some(1)
        );
        let registry = flotilla_telemetry::Registry::new();
        let api = ApiServer::new(
            store,
            ca,
            "test".into(),
            cert,
            1 << 20,
            NetworkRanges::default(),
            ApiMetrics::register(&registry),
        );
        api.ensure_namespace("default").await.unwrap();
        Fixture { api, _dir: dir }
    }

    fn admin() -> Caller {
        Caller::identity("user:admin")
    }

    fn object(yaml: &str) -> Object {
        parse_manifests(&format!("apiVersion: flotilla.dev/v1\n{yaml}"))
            .unwrap()
            .remove(0)
    }

    fn instance(name: &str) -> Object {
        object(&format!(
            "kind: Instance\nmetadata: {{name: {name}}}\nspec: {{module: \"sha256:{}\"}}",
            "a".repeat(64)
        ))
    }

    fn get(kind: Kind, name: &str) -> RequestV1 {
        RequestV1::Get {
            kind,
            namespace: "default".into(),
            name: name.into(),
            consistency: Consistency::Linearizable,
        }
    }

    fn code<T: std::fmt::Debug>(r: ApiResult<T>) -> ErrorCode {
        r.expect_err("an error").code
    }

    #[tokio::test]
    async fn every_request_kind_is_authorized_before_it_is_served() {
        let f = fixture().await;
        let anonymous = Caller::anonymous();
        let who = f.api.handle(&anonymous, RequestV1::WhoAmI).await.unwrap();
        assert!(matches!(who, ResponseV1::Identity(id) if id.is_empty()));
        assert!(matches!(
            f.api.handle(&anonymous, RequestV1::Clock).await,
            Ok(ResponseV1::Clock { .. })
        ));
        // Anonymous: nothing but joins, whoami and the clock.
        let cases = [
            get(Kind::Instance, "x"),
            RequestV1::Create {
                object: instance("web"),
            },
            RequestV1::CreateToken { ttl_seconds: 60 },
            RequestV1::Members,
            RequestV1::RemoveMember { id: 1 },
            RequestV1::RenewCertificate {
                csr_pem: String::new(),
            },
        ];
        for req in cases {
            let label = crate::apiserver::metrics::labels_of(&req).0;
            let err = f.api.handle(&anonymous, req).await.expect_err(label);
            assert_eq!(err.code, ErrorCode::Unauthorized, "{label}: {err}");
        }
        // Streaming requests are authorized by the router too.
        let watch = RequestV1::Watch {
            kind: Some(Kind::Instance),
            namespace: None,
            label_selector: String::new(),
            from_revision: 0,
            field_selector: String::new(),
        };
        match f.api.route(&anonymous, watch.clone()).await {
            Routed::Answer(Err(e)) => assert_eq!(e.code, ErrorCode::Unauthorized, "{e}"),
            _ => panic!("an anonymous watch was let through"),
        }
        assert!(matches!(
            f.api.route(&admin(), watch.clone()).await,
            Routed::Watch(Ok(_))
        ));
        assert_eq!(
            code(f.api.handle(&admin(), watch).await),
            ErrorCode::BadRequest
        );
        let upload = RequestV1::UploadModule {
            digest: String::new(),
            size: 0,
            source: String::new(),
        };
        assert!(matches!(
            f.api.route(&anonymous, upload.clone()).await,
            Routed::Answer(Err(_))
        ));
        assert!(matches!(
            f.api.route(&admin(), upload).await,
            Routed::Upload { .. }
        ));

        // Identities with narrower rights.
        let add = RequestV1::AddPeer {
            id: 2,
            address: "127.0.0.1:2".into(),
        };
        assert_eq!(
            code(f.api.handle(&admin(), add.clone()).await),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(f.api.handle(&Caller::identity("peer:3"), add).await),
            ErrorCode::Forbidden
        );
        let renew = RequestV1::RenewCertificate {
            csr_pem: String::new(),
        };
        assert_eq!(
            code(f.api.handle(&admin(), renew.clone()).await),
            ErrorCode::Forbidden
        );
        // A node passes authorization; its bad CSR is the next thing to fail.
        assert_eq!(
            code(f.api.handle(&Caller::identity("node:a"), renew).await),
            ErrorCode::BadRequest
        );
    }

    #[tokio::test]
    async fn object_verbs_answer_and_refuse_as_the_store_says() {
        let f = fixture().await;
        let api = &f.api;
        let created = match api
            .handle(
                &admin(),
                RequestV1::Create {
                    object: instance("web"),
                },
            )
            .await
            .unwrap()
        {
            ResponseV1::Object(o) => o,
            other => panic!("{other:?}"),
        };
        assert!(!created.meta().uid.is_empty());
        let rv = created.meta().resource_version.clone();
        assert_eq!(
            code(
                api.handle(
                    &admin(),
                    RequestV1::Create {
                        object: instance("web")
                    }
                )
                .await
            ),
            ErrorCode::AlreadyExists
        );
        let mut elsewhere = instance("lost");
        elsewhere.meta_mut().namespace = "nowhere".into();
        let err = api
            .handle(&admin(), RequestV1::Create { object: elsewhere })
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        assert!(
            err.message.contains("namespace \"nowhere\" not found"),
            "{err}"
        );

        // Compare-and-swap: the version read wins once, then conflicts.
        let mut changed = created.clone();
        changed
            .meta_mut()
            .labels
            .insert("tier".into(), "web".into());
        let updated = match api
            .handle(
                &admin(),
                RequestV1::Update {
                    object: changed.clone(),
                },
            )
            .await
            .unwrap()
        {
            ResponseV1::Object(o) => o,
            other => panic!("{other:?}"),
        };
        assert_ne!(updated.meta().resource_version, rv);
        let err = api
            .handle(&admin(), RequestV1::Update { object: changed })
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Conflict);
        assert!(
            err.message.contains("was modified since it was read"),
            "{err}"
        );

        // Apply: unchanged, then configured.
        let (_, outcome) = api.apply(&admin(), updated.clone()).await.unwrap();
        assert_eq!(outcome, ApplyOutcome::Unchanged);
        let mut more = updated.clone();
        more.meta_mut().labels.insert("more".into(), "x".into());
        let (_, outcome) = api.apply(&admin(), more).await.unwrap();
        assert_eq!(outcome, ApplyOutcome::Configured);
        let (_, outcome) = api.apply(&admin(), instance("fresh")).await.unwrap();
        assert_eq!(outcome, ApplyOutcome::Created);

        // Bind: once.
        let current = match api.handle(&admin(), get(Kind::Instance, "fresh")).await {
            Ok(ResponseV1::Object(o)) => o,
            other => panic!("{other:?}"),
        };
        let bind = |rv: String| RequestV1::Bind {
            namespace: "default".into(),
            name: "fresh".into(),
            node_name: "edge-1".into(),
            resource_version: rv,
        };
        let rv = current.meta().resource_version.clone();
        assert!(matches!(
            api.handle(&admin(), bind(rv.clone())).await,
            Ok(ResponseV1::Bound { .. })
        ));
        assert_eq!(
            code(api.handle(&admin(), bind(rv)).await),
            ErrorCode::Conflict
        );
        assert_eq!(
            code(api.handle(&admin(), bind(String::new())).await),
            ErrorCode::Conflict,
            "already bound"
        );

        // Delete, then it is gone.
        let deleted = api
            .handle(
                &admin(),
                RequestV1::Delete {
                    kind: Kind::Instance,
                    namespace: String::new(),
                    name: "web".into(),
                    resource_version: String::new(),
                    propagation: Propagation::Background,
                },
            )
            .await
            .unwrap();
        assert!(matches!(deleted, ResponseV1::Deleted { deleted: true, .. }));
        assert_eq!(
            code(api.handle(&admin(), get(Kind::Instance, "web")).await),
            ErrorCode::NotFound
        );
        let default_ns = RequestV1::Delete {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: "default".into(),
            resource_version: String::new(),
            propagation: Propagation::Background,
        };
        assert_eq!(
            code(api.handle(&admin(), default_ns).await),
            ErrorCode::Forbidden
        );
    }

    #[tokio::test]
    async fn a_dependent_is_created_only_while_its_controller_lives() {
        let f = fixture().await;
        let api = &f.api;
        let create = |object: Object| RequestV1::Create { object };
        let owner = match api
            .handle(
                &admin(),
                create(object(&format!(
                    "kind: Job\nmetadata: {{name: batch}}\nspec: {{template: {{spec: {{module: \"sha256:{}\", restartPolicy: Never}}}}}}",
                    "a".repeat(64)
                ))),
            )
            .await
            .unwrap()
        {
            ResponseV1::Object(o) => o,
            other => panic!("{other:?}"),
        };
        let owned_by = |name: &str, uid: &str| {
            let mut i = instance(name);
            i.meta_mut().owner_references.push(OwnerReference {
                api_version: "flotilla.dev/v1".into(),
                kind: "Job".into(),
                name: "batch".into(),
                uid: uid.into(),
                controller: true,
                block_owner_deletion: true,
            });
            i
        };
        let uid = owner.meta().uid.clone();
        assert!(api
            .handle(&admin(), create(owned_by("batch-1", &uid)))
            .await
            .is_ok());

        let err = api
            .handle(&admin(), create(owned_by("batch-2", "another-uid")))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound, "{err}");
        assert!(
            err.message
                .contains("metadata.ownerReferences[0], does not exist"),
            "{err}"
        );

        let foreground = RequestV1::Delete {
            kind: Kind::Job,
            namespace: String::new(),
            name: "batch".into(),
            resource_version: String::new(),
            propagation: Propagation::Foreground,
        };
        assert!(matches!(
            api.handle(&admin(), foreground).await,
            Ok(ResponseV1::Deleted { deleted: false, .. })
        ));
        let err = api
            .handle(&admin(), create(owned_by("batch-3", &uid)))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Conflict, "{err}");
        assert!(err.message.contains("is being deleted"), "{err}");
        for refused in ["batch-2", "batch-3"] {
            assert_eq!(
                code(api.handle(&admin(), get(Kind::Instance, refused)).await),
                ErrorCode::NotFound,
                "a refused create wrote nothing"
            );
        }
    }

    #[tokio::test]
    async fn mirrors_of_static_instances_change_only_by_their_node() {
        let f = fixture().await;
        let mut mirror = instance("static-web");
        mirror
            .meta_mut()
            .annotations
            .insert(MIRROR_ANNOTATION.into(), "true".into());
        if let Object::Instance(i) = &mut mirror {
            i.spec.node_name = "edge-1".into();
        }
        let node = Caller::identity("node:edge-1");
        let created = f.api.create(mirror).await.unwrap();
        let mut changed = created.clone();
        changed.meta_mut().labels.insert("x".into(), "y".into());
        let err = f
            .api
            .update(&admin(), changed.clone(), false)
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);
        assert!(err.message.contains("--manifests-dir"), "{err}");
        assert_eq!(
            code(
                f.api
                    .update(&Caller::identity("node:other"), changed.clone(), false)
                    .await
            ),
            ErrorCode::Forbidden
        );
        f.api.update(&node, changed, false).await.unwrap();
    }

    fn bound(name: &str, node: &str) -> Object {
        let mut o = instance(name);
        if let Object::Instance(i) = &mut o {
            i.spec.node_name = node.into();
        }
        o
    }

    fn list_instances(field_selector: &str) -> RequestV1 {
        RequestV1::List {
            kind: Kind::Instance,
            namespace: None,
            label_selector: String::new(),
            consistency: Consistency::Linearizable,
            field_selector: field_selector.into(),
            limit: 0,
            continue_token: String::new(),
        }
    }

    #[tokio::test]
    async fn a_node_reads_and_writes_only_what_is_its_own() {
        let f = fixture().await;
        let api = &f.api;
        for node in ["edge-1", "edge-2"] {
            let create = RequestV1::Create {
                object: object(&format!("kind: Node\nmetadata: {{name: {node}}}")),
            };
            api.handle(&admin(), create).await.unwrap();
        }
        let mine = api.create(bound("mine", "edge-1")).await.unwrap();
        let theirs = api.create(bound("theirs", "edge-2")).await.unwrap();
        let node = Caller::identity("node:edge-1");
        let node_2 = get(Kind::Node, "edge-2");
        let mut other_node = match api.handle(&admin(), node_2).await.unwrap() {
            ResponseV1::Object(o) => o,
            other => panic!("{other:?}"),
        };
        other_node
            .meta_mut()
            .labels
            .insert("taken".into(), "yes".into());
        let mut respec = mine.clone();
        if let Object::Instance(i) = &mut respec {
            i.spec.args = vec!["--evil".into()];
        }
        let mut claimed = theirs.clone();
        if let Object::Instance(i) = &mut claimed {
            i.spec.node_name = "edge-1".into();
        }
        let event_from = |host: &str| {
            let about = flotilla_api::meta::ObjectMeta::new("default", "mine");
            let mut e = flotilla_api::event::Event::about(
                Kind::Instance,
                &about,
                flotilla_api::event::EventType::Warning,
                "EgressDenied",
                "denied",
                "node-agent",
            );
            e.source.host = host.into();
            Object::Event(e)
        };
        let stored_event = |r: ApiResult<ResponseV1>| match r {
            Ok(ResponseV1::Object(o)) => o,
            other => panic!("{other:?}"),
        };
        let theirs_event = stored_event(
            api.handle(
                &admin(),
                RequestV1::Create {
                    object: event_from("edge-2"),
                },
            )
            .await,
        );
        let mut their_event_claimed = theirs_event.clone();
        if let Object::Event(e) = &mut their_event_claimed {
            e.source.host = "edge-1".into();
            e.count = 99;
        }
        let refused = [
            ("get another node's instance", get(Kind::Instance, "theirs")),
            ("list every instance", list_instances("")),
            (
                "list another node's instances",
                list_instances("spec.nodeName=edge-2"),
            ),
            (
                "update another Node",
                RequestV1::Update {
                    object: other_node.clone(),
                },
            ),
            (
                "read another node's Lease",
                RequestV1::Get {
                    kind: Kind::Lease,
                    namespace: flotilla_api::lease::NODE_LEASE_NAMESPACE.into(),
                    name: "edge-2".into(),
                    consistency: Consistency::Linearizable,
                },
            ),
            (
                "update an instance's spec",
                RequestV1::Update { object: respec },
            ),
            (
                "write the status of another node's instance",
                RequestV1::UpdateStatus { object: claimed },
            ),
            ("create a token", RequestV1::CreateToken { ttl_seconds: 60 }),
            ("list members", RequestV1::Members),
            ("remove a member", RequestV1::RemoveMember { id: 1 }),
            (
                "bind",
                RequestV1::Bind {
                    namespace: "default".into(),
                    name: "theirs".into(),
                    node_name: "edge-1".into(),
                    resource_version: String::new(),
                },
            ),
            (
                "delete another Node",
                RequestV1::Delete {
                    kind: Kind::Node,
                    namespace: String::new(),
                    name: "edge-2".into(),
                    resource_version: String::new(),
                    propagation: Propagation::Background,
                },
            ),
            (
                "create an event as another node",
                RequestV1::Create {
                    object: event_from("edge-2"),
                },
            ),
            (
                "update another node's event",
                RequestV1::Update {
                    object: their_event_claimed,
                },
            ),
            (
                "delete an instance that is not its mirror",
                RequestV1::Delete {
                    kind: Kind::Instance,
                    namespace: "default".into(),
                    name: "mine".into(),
                    resource_version: String::new(),
                    propagation: Propagation::Background,
                },
            ),
        ];
        for (what, req) in refused {
            let err = api.handle(&node, req).await.expect_err(what);
            assert_eq!(err.code, ErrorCode::Forbidden, "{what}: {err}");
            assert!(
                err.message.starts_with("forbidden: node:edge-1 may not "),
                "{what}: {err}"
            );
        }
        for (name, was) in [("theirs", &theirs), ("mine", &mine)] {
            let now = match api
                .handle(&admin(), get(Kind::Instance, name))
                .await
                .unwrap()
            {
                ResponseV1::Object(o) => o,
                other => panic!("{other:?}"),
            };
            assert_eq!(&now, was, "a refused request changed {name}");
        }
        let now = api
            .handle(&admin(), get(Kind::Node, "edge-2"))
            .await
            .unwrap();
        assert!(matches!(now, ResponseV1::Object(o) if o.meta().labels.is_empty()));

        let mut status = mine.clone();
        if let Object::Instance(i) = &mut status {
            i.status.message = "running here".into();
        }
        let allowed = [
            ("get its own instance", get(Kind::Instance, "mine")),
            (
                "list its own instances",
                list_instances("spec.nodeName=edge-1"),
            ),
            ("read another Node", get(Kind::Node, "edge-2")),
            (
                "write its instance's status",
                RequestV1::UpdateStatus { object: status },
            ),
        ];
        for (what, req) in allowed {
            api.handle(&node, req)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        // Its own events it writes, and counts up.
        let mine_event = stored_event(
            api.handle(
                &node,
                RequestV1::Create {
                    object: event_from("edge-1"),
                },
            )
            .await,
        );
        let mut counted = mine_event.clone();
        if let Object::Event(e) = &mut counted {
            e.count = 2;
        }
        api.handle(&node, RequestV1::Update { object: counted })
            .await
            .expect("update its own event");
    }

    #[tokio::test]
    async fn callers_bound_to_nothing_may_do_nothing() {
        let f = fixture().await;
        let alice = Caller::identity("user:alice");
        let scheduler = Caller::identity("component:scheduler");
        let refused = [
            (&alice, list_instances("")),
            (&alice, RequestV1::Members),
            (
                &alice,
                RequestV1::Create {
                    object: instance("web"),
                },
            ),
            (&scheduler, RequestV1::CreateToken { ttl_seconds: 60 }),
            (
                &scheduler,
                RequestV1::Create {
                    object: instance("web"),
                },
            ),
        ];
        for (who, req) in refused {
            let err = f.api.handle(who, req).await.expect_err(who.name());
            assert_eq!(err.code, ErrorCode::Forbidden, "{err}");
            assert!(err.message.contains("no role bound to"), "{err}");
        }
        f.api.handle(&scheduler, list_instances("")).await.unwrap();
        let (items, _) = f.api.list(Kind::Instance, None, "").unwrap();
        assert!(items.is_empty(), "{items:?}");
    }

    fn list_page(limit: u32, continue_token: &str) -> RequestV1 {
        RequestV1::List {
            kind: Kind::Instance,
            namespace: Some("default".into()),
            label_selector: "tier=web".into(),
            consistency: Consistency::Linearizable,
            field_selector: String::new(),
            limit,
            continue_token: continue_token.into(),
        }
    }

    #[tokio::test]
    async fn lists_come_in_pages_that_pick_up_where_the_last_ended() {
        let f = fixture().await;
        for i in 0..25 {
            let mut o = instance(&format!("i-{i:02}"));
            if i % 5 != 0 {
                o.meta_mut().labels.insert("tier".into(), "web".into());
            }
            f.api
                .handle(&admin(), RequestV1::Create { object: o })
                .await
                .unwrap();
        }
        let mut names = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        let mut first_revision = None;
        loop {
            let Ok(ResponseV1::List {
                items,
                revision,
                continue_token,
            }) = f.api.handle(&admin(), list_page(7, &token)).await
            else {
                panic!("not a list");
            };
            assert!(items.len() <= 7);
            assert_eq!(*first_revision.get_or_insert(revision), revision);
            names.extend(items.iter().map(|o| o.meta().name.clone()));
            pages += 1;
            if continue_token.is_empty() {
                break;
            }
            // A change between pages does not move the list's revision.
            let extra = instance(&format!("z-{pages}"));
            f.api
                .handle(&admin(), RequestV1::Create { object: extra })
                .await
                .unwrap();
            token = continue_token;
        }
        let wanted: Vec<String> = (0..25)
            .filter(|i| i % 5 != 0)
            .map(|i| format!("i-{i:02}"))
            .collect();
        assert_eq!(names, wanted, "every match once, in key order");
        assert_eq!(pages, 3, "20 matches in pages of 7, none empty");

        // A token is the server's: garbage, or one of another list, is refused.
        for (token, wanted) in [("zz", "not hex"), ("00ff", "does not decode")] {
            let err = f
                .api
                .handle(&admin(), list_page(7, token))
                .await
                .unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest);
            assert!(err.message.contains(wanted), "{err}");
        }
        let Ok(ResponseV1::List { continue_token, .. }) =
            f.api.handle(&admin(), list_page(1, "")).await
        else {
            panic!("not a list");
        };
        let other = RequestV1::List {
            kind: Kind::Service,
            namespace: None,
            label_selector: String::new(),
            consistency: Consistency::Linearizable,
            field_selector: String::new(),
            limit: 1,
            continue_token,
        };
        let err = f.api.handle(&admin(), other).await.unwrap_err();
        assert!(err.message.contains("belongs to another list"), "{err}");
    }

    #[tokio::test]
    async fn an_object_that_does_not_decode_is_left_out_of_lists_and_named_by_get() {
        let f = fixture().await;
        for name in ["a", "c"] {
            f.api
                .handle(
                    &admin(),
                    RequestV1::Create {
                        object: instance(name),
                    },
                )
                .await
                .unwrap();
        }
        // As a later release would write it: a format this build does not read.
        let newer = vec![
            crate::store::format::MAGIC,
            crate::store::format::VERSION + 1,
            0,
        ];
        f.api
            .store()
            .propose(crate::store::Command {
                ops: vec![crate::store::Op {
                    key: super::super::keys::key_for(Kind::Instance, "default", "b"),
                    precondition: crate::store::Precondition::None,
                    action: crate::store::Action::Put(newer),
                }],
            })
            .await
            .unwrap();
        for limit in [0, 1] {
            let mut names = Vec::new();
            let mut token = String::new();
            loop {
                let Ok(ResponseV1::List {
                    items,
                    continue_token,
                    ..
                }) = f
                    .api
                    .handle(&admin(), list_page_of_all(limit, &token))
                    .await
                else {
                    panic!("not a list");
                };
                names.extend(items.iter().map(|o| o.meta().name.clone()));
                if continue_token.is_empty() {
                    break;
                }
                token = continue_token;
            }
            assert_eq!(names, ["a", "c"], "limit {limit}");
        }
        let err = f
            .api
            .handle(&admin(), get(Kind::Instance, "b"))
            .await
            .unwrap_err();
        assert!(err.message.contains("newer than this build reads"), "{err}");
    }

    fn list_page_of_all(limit: u32, continue_token: &str) -> RequestV1 {
        RequestV1::List {
            kind: Kind::Instance,
            namespace: Some("default".into()),
            label_selector: String::new(),
            consistency: Consistency::Linearizable,
            field_selector: String::new(),
            limit,
            continue_token: continue_token.into(),
        }
    }

    #[tokio::test]
    async fn bad_input_is_a_clear_error_and_changes_nothing() {
        let f = fixture().await;
        let mut bad = instance("web");
        if let Object::Instance(i) = &mut bad {
            i.spec.module.clear();
        }
        let err = f
            .api
            .handle(&admin(), RequestV1::Create { object: bad })
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Invalid);
        assert!(err.message.contains("spec.module: required"), "{err}");
        let mut stale = instance("web");
        stale.meta_mut().resource_version = "seven".into();
        let err = f
            .api
            .handle(&admin(), RequestV1::Update { object: stale })
            .await
            .unwrap_err();
        assert!(err.message.contains("metadata.resourceVersion"), "{err}");
        let list = RequestV1::List {
            kind: Kind::Instance,
            namespace: None,
            label_selector: "a in (".into(),
            consistency: Consistency::Linearizable,
            field_selector: String::new(),
            limit: 0,
            continue_token: String::new(),
        };
        assert_eq!(
            code(f.api.handle(&admin(), list).await),
            ErrorCode::BadRequest
        );
        let (items, _) = f.api.list(Kind::Instance, None, "").unwrap();
        assert!(items.is_empty(), "{items:?}");
    }
}
