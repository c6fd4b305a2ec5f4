//! Endpoints: for every Service with a selector, an Endpoints object of the
//! same name listing the matching instances that have an address: Ready ones
//! as addresses, the others as not-ready addresses, grouped by the ports they
//! resolve the service's target ports to. Endpoints of a Service that is gone
//! are deleted.

use std::collections::{BTreeMap, HashSet};

use flotilla_api::endpoints::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints};
use flotilla_api::instance::Instance;
use flotilla_api::meta::{ObjectMeta, ObjectReference};
use flotilla_api::object::{Kind, Object};
use flotilla_api::service::{Service, TargetPort};
use flotilla_client::wire::{ErrorCode, Propagation};
use flotilla_client::ClientError;

use super::{is_terminal, owner_ref, Ctx, Snapshot};

/// The instance's ports for the service's, or `None` when a named target port
/// is not among the instance's ports.
fn resolve_ports(svc: &Service, i: &Instance) -> Option<Vec<EndpointPort>> {
    svc.spec
        .ports
        .iter()
        .map(|p| {
            let port = match p.target() {
                TargetPort::Number(n) => n,
                TargetPort::Name(name) => i.spec.ports.iter().find(|ip| ip.name == name)?.port,
            };
            Some(EndpointPort {
                name: p.name.clone(),
                port,
                protocol: p.protocol,
            })
        })
        .collect()
}

fn desired(svc: &Service, instances: &[Instance]) -> Vec<EndpointSubset> {
    let mut by_ports: BTreeMap<Vec<(String, u16)>, EndpointSubset> = BTreeMap::new();
    for i in instances {
        if i.metadata.namespace != svc.metadata.namespace
            || i.metadata.is_being_deleted()
            || is_terminal(i)
            || i.status.instance_ip.is_empty()
            || !svc
                .spec
                .selector
                .iter()
                .all(|(k, v)| i.metadata.labels.get(k) == Some(v))
        {
            continue;
        }
        let Some(ports) = resolve_ports(svc, i) else {
            continue;
        };
        let key = ports.iter().map(|p| (p.name.clone(), p.port)).collect();
        let subset = by_ports.entry(key).or_insert_with(|| EndpointSubset {
            ports,
            ..EndpointSubset::default()
        });
        let address = EndpointAddress {
            ip: i.status.instance_ip.clone(),
            node_name: i.spec.node_name.clone(),
            target_ref: Some(ObjectReference {
                kind: Kind::Instance.as_str().to_string(),
                namespace: i.metadata.namespace.clone(),
                name: i.metadata.name.clone(),
                uid: i.metadata.uid.clone(),
            }),
        };
        if i.is_ready() {
            subset.addresses.push(address);
        } else {
            subset.not_ready_addresses.push(address);
        }
    }
    let mut subsets: Vec<EndpointSubset> = by_ports.into_values().collect();
    for s in &mut subsets {
        s.addresses.sort_by(|a, b| a.ip.cmp(&b.ip));
        s.not_ready_addresses.sort_by(|a, b| a.ip.cmp(&b.ip));
    }
    subsets
}

pub(super) async fn reconcile(ctx: &Ctx, snap: &Snapshot) -> Result<(), ClientError> {
    let mut wanted = HashSet::new();
    for svc in &snap.services {
        if svc.spec.selector.is_empty() || svc.metadata.is_being_deleted() {
            continue;
        }
        wanted.insert((svc.metadata.namespace.clone(), svc.metadata.name.clone()));
        let subsets = desired(svc, &snap.instances);
        let current = snap.endpoints.iter().find(|e| {
            e.metadata.namespace == svc.metadata.namespace && e.metadata.name == svc.metadata.name
        });
        match current {
            Some(e) if e.subsets == subsets => {}
            Some(e) => {
                let mut next = e.clone();
                next.subsets = subsets;
                next.metadata.resource_version.clear();
                ctx.write(Object::Endpoints(next)).await?;
            }
            None => {
                let mut meta = ObjectMeta::new(&svc.metadata.namespace, &svc.metadata.name);
                meta.labels = svc.metadata.labels.clone();
                meta.owner_references = vec![owner_ref(Kind::Service, &svc.metadata)];
                let endpoints = Endpoints {
                    metadata: meta,
                    subsets,
                };
                match ctx.client.create(Object::Endpoints(endpoints)).await {
                    Ok(o) => ctx.cache.wrote(o),
                    Err(e) if e.code() == Some(ErrorCode::AlreadyExists) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    for e in &snap.endpoints {
        let owned_by_service = e
            .metadata
            .owner_references
            .iter()
            .any(|r| r.kind == Kind::Service.as_str());
        if owned_by_service
            && !wanted.contains(&(e.metadata.namespace.clone(), e.metadata.name.clone()))
        {
            match ctx
                .client
                .delete(
                    Kind::Endpoints,
                    &e.metadata.namespace,
                    &e.metadata.name,
                    Propagation::Background,
                )
                .await
            {
                Ok(_) => {}
                Err(err) if err.code() == Some(ErrorCode::NotFound) => {}
                Err(err) => return Err(err),
            }
            ctx.cache.removed(&Object::Endpoints(e.clone()));
        }
    }
    Ok(())
}
