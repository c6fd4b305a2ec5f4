//! Keeps the network's tables current: Nodes (instance ranges and tunnel
//! addresses), Services (cluster IPs, ingress rules) and Endpoints (ready
//! addresses), by list and then watch, relisting after any break. While the
//! apiserver is unreachable the tables keep what they last had.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::cidr::Cidr;
use flotilla_api::event::{Event, EventType as EventKind};
use flotilla_api::meta::ObjectMeta;
use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::{EventType, WatchEvent};
use flotilla_client::{Client, ClientError};

use crate::net::{Network, Tables};
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

async fn follow(net: &Network, client: &Client) -> Result<(), ClientError> {
    let mut revisions = Vec::new();
    let mut listed = Vec::new();
    for kind in KINDS {
        let (items, revision) = client.list(kind, None, "").await?;
        listed.push((kind, items));
        revisions.push(revision);
    }
    net.update_tables(|t| {
        *t = Tables::default();
        for (_, items) in &listed {
            for o in items {
                apply(t, o, false);
            }
        }
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<WatchEvent, ClientError>>(256);
    let mut watchers = Vec::new();
    for (kind, revision) in KINDS.into_iter().zip(revisions) {
        let mut stream = client.watch(Some(kind), None, "", revision).await?;
        let tx = tx.clone();
        watchers.push(tokio::spawn(async move {
            loop {
                let item = match stream.next().await {
                    Ok(Some(e)) => Ok(e),
                    Ok(None) => Err(ClientError::Unexpected("the server ended a watch".into())),
                    Err(e) => Err(e),
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        }));
    }
    drop(tx);
    let result = loop {
        match rx.recv().await {
            Some(Ok(event)) => {
                let deleted = event.event_type == EventType::Deleted;
                net.update_tables(|t| apply(t, &event.object, deleted));
                if let (true, Object::Service(s)) = (deleted, &event.object) {
                    net.forget_service_metrics(&(
                        s.metadata.namespace.clone(),
                        s.metadata.name.clone(),
                    ));
                }
            }
            Some(Err(e)) => break Err(e),
            None => break Ok(()),
        }
    };
    for w in watchers {
        w.abort();
    }
    result
}

/// Runs until the agent stops.
pub async fn run(net: Arc<Network>, link: Arc<Link>) {
    loop {
        let Some(client) = link.client().await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        if let Err(e) = follow(&net, &client).await {
            tracing::debug!(error = %e, "network tables lost their watch");
            link.reset().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Records an `EgressDenied` event about the instance, in the background.
pub fn record_denial(link: Arc<Link>, namespace: &str, name: &str, message: &str) {
    let about = ObjectMeta::new(namespace, name);
    let message = message.to_string();
    tokio::spawn(async move {
        let Some(client) = link.client().await else {
            return;
        };
        let mut about = about;
        if let Ok(o) = client
            .get(Kind::Instance, &about.namespace, &about.name)
            .await
        {
            about.uid = o.meta().uid.clone();
        }
        let event = Event::about(
            Kind::Instance,
            &about,
            EventKind::Warning,
            "EgressDenied",
            &message,
            "node-agent",
        );
        let _ = client.create(Object::Event(event)).await;
    });
}
