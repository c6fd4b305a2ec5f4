//! Garbage collection through ownerReferences. Background: an instance whose
//! every owner is gone is deleted. Foreground: an owner being deleted with the
//! `foregroundDeletion` finalizer has its dependents deleted first, then loses
//! the finalizer, and the apiserver removes it. Orphaning is done by the
//! apiserver in the delete itself.
//!
//! Keyed by instance (are its owners gone?) and by owner (is a foreground
//! deletion done?). A new instance or a change of its owner references, the
//! removal of an owner, and an owner marked for foreground deletion concern
//! it.

use std::time::Duration;

use flotilla_api::instance::Instance;
use flotilla_api::meta::{OwnerReference, FOREGROUND_FINALIZER};
use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::ErrorCode;

use super::runtime::{Action, Ctx, ObjectRef, ReconcileError, Reconciler};
use super::triggers;
use super::writes::{execute, Plan, Write};
use crate::informer::{Cache, CacheChange};

/// The kinds that own instances.
const OWNERS: [Kind; 3] = [Kind::Deployment, Kind::DaemonSet, Kind::Job];

/// What the collector decides for an instance read from the API: delete it,
/// at the version read, when every owner it names is confirmed gone. A
/// conflict means it changed since (an orphaning delete of its owner drops
/// the references in the same write), so it is looked at again shortly.
pub fn decide_orphan(instance: &Instance, owners_gone: bool) -> Plan {
    let mut plan = Plan::nothing();
    let refs = &instance.metadata.owner_references;
    if !refs.is_empty() && !instance.metadata.is_being_deleted() && owners_gone {
        plan.writes
            .push(Write::Delete(Object::Instance(instance.clone())));
        plan.action = Action::requeue(RECHECK_AFTER_CONFLICT);
    }
    plan
}

/// How soon an instance whose delete met a newer version is looked at again.
const RECHECK_AFTER_CONFLICT: Duration = Duration::from_secs(1);

/// What the collector decides for an owner being deleted in the foreground:
/// delete its dependents (`owned`, being deleted or not), and once none is
/// left, drop the finalizer.
pub fn decide_foreground(owner: &Object, owned: &[Instance]) -> Plan {
    let mut plan = Plan::nothing();
    let meta = owner.meta();
    if !meta.is_being_deleted() || !meta.has_finalizer(FOREGROUND_FINALIZER) {
        return plan;
    }
    for i in owned.iter().filter(|i| !i.metadata.is_being_deleted()) {
        plan.writes.push(Write::DeleteInstance(i.clone()));
    }
    if owned.is_empty() {
        let mut next = owner.clone();
        next.meta_mut()
            .finalizers
            .retain(|f| f != FOREGROUND_FINALIZER);
        plan.writes.push(Write::Update(next));
    }
    plan
}

/// Whether the cache holds the owner a reference names (same uid).
fn owner_held(cache: &Cache, namespace: &str, r: &OwnerReference) -> bool {
    let Ok(kind) = Kind::parse(&r.kind) else {
        return false;
    };
    cache
        .get(kind, namespace, &r.name)
        .is_some_and(|o| o.meta().uid == r.uid)
}

/// True when the owner is confirmed gone through the API (not just missing
/// from the cache).
async fn owner_gone(
    ctx: &Ctx,
    namespace: &str,
    r: &OwnerReference,
) -> Result<bool, ReconcileError> {
    let Ok(kind) = Kind::parse(&r.kind) else {
        return Ok(false);
    };
    match ctx.client.get(kind, namespace, &r.name).await {
        Ok(o) => Ok(o.meta().uid != r.uid),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

fn foreground(o: &Object) -> bool {
    o.meta().is_being_deleted() && o.meta().has_finalizer(FOREGROUND_FINALIZER)
}

/// The garbage collector.
pub struct GarbageCollector;

impl Reconciler for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbage-collector"
    }

    fn triggers(&self, change: &CacheChange, cache: &Cache) -> Vec<ObjectRef> {
        let mut keys = Vec::new();
        match change {
            CacheChange::Reset(kind) if *kind == Kind::Instance || OWNERS.contains(kind) => {
                return self.all_keys(cache)
            }
            CacheChange::Reset(_) => {}
            CacheChange::Upserted { old, new } => match new {
                Object::Instance(i) => {
                    let refs_changed = old
                        .as_ref()
                        .is_none_or(|o| o.meta().owner_references != i.metadata.owner_references);
                    if refs_changed && !i.metadata.owner_references.is_empty() {
                        keys.push(ObjectRef::of(new));
                    }
                }
                o if OWNERS.contains(&o.kind()) && foreground(o) => keys.push(ObjectRef::of(o)),
                _ => {}
            },
            CacheChange::Removed(old) => match old {
                // A dependent gone may finish its owner's foreground deletion.
                Object::Instance(_) => {
                    for kind in OWNERS {
                        keys.extend(triggers::owners_of(kind, old));
                    }
                }
                o if OWNERS.contains(&o.kind()) => {
                    keys.extend(cache.owned_by(&o.meta().uid).iter().map(|i| {
                        ObjectRef::new(Kind::Instance, &i.metadata.namespace, &i.metadata.name)
                    }))
                }
                _ => {}
            },
        }
        keys
    }

    fn all_keys(&self, cache: &Cache) -> Vec<ObjectRef> {
        let mut keys: Vec<ObjectRef> = cache
            .list(Kind::Instance)
            .iter()
            .filter(|o| !o.meta().owner_references.is_empty())
            .map(ObjectRef::of)
            .collect();
        for kind in OWNERS {
            keys.extend(
                cache
                    .list(kind)
                    .iter()
                    .filter(|o| foreground(o))
                    .map(ObjectRef::of),
            );
        }
        keys
    }

    async fn reconcile(&self, key: &ObjectRef, ctx: &Ctx) -> Result<Action, ReconcileError> {
        let Some(object) = ctx.cache.get(key.kind, &key.namespace, &key.name) else {
            return Ok(Action::await_change());
        };
        let plan = match &object {
            Object::Instance(i) => {
                let refs = &i.metadata.owner_references;
                let held = refs
                    .iter()
                    .any(|r| owner_held(&ctx.cache, &i.metadata.namespace, r));
                if refs.is_empty() || held || i.metadata.is_being_deleted() {
                    return Ok(Action::await_change());
                }
                // The cache watches each kind on its own stream, so an
                // owner's delete can arrive before the write that orphaned
                // this instance with it: decide on the instance as stored.
                let live = match ctx
                    .client
                    .get(Kind::Instance, &i.metadata.namespace, &i.metadata.name)
                    .await
                {
                    Ok(Object::Instance(live)) if live.metadata.uid == i.metadata.uid => live,
                    Ok(_) => return Ok(Action::await_change()),
                    Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                        return Ok(Action::await_change())
                    }
                    Err(e) => return Err(e.into()),
                };
                let mut all_gone = true;
                for r in &live.metadata.owner_references {
                    if !owner_gone(ctx, &live.metadata.namespace, r).await? {
                        all_gone = false;
                        break;
                    }
                }
                decide_orphan(&live, all_gone)
            }
            owner => decide_foreground(owner, &ctx.cache.owned_by(&owner.meta().uid)),
        };
        execute(ctx, plan).await
    }
}
