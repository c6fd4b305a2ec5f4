//! Keeps the network's tables current: Nodes (instance ranges and tunnel
//! addresses), Services (cluster IPs, ingress rules) and Endpoints (ready
//! addresses), through the one watcher per kind. While the apiserver is
//! unreachable the tables keep what they last had.

use std::net::Ipv4Addr;
use std::sync::Arc;

use flotilla_api::cidr::Cidr;
use flotilla_api::event::EventType as EventKind;
use flotilla_api::meta::ObjectMeta;
use flotilla_api::object::{Kind, Object};
use flotilla_client::watcher::{self, Params, Watcher};
use flotilla_client::wire::EventType;

use crate::net::{Network, Tables};
use flotilla_client::events::Recorder;
use flotilla_client::Link;

fn apply(tables: &mut Tables, object: &Object, deleted: bool) {
    match object {
        Object::Node(n) => {
            let cidr: Option<Cidr> = n.spec.instance_cidr.parse().ok();
            match (deleted, cidr) {
                (false, Some(cidr)) => {
                    tables.set_node(&n.metadata.name, cidr, &n.status.daemon_endpoints.tunnel)
                }
                _ => tables.remove_node(&n.metadata.name),
            }
        }
        Object::Service(s) => {
            let key = (s.metadata.namespace.clone(), s.metadata.name.clone());
            if deleted {
                tables.remove_service(&key, true);
            } else {
                let ip = s.spec.cluster_ip.parse::<Ipv4Addr>().ok();
                let ing = &s.spec.ingress;
                let ingress = (!ing.host.is_empty()).then(|| (ing.host.clone(), ing.path.clone()));
                tables.set_service(key, ip, ingress);
            }
        }
        Object::Endpoints(e) => {
            let key = (e.metadata.namespace.clone(), e.metadata.name.clone());
            if deleted {
                tables.remove_endpoints(&key);
            } else {
                let ready = e
                    .subsets
                    .iter()
                    .flat_map(|s| s.addresses.iter())
                    .filter_map(|a| a.ip.parse().ok())
                    .collect();
                tables.set_endpoints(key, ready);
            }
        }
        _ => {}
    }
}

const KINDS: [Kind; 3] = [Kind::Node, Kind::Service, Kind::Endpoints];

/// Replaces everything of `kind` in the tables with a fresh list.
fn reset(tables: &mut Tables, kind: Kind, items: &[Object]) {
    match kind {
        Kind::Node => tables.clear_nodes(),
        Kind::Service => tables.clear_services(),
        Kind::Endpoints => tables.clear_endpoints(),
        _ => {}
    }
    for o in items {
        apply(tables, o, false);
    }
}

/// Runs until the agent stops: one watcher per kind, each keeping its part
/// of the tables current.
pub async fn run(net: Arc<Network>, link: Arc<Link>) {
    let mut watchers = tokio::task::JoinSet::new();
    for kind in KINDS {
        let net = net.clone();
        let mut watcher = Watcher::new(link.clone(), Params::all(kind));
        watchers.spawn(async move {
            loop {
                match watcher.next().await {
                    watcher::Event::Restarted { kind, items, .. } => {
                        net.update_tables(|t| reset(t, kind, &items));
                    }
                    watcher::Event::Changed(event) => {
                        let deleted = event.event_type == EventType::Deleted;
                        net.update_tables(|t| apply(t, &event.object, deleted));
                        if let (true, Object::Service(s)) = (deleted, &event.object) {
                            net.forget_service_metrics(&(
                                s.metadata.namespace.clone(),
                                s.metadata.name.clone(),
                            ));
                        }
                    }
                }
            }
        });
    }
    while watchers.join_next().await.is_some() {}
}

/// Records an `EgressDenied` event about the instance, in the background:
/// `recorder` makes repeats one Event whose count moves.
pub fn record_denial(
    recorder: Arc<Recorder>,
    link: Arc<Link>,
    namespace: &str,
    name: &str,
    message: &str,
) {
    let about = ObjectMeta::new(namespace, name);
    let message = message.to_string();
    tokio::spawn(async move {
        let Some(client) = link.client().await else {
            return;
        };
        recorder
            .record(
                &client,
                Kind::Instance,
                &about,
                EventKind::Warning,
                "EgressDenied",
                &message,
            )
            .await;
    });
}
