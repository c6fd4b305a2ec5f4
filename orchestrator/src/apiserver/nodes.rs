//! The requests the apiserver carries through to a node's own listener
//! (logs, port-forward, tunnel probes), as kube-apiserver does to the
//! kubelet.

use flotilla_api::node::Node;
use flotilla_api::object::{Kind, Object};
use flotilla_client::dial;
use flotilla_client::tls::{self, ALPN_NODE};
use flotilla_client::wire::{
    read_frame, write_frame, ApiError, ErrorCode, Request, RequestV1, Response, ResponseV1,
    MAX_FRAME,
};

use super::errors::{not_found, ApiResult};
use super::ApiServer;

fn unavailable(msg: String) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, msg)
}

impl ApiServer {
    /// The node an instance runs on, as far as this peer knows: it must be
    /// bound and its node registered.
    pub(super) async fn node_for_instance(&self, namespace: &str, name: &str) -> ApiResult<String> {
        let namespace = if namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        self.sync().await?;
        let Some(Object::Instance(instance)) = self.read(Kind::Instance, namespace, name)? else {
            return Err(not_found(Kind::Instance, namespace, name));
        };
        let node_name = if instance.status.node_name.is_empty() {
            instance.spec.node_name.clone()
        } else {
            instance.status.node_name.clone()
        };
        if node_name.is_empty() {
            return Err(unavailable(format!(
                "instance \"{name}\" is not bound to a node yet"
            )));
        }
        if !matches!(
            self.read(Kind::Node, "", &node_name)?,
            Some(Object::Node(_))
        ) {
            return Err(unavailable(format!(
                "instance \"{name}\" is bound to node \"{node_name}\", which has not registered"
            )));
        }
        Ok(node_name)
    }

    /// Finds the node running the instance of a logs or port-forward request
    /// and relays the request and every byte after it, both ways, until
    /// either side ends.
    pub(super) async fn proxy_to_node(
        &self,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
        req: RequestV1,
    ) -> ApiResult<()> {
        let (namespace, name) = match &req {
            RequestV1::Logs {
                namespace, name, ..
            }
            | RequestV1::PortForward { namespace, name } => (namespace.clone(), name.clone()),
            _ => return Err(ApiError::new(ErrorCode::BadRequest, "not a node request")),
        };
        let node_name = self.node_for_instance(&namespace, &name).await?;
        let (_endpoint, conn) = self.dial_node(&node_name).await?;
        let (mut node_send, mut node_recv) = conn
            .open_bi()
            .await
            .map_err(|e| unavailable(format!("node \"{node_name}\": {e}")))?;
        write_frame(&mut node_send, &Request::V1(req))
            .await
            .map_err(|e| unavailable(format!("node \"{node_name}\": {e}")))?;
        let up = async {
            let _ = tokio::io::copy(recv, &mut node_send).await;
            let _ = node_send.finish();
        };
        let down = async {
            let _ = tokio::io::copy(&mut node_recv, send).await;
            let _ = send.finish();
        };
        tokio::join!(up, down);
        Ok(())
    }
}

impl ApiServer {
    /// The tunnel address of a registered node, read from this peer's copy
    /// (a diagnosis also runs without a quorum).
    fn node_tunnel_address(&self, node_name: &str) -> ApiResult<String> {
        let Some(Object::Node(node)) = self.read(Kind::Node, "", node_name)? else {
            return Err(not_found(Kind::Node, "", node_name));
        };
        node_address(&node).ok_or_else(|| {
            unavailable(format!(
                "node \"{node_name}\" reports no address to reach it at"
            ))
        })
    }

    /// A connection to a node's own listener, as an apiserver.
    async fn dial_node(&self, node_name: &str) -> ApiResult<(quinn::Endpoint, quinn::Connection)> {
        let addr = self.node_tunnel_address(node_name)?;
        let config = tls::client_config(
            &self.ca.cert_pem,
            Some(&self.peer_cert()),
            ALPN_NODE,
            tls::ServerIdentity::Node(node_name.to_string()),
        )
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        dial(&addr, config)
            .await
            .map_err(|e| unavailable(format!("node \"{node_name}\": {e}")))
    }

    /// Has node `from` probe its tunnel to node `to` and relays the answer.
    pub(super) async fn probe_tunnel(&self, from: &str, to: &str) -> ApiResult<ResponseV1> {
        let to_address = self.node_tunnel_address(to)?;
        let relay = async {
            let (_endpoint, conn) = self.dial_node(from).await?;
            let relay_error = |e: String| unavailable(format!("node \"{from}\": {e}"));
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| relay_error(e.to_string()))?;
            let req = RequestV1::ProbeTunnel {
                from: from.to_string(),
                to: to.to_string(),
                to_address,
            };
            write_frame(&mut send, &Request::V1(req))
                .await
                .map_err(|e| relay_error(e.to_string()))?;
            let _ = send.finish();
            match read_frame::<_, Response>(&mut recv, MAX_FRAME).await {
                Ok(Some(Response::V1(probe @ ResponseV1::TunnelProbe { .. }))) => Ok(probe),
                Ok(Some(Response::V1(ResponseV1::Error(e)))) => Err(e),
                Ok(Some(Response::V1(other))) => Err(relay_error(format!(
                    "unexpected answer to a tunnel probe: {other:?}"
                ))),
                Ok(None) => Err(relay_error("closed the stream without an answer".into())),
                Err(e) => Err(relay_error(e.to_string())),
            }
        };
        tokio::time::timeout(PROBE_RELAY_TIMEOUT, relay)
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(format!(
                    "node \"{from}\" did not answer within {PROBE_RELAY_TIMEOUT:?}"
                )))
            })
    }
}

/// How long a relayed tunnel probe may take: the node's own bound (1.5 s)
/// and the hop to it, under `flotilla doctor`'s 2 s per call.
const PROBE_RELAY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1800);

fn node_address(node: &Node) -> Option<String> {
    let tunnel = &node.status.daemon_endpoints.tunnel;
    (!tunnel.is_empty()).then(|| tunnel.clone())
}
