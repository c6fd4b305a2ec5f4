//! Which keys a cache change concerns, the mappings several controllers
//! share: an object of the controller's own kind concerns itself; an
//! instance concerns the owner it names, of that kind; a relist of either
//! concerns everything of that kind.

use flotilla_api::object::{Kind, Object};

use super::runtime::ObjectRef;
use crate::informer::{Cache, CacheChange};

/// Every object of `kind` in the cache.
pub(super) fn all(kind: Kind, cache: &Cache) -> Vec<ObjectRef> {
    cache
        .keys(kind)
        .into_iter()
        .map(|(ns, name)| ObjectRef::new(kind, &ns, &name))
        .collect()
}

/// The owners of kind `kind` that `object` (an instance) names.
pub(super) fn owners_of(kind: Kind, object: &Object) -> impl Iterator<Item = ObjectRef> + '_ {
    let meta = object.meta();
    meta.owner_references
        .iter()
        .filter(move |r| r.kind == kind.as_str())
        .map(move |r| ObjectRef::new(kind, &meta.namespace, &r.name))
}

/// The objects a change concerns, as states before and after.
pub(super) fn states(change: &CacheChange) -> (Option<&Object>, Option<&Object>) {
    match change {
        CacheChange::Reset(_) => (None, None),
        CacheChange::Upserted { old, new } => (old.as_ref(), Some(new)),
        CacheChange::Removed(old) => (Some(old), None),
    }
}

/// A controller of `kind` that owns instances: a change of one of its own
/// objects concerns that object; a change of an instance concerns the owner
/// it names now or named before; a Module change concerns those whose
/// template names it; a relist of its kind, of instances or of modules
/// concerns all of them.
pub(super) fn owner_or_self(kind: Kind, change: &CacheChange, cache: &Cache) -> Vec<ObjectRef> {
    if let CacheChange::Reset(k) = change {
        return if *k == kind || *k == Kind::Instance || *k == Kind::Module {
            all(kind, cache)
        } else {
            Vec::new()
        };
    }
    let (old, new) = states(change);
    let mut keys = Vec::new();
    for object in old.into_iter().chain(new) {
        match object.kind() {
            k if k == kind => keys.push(ObjectRef::of(object)),
            Kind::Instance => keys.extend(owners_of(kind, object)),
            Kind::Module => {
                if let Object::Module(m) = object {
                    keys.extend(templates_naming(kind, &m.spec.digest, cache));
                }
            }
            _ => {}
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// The objects of `kind` whose template names module `digest`.
fn templates_naming(kind: Kind, digest: &str, cache: &Cache) -> Vec<ObjectRef> {
    cache
        .list(kind)
        .iter()
        .filter(|o| {
            let module = match o {
                Object::Deployment(d) => &d.spec.template.spec.module,
                Object::DaemonSet(d) => &d.spec.template.spec.module,
                Object::Job(j) => &j.spec.template.spec.module,
                _ => return false,
            };
            module == digest
        })
        .map(ObjectRef::of)
        .collect()
}
