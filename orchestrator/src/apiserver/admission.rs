//! Admission of new objects by their namespace's limits (Kubernetes'
//! LimitRanger and ResourceQuota admission): an instance that sets no
//! limits gets the namespace's LimitRange defaults, and a create that would
//! take a namespace past a ResourceQuota is refused, naming the quota, the
//! use and the cap.
//!
//! A create a quota admits also rewrites the quota's status (the use, this
//! create included) under compare-and-swap on the quota's revision, so two
//! creates racing for the last slot cannot both commit: the second is
//! retried on a fresh view and refused.
//!
//! Which namespaces have quotas or ranges at all is held in memory
//! ([`Limited`]), so a create elsewhere reads nothing more; like
//! Kubernetes' admission plugins, which read informer caches, a quota takes
//! effect once this peer has applied it and its cache has seen it (a moment
//! later).

use std::collections::HashSet;

use flotilla_api::object::{Kind, Object};
use flotilla_api::quota::{cap_amount, ResourceQuota, Usage, LIMITS_CPU, LIMITS_MEMORY};
use flotilla_client::wire::{ApiError, ErrorCode};

use super::errors::{internal, ApiResult};
use super::keys::{key_for, kind_prefix, namespace_prefix};
use super::stored::{decode_object, encode_object};
use super::ApiServer;
use crate::store::state_machine::StateReader;
use crate::store::{Action, Op, Precondition};

/// The top segments ResourceQuotas and LimitRanges are stored under.
pub const LIMIT_TOPS: [&str; 2] = ["resourcequotas", "limitranges"];

/// The namespaces that have a ResourceQuota, and those that have a
/// LimitRange.
#[derive(Debug, Default)]
pub struct Limited {
    quotas: HashSet<String>,
    ranges: HashSet<String>,
}

/// The namespace of each key under `kind` in `reader`.
fn namespaces_of(reader: &StateReader, kind: Kind) -> std::io::Result<HashSet<String>> {
    let prefix = kind_prefix(kind);
    Ok(reader
        .scan(&prefix)?
        .into_iter()
        .filter_map(|(key, _)| {
            key.strip_prefix(&prefix)
                .and_then(|rest| rest.split('/').next())
                .map(str::to_string)
        })
        .collect())
}

/// [`Limited`] as stored in `reader`.
pub fn read_limited(reader: &StateReader) -> std::io::Result<Limited> {
    Ok(Limited {
        quotas: namespaces_of(reader, Kind::ResourceQuota)?,
        ranges: namespaces_of(reader, Kind::LimitRange)?,
    })
}

impl ApiServer {
    /// Every object of `kind` in `namespace`, as this replica has them.
    fn objects_in(&self, kind: Kind, namespace: &str) -> ApiResult<Vec<Object>> {
        let items = self
            .store
            .reader()
            .scan(&namespace_prefix(kind, namespace))
            .map_err(internal)?;
        Ok(items
            .into_iter()
            .filter_map(|(_, stored)| decode_object(&stored).ok())
            .collect())
    }

    /// Gives a new instance its namespace's defaults for the limits and
    /// requests it leaves unset.
    pub(super) fn default_limits(&self, object: &mut Object) -> ApiResult<()> {
        let Object::Instance(instance) = object else {
            return Ok(());
        };
        let namespace = instance.metadata.namespace.clone();
        if !self.limited.current().ranges.contains(&namespace) {
            return Ok(());
        }
        for range in self.objects_in(Kind::LimitRange, &namespace)? {
            if let Object::LimitRange(range) = range {
                range.default_instance(instance);
            }
        }
        Ok(())
    }

    /// The ops that charge a new `object` to its namespace's quotas, or why
    /// it does not fit.
    pub(super) fn charge_quotas(&self, object: &Object) -> ApiResult<Vec<Op>> {
        let (namespace, added, counted) = match object {
            Object::Instance(i) => (&i.metadata.namespace, Usage::of_instance(i), Kind::Instance),
            Object::Service(s) => (
                &s.metadata.namespace,
                Usage {
                    services: 1,
                    ..Usage::default()
                },
                Kind::Service,
            ),
            _ => return Ok(Vec::new()),
        };
        if !self.limited.current().quotas.contains(namespace.as_str()) {
            return Ok(Vec::new());
        }
        let quotas = self.read_quotas(namespace)?;
        if quotas.is_empty() {
            return Ok(Vec::new());
        }
        let mut used = Usage::default();
        for o in self.objects_in(counted, namespace)? {
            match &o {
                Object::Instance(i) if !i.metadata.is_being_deleted() => {
                    used = used.plus(&Usage::of_instance(i))
                }
                Object::Service(_) => used.services += 1,
                _ => {}
            }
        }
        let after = used.plus(&added);
        let mut ops = Vec::with_capacity(quotas.len());
        for (mut quota, revision) in quotas {
            let name = quota.metadata.name.clone();
            for (resource, cap) in &quota.spec.hard {
                let relevant = match counted {
                    Kind::Instance => resource != flotilla_api::quota::SERVICES,
                    _ => resource == flotilla_api::quota::SERVICES,
                };
                if !relevant {
                    continue;
                }
                if let Object::Instance(i) = object {
                    let limits = &i.spec.resources.limits;
                    let unset = (resource == LIMITS_CPU && limits.cpu.is_none())
                        || (resource == LIMITS_MEMORY && limits.memory.is_none());
                    if unset {
                        return Err(ApiError::new(
                            ErrorCode::Forbidden,
                            format!(
                                "forbidden: failed quota {name:?} in namespace {namespace:?}: it caps {resource}, so the instance must set spec.resources.{resource} (or the namespace needs a LimitRange default)"
                            ),
                        ));
                    }
                }
                if after.amount(resource) > cap_amount(resource, cap) {
                    return Err(ApiError::new(
                        ErrorCode::Forbidden,
                        format!(
                            "forbidden: exceeded quota {name:?} in namespace {namespace:?}: requested {resource}={}, used {resource}={}, limited {resource}={}",
                            added.quantity(resource).as_str(),
                            used.quantity(resource).as_str(),
                            cap.as_str()
                        ),
                    ));
                }
            }
            quota.status.hard = quota.spec.hard.clone();
            quota.status.used = quota
                .spec
                .hard
                .keys()
                .map(|r| (r.clone(), after.quantity(r)))
                .collect();
            quota.metadata.resource_version.clear();
            ops.push(Op {
                key: key_for(Kind::ResourceQuota, namespace, &name),
                precondition: Precondition::ModRevision(revision),
                action: Action::Put(encode_object(&Object::ResourceQuota(quota))?),
            });
        }
        Ok(ops)
    }

    /// The quotas of `namespace`, with the revision each was read at.
    fn read_quotas(&self, namespace: &str) -> ApiResult<Vec<(ResourceQuota, u64)>> {
        let items = self
            .store
            .reader()
            .scan(&namespace_prefix(Kind::ResourceQuota, namespace))
            .map_err(internal)?;
        let mut out = Vec::new();
        for (_, stored) in items {
            if let Ok(Object::ResourceQuota(q)) = decode_object(&stored) {
                out.push((q, stored.mod_revision));
            }
        }
        Ok(out)
    }
}
