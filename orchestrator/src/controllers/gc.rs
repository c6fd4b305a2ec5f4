//! Garbage collection through ownerReferences. Background: an instance whose
//! every owner is gone is deleted. Foreground: an owner being deleted with the
//! `foregroundDeletion` finalizer has its dependents deleted first, then loses
//! the finalizer, and the apiserver removes it. Orphaning is done by the
//! apiserver in the delete itself.

use std::collections::HashSet;

use flotilla_api::meta::{ObjectMeta, OwnerReference, FOREGROUND_FINALIZER};
use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::ErrorCode;
use flotilla_client::ClientError;

use super::{Ctx, Snapshot};

/// True when the owner is confirmed gone (not just missing from the cache).
async fn owner_gone(ctx: &Ctx, namespace: &str, r: &OwnerReference) -> Result<bool, ClientError> {
    let Ok(kind) = Kind::parse(&r.kind) else {
        return Ok(false);
    };
    match ctx.client.get(kind, namespace, &r.name).await {
        Ok(o) => Ok(o.meta().uid != r.uid),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(true),
        Err(e) => Err(e),
    }
}

pub(super) async fn reconcile(ctx: &Ctx, snap: &Snapshot) -> Result<(), ClientError> {
    let mut owners: HashSet<&str> = HashSet::new();
    let mut foreground: Vec<(&ObjectMeta, Object)> = Vec::new();
    for d in &snap.deployments {
        owners.insert(&d.metadata.uid);
        if d.metadata.is_being_deleted() && d.metadata.has_finalizer(FOREGROUND_FINALIZER) {
            foreground.push((&d.metadata, Object::Deployment(d.clone())));
        }
    }
    for d in &snap.daemonsets {
        owners.insert(&d.metadata.uid);
        if d.metadata.is_being_deleted() && d.metadata.has_finalizer(FOREGROUND_FINALIZER) {
            foreground.push((&d.metadata, Object::DaemonSet(d.clone())));
        }
    }
    for j in &snap.jobs {
        owners.insert(&j.metadata.uid);
        if j.metadata.is_being_deleted() && j.metadata.has_finalizer(FOREGROUND_FINALIZER) {
            foreground.push((&j.metadata, Object::Job(j.clone())));
        }
    }
    for i in &snap.instances {
        let refs = &i.metadata.owner_references;
        if refs.is_empty() || i.metadata.is_being_deleted() {
            continue;
        }
        if refs.iter().any(|r| owners.contains(r.uid.as_str())) {
            continue;
        }
        let mut all_gone = true;
        for r in refs {
            if !owner_gone(ctx, &i.metadata.namespace, r).await? {
                all_gone = false;
                break;
            }
        }
        if all_gone {
            ctx.delete_instance(i).await?;
        }
    }
    for (meta, object) in foreground {
        let dependents = snap.owned(&meta.uid);
        for i in &dependents {
            ctx.delete_instance(i).await?;
        }
        let waiting = snap.by_owner.get(&meta.uid).is_some_and(|v| !v.is_empty());
        if !waiting {
            let mut next = object;
            next.meta_mut()
                .finalizers
                .retain(|f| f != FOREGROUND_FINALIZER);
            ctx.write(next).await?;
        }
    }
    Ok(())
}
