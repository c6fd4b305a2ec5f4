//! [`Client`]: one QUIC connection to an apiserver, one stream per request.

use flotilla_api::object::{Kind, Object};

use crate::config::{check_client_cert, ClientConfig};
use crate::dial::dial;
use crate::error::{Cause, ClientError, Result};
use crate::tls::{self, IssuedCert};
use crate::wire::{
    read_frame, write_frame, ApplyOutcome, Consistency, Propagation, Request, RequestV1, Response,
    ResponseV1, UploadChunk, WatchEvent, MAX_FRAME, MODULE_CHUNK,
};

/// Objects per page when a whole list is read: as Kubernetes' clients do,
/// so that no answer grows with the cluster.
pub const LIST_PAGE: u32 = 500;

/// What a list reads.
#[derive(Clone, Copy, Debug)]
pub struct ListQuery<'a> {
    /// The kind.
    pub kind: Kind,
    /// One namespace, or all.
    pub namespace: Option<&'a str>,
    /// Label selector text, empty for all.
    pub label_selector: &'a str,
    /// Field selector text, empty for all.
    pub field_selector: &'a str,
    /// Read freshness (of the first page; the rest follow it).
    pub consistency: Consistency,
}

impl<'a> ListQuery<'a> {
    /// Every object of `kind`, read linearizably.
    pub fn all(kind: Kind) -> Self {
        Self {
            kind,
            namespace: None,
            label_selector: "",
            field_selector: "",
            consistency: Consistency::Linearizable,
        }
    }
}

/// One page of a list.
#[derive(Clone, Debug)]
pub struct ListPage {
    /// Its objects.
    pub items: Vec<Object>,
    /// The revision of the list's first page.
    pub revision: u64,
    /// Where the next page starts; empty on the last.
    pub continue_token: String,
}

/// A connection to an apiserver.
#[derive(Clone)]
pub struct Client {
    // Kept so the endpoint's socket lives as long as the connection.
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    addr: String,
    /// Tells connections apart (clones share it).
    id: u64,
}

fn next_connection_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
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
        let tls = tls::client_config(
            &config.ca_cert,
            Some(&cert),
            tls::ALPN_API,
            tls::ServerIdentity::AnyPeer,
        )?;
        let (endpoint, conn) = dial(addr, tls).await?;
        Ok(Self {
            _endpoint: endpoint,
            conn,
            addr: addr.to_string(),
            id: next_connection_id(),
        })
    }

    /// Connects with explicit CA and certificate.
    pub async fn connect_with(addr: &str, ca_pem: &str, cert: Option<&IssuedCert>) -> Result<Self> {
        if let Some(cert) = cert {
            check_client_cert(&cert.cert_pem, "the client certificate", None)?;
        }
        let tls = tls::client_config(ca_pem, cert, tls::ALPN_API, tls::ServerIdentity::AnyPeer)?;
        let (endpoint, conn) = dial(addr, tls).await?;
        Ok(Self {
            _endpoint: endpoint,
            conn,
            addr: addr.to_string(),
            id: next_connection_id(),
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
            id: next_connection_id(),
        })
    }

    /// Closes the connection: every stream on it (and on its clones) ends.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"closed by the client");
    }

    /// Whether `other` is a clone of this client (the same connection).
    pub fn same_connection(&self, other: &Client) -> bool {
        self.id == other.id
    }

    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    /// Waits until the connection is closed, by either side or by silence;
    /// returns why.
    pub async fn closed(&self) -> String {
        self.conn.closed().await.to_string()
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

    fn lost(&self, source: impl Into<Cause>) -> ClientError {
        ClientError::Connection {
            addr: self.addr.clone(),
            source: source.into(),
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

    /// Lists objects matching a label and a field selector, a page of
    /// [`LIST_PAGE`] at a time; the revision is the first page's.
    pub async fn list_selected(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        label_selector: &str,
        field_selector: &str,
        consistency: Consistency,
    ) -> Result<(Vec<Object>, u64)> {
        let query = ListQuery {
            kind,
            namespace,
            label_selector,
            field_selector,
            consistency,
        };
        let mut page = self.list_page(&query, LIST_PAGE, "").await?;
        let revision = page.revision;
        let mut items = std::mem::take(&mut page.items);
        while !page.continue_token.is_empty() {
            page = self
                .list_page(&query, LIST_PAGE, &page.continue_token)
                .await?;
            items.append(&mut page.items);
        }
        Ok((items, revision))
    }

    /// One page of a list: at most `limit` objects after where
    /// `continue_token` says the previous page ended ("" for the first).
    pub async fn list_page(
        &self,
        query: &ListQuery<'_>,
        limit: u32,
        continue_token: &str,
    ) -> Result<ListPage> {
        match self
            .call(RequestV1::List {
                kind: query.kind,
                namespace: query.namespace.map(str::to_string),
                label_selector: query.label_selector.into(),
                consistency: query.consistency,
                field_selector: query.field_selector.into(),
                limit,
                continue_token: continue_token.into(),
            })
            .await?
        {
            ResponseV1::List {
                items,
                revision,
                continue_token,
            } => Ok(ListPage {
                items,
                revision,
                continue_token,
            }),
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
        let digest = flotilla_api::module::digest_of(bytes);
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
        let actual = flotilla_api::module::digest_of(&bytes);
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
                    source: e.into(),
                })?;
        match resp {
            None => Ok(None),
            Some(Response::V1(ResponseV1::Event(e))) => Ok(Some(e)),
            Some(Response::V1(ResponseV1::Error(e))) => Err(e.into()),
            Some(Response::V1(other)) => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}
