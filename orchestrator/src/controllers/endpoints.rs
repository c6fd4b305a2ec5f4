//! Endpoints: for every Service with a selector, an Endpoints object of the
//! same name listing the matching instances that have an address: Ready ones
//! as addresses, the others as not-ready addresses, grouped by the ports they
//! resolve the service's target ports to. Endpoints of a Service that is gone
//! are deleted.
//!
//! Keyed by Service (its Endpoints share its name); a change of the Service,
//! of its Endpoints, or of an instance its selector matches (before or after
//! the change) concerns it.
//!
//! Keyed by Service (its Endpoints share its name); a change of the Service,
//! of its Endpoints, or of an instance its selector matches (before or after
//! the change) concerns it.

use std::collections::BTreeMap;

use flotilla_api::endpoints::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints};
use flotilla_api::instance::Instance;
use flotilla_api::meta::{ObjectMeta, ObjectReference};
use flotilla_api::object::{Kind, Object};
use flotilla_api::service::{Service, TargetPort};

use super::is_terminal;
use super::runtime::{Action, Ctx, ObjectRef, ReconcileError, Reconciler};
use super::triggers;
use super::writes::{execute, owner_ref, Plan, Write};
use crate::informer::{Cache, CacheChange};

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

/// What the Endpoints controller decides for the Service `key`, from the
/// Service (gone: `None`), its Endpoints and the instances of its namespace.
pub fn decide(svc: Option<&Service>, current: Option<&Endpoints>, instances: &[Instance]) -> Plan {
    let mut plan = Plan::nothing();
    let wanted = svc.filter(|s| !s.spec.selector.is_empty() && !s.metadata.is_being_deleted());
    match (wanted, current) {
        (Some(svc), current) => {
            let subsets = desired(svc, instances);
            match current {
                Some(e) if e.subsets == subsets => {}
                Some(e) => {
                    let mut next = e.clone();
                    next.subsets = subsets;
                    next.metadata.resource_version.clear();
                    plan.writes.push(Write::Update(Object::Endpoints(next)));
                }
                None => {
                    let mut meta = ObjectMeta::new(&svc.metadata.namespace, &svc.metadata.name);
                    meta.labels = svc.metadata.labels.clone();
                    meta.owner_references = vec![owner_ref(Kind::Service, &svc.metadata)];
                    plan.writes.push(Write::Create(Object::Endpoints(Endpoints {
                        metadata: meta,
                        subsets,
                    })));
                }
            }
        }
        (None, Some(e)) => {
            let owned_by_service = e
                .metadata
                .owner_references
                .iter()
                .any(|r| r.kind == Kind::Service.as_str());
            if owned_by_service {
                let mut gone = e.clone();
                gone.metadata.resource_version.clear();
                plan.writes.push(Write::Delete(Object::Endpoints(gone)));
            }
        }
        (None, None) => {}
    }
    plan
}

/// The Endpoints controller.
pub struct EndpointsController;

fn selects(svc: &Service, labels: &BTreeMap<String, String>) -> bool {
    !svc.spec.selector.is_empty()
        && svc
            .spec
            .selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
}

impl Reconciler for EndpointsController {
    fn name(&self) -> &'static str {
        "endpoints"
    }

    fn triggers(&self, change: &CacheChange, cache: &Cache) -> Vec<ObjectRef> {
        if let CacheChange::Reset(kind) = change {
            return match kind {
                Kind::Service | Kind::Endpoints | Kind::Instance => self.all_keys(cache),
                _ => Vec::new(),
            };
        }
        let (old, new) = triggers::states(change);
        let mut keys = Vec::new();
        for object in old.into_iter().chain(new) {
            let m = object.meta();
            match object {
                Object::Service(_) | Object::Endpoints(_) => {
                    keys.push(ObjectRef::new(Kind::Service, &m.namespace, &m.name))
                }
                Object::Instance(_) => {
                    for svc in cache.list_in(Kind::Service, &m.namespace) {
                        if let Object::Service(s) = &svc {
                            if selects(s, &m.labels) {
                                keys.push(ObjectRef::of(&svc));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    fn all_keys(&self, cache: &Cache) -> Vec<ObjectRef> {
        let mut keys = triggers::all(Kind::Service, cache);
        keys.extend(
            cache
                .keys(Kind::Endpoints)
                .into_iter()
                .map(|(ns, name)| ObjectRef::new(Kind::Service, &ns, &name)),
        );
        keys.sort();
        keys.dedup();
        keys
    }

    async fn reconcile(&self, key: &ObjectRef, ctx: &Ctx) -> Result<Action, ReconcileError> {
        let svc = match ctx.cache.get(Kind::Service, &key.namespace, &key.name) {
            Some(Object::Service(s)) => Some(s),
            _ => None,
        };
        let current = match ctx.cache.get(Kind::Endpoints, &key.namespace, &key.name) {
            Some(Object::Endpoints(e)) => Some(e),
            _ => None,
        };
        let instances: Vec<Instance> = match &svc {
            Some(_) => ctx
                .cache
                .list_in(Kind::Instance, &key.namespace)
                .into_iter()
                .filter_map(|o| match o {
                    Object::Instance(i) => Some(i),
                    _ => None,
                })
                .collect(),
            None => Vec::new(),
        };
        execute(ctx, decide(svc.as_ref(), current.as_ref(), &instances)).await
    }
}
