//! The Node object and its Lease: created at first contact, the status and the
//! lease renewed every lease interval (and right after the link returns).

use std::sync::Arc;
use std::time::Duration;

use flotilla_api::lease::{NODE_LEASE_NAMESPACE, RENEW_INTERVAL_ANNOTATION};
use flotilla_api::meta::{now_timestamp, set_condition, Condition, ConditionStatus};
use flotilla_api::node::{
    NodeAddress, NodeDaemonEndpoints, NodeResources, CONDITION_READY, CONDITION_SERVICE_FORWARDER,
    LABEL_HOSTNAME,
};
use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::ErrorCode;
use flotilla_client::Client;
use flotilla_telemetry::Readiness;

use super::Shared;
use flotilla_client::Link;

/// Longest a heartbeat may take before the link counts as broken.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs forever; `registered` says whether the last heartbeat went through.
pub async fn run(
    shared: Arc<Shared>,
    link: Arc<Link>,
    endpoints: NodeDaemonEndpoints,
    registered: Readiness,
) {
    let metrics = shared.ctx.metrics.clone();
    loop {
        let interval = shared.config.lease_interval;
        let ok = match link.client().await {
            // A dead apiserver may leave the connection looking alive until QUIC's
            // idle timeout; a heartbeat that takes this long means it is gone.
            Some(client) => match tokio::time::timeout(
                HEARTBEAT_TIMEOUT,
                heartbeat(&shared, &client, &endpoints),
            )
            .await
            {
                Ok(Ok(())) => {
                    metrics.heartbeat("ok");
                    registered.set_ready();
                    true
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "node heartbeat failed");
                    metrics.heartbeat("error");
                    registered.set_not_ready(format!("the last heartbeat failed: {e}"));
                    link.reset().await;
                    false
                }
                Err(_) => {
                    tracing::debug!("node heartbeat timed out");
                    metrics.heartbeat("timeout");
                    registered.set_not_ready(format!(
                        "the last heartbeat got no answer within {HEARTBEAT_TIMEOUT:?}"
                    ));
                    link.reset().await;
                    false
                }
            },
            None => {
                registered.set_not_ready(link.certificate_problem().unwrap_or_else(|| {
                    format!("the apiserver at {} is unreachable", link.server())
                }));
                false
            }
        };
        // While the link is down, try again soon so the node reports within a
        // fraction of the lease interval once the apiserver is back.
        let wait = if ok {
            interval
        } else {
            Duration::from_millis(500).min(interval)
        };
        tokio::time::sleep(wait).await;
    }
}

async fn heartbeat(
    shared: &Shared,
    client: &Client,
    endpoints: &NodeDaemonEndpoints,
) -> Result<(), flotilla_client::ClientError> {
    let listen_addr = endpoints.tunnel.as_str();
    let config = &shared.config;
    let name = &config.name;
    let node = match client.get(Kind::Node, "", name).await {
        Ok(o) => o,
        Err(e) if e.code() == Some(ErrorCode::NotFound) => {
            let mut o = Object::new_empty(Kind::Node, "", name);
            o.meta_mut().labels = config.labels.clone();
            o.meta_mut()
                .labels
                .insert(LABEL_HOSTNAME.to_string(), name.clone());
            if let Object::Node(n) = &mut o {
                n.spec.taints = config.taints.clone();
            }
            match client.create(o).await {
                Ok(o) => o,
                Err(e) if e.code() == Some(ErrorCode::AlreadyExists) => {
                    client.get(Kind::Node, "", name).await?
                }
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    let before = node.clone();
    let mut node = node;
    if let Object::Node(n) = &mut node {
        let resources = NodeResources {
            cpu: config.capacity_cpu.clone(),
            memory: config.capacity_memory.clone(),
            instances: config.capacity_instances,
        };
        n.status.capacity = resources.clone();
        n.status.allocatable = resources;
        let host = listen_addr.rsplit_once(':').map(|(h, _)| h).unwrap_or("");
        n.status.addresses = vec![
            NodeAddress {
                type_: "Hostname".into(),
                address: name.clone(),
            },
            NodeAddress {
                type_: "InternalIP".into(),
                address: host.to_string(),
            },
        ];
        n.status.daemon_endpoints = endpoints.clone();
        n.status.node_info.flotilla_version = env!("CARGO_PKG_VERSION").to_string();
        n.status.node_info.wasmtime_version = shared.ctx.runtime.version().to_string();
        n.status.node_info.operating_system = std::env::consts::OS.to_string();
        n.status.node_info.architecture = std::env::consts::ARCH.to_string();
        // The certificate in use now (renewal replaces it under the link).
        n.status.node_info.certificate_not_after = shared
            .link
            .as_ref()
            .and_then(|l| {
                flotilla_client::tls::CertInfo::from_pem(&l.config().get().client_cert).ok()
            })
            .map(|c| c.not_after_rfc3339())
            .unwrap_or_default();
        let (forwarding, reason, message) = if config.service_forwarder {
            (
                ConditionStatus::True,
                "Serving",
                "service names and cluster IPs resolve on this node",
            )
        } else {
            (
                ConditionStatus::False,
                "Disabled",
                "started with --no-service-forwarder",
            )
        };
        set_condition(
            &mut n.status.conditions,
            Condition::new(CONDITION_SERVICE_FORWARDER, forwarding, reason, message),
        );
        set_condition(
            &mut n.status.conditions,
            Condition::new(
                CONDITION_READY,
                ConditionStatus::True,
                "AgentReady",
                "the node agent is posting status",
            ),
        );
    }
    // The lease says the node is alive; the Node object is written only when
    // its status changed, so that every node's heartbeat is not a change that
    // every watcher of Nodes (the other nodes among them) receives.
    if node != before {
        node.meta_mut().resource_version.clear();
        client.update_status(node).await?;
    }
    renew_lease(client, name, config.lease_interval).await
}

async fn renew_lease(
    client: &Client,
    name: &str,
    interval: Duration,
) -> Result<(), flotilla_client::ClientError> {
    let now = now_timestamp();
    let duration = (interval.as_secs() as u32).max(1) * 4;
    let interval_text = flotilla_api::duration::Duration::from_std(interval).to_string();
    match client.get(Kind::Lease, NODE_LEASE_NAMESPACE, name).await {
        Ok(mut lease) => {
            if let Object::Lease(l) = &mut lease {
                l.spec.holder_identity = name.to_string();
                l.spec.renew_time = now;
                l.spec.lease_duration_seconds = duration;
                l.metadata
                    .annotations
                    .insert(RENEW_INTERVAL_ANNOTATION.into(), interval_text);
            }
            lease.meta_mut().resource_version.clear();
            client.update(lease).await.map(|_| ())
        }
        Err(e) if e.code() == Some(ErrorCode::NotFound) => {
            let mut lease = Object::new_empty(Kind::Lease, NODE_LEASE_NAMESPACE, name);
            if let Object::Lease(l) = &mut lease {
                l.spec.holder_identity = name.to_string();
                l.spec.acquire_time = now.clone();
                l.spec.renew_time = now;
                l.spec.lease_duration_seconds = duration;
                l.metadata
                    .annotations
                    .insert(RENEW_INTERVAL_ANNOTATION.into(), interval_text);
            }
            match client.create(lease).await {
                Ok(_) => Ok(()),
                Err(e) if e.code() == Some(ErrorCode::AlreadyExists) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}
