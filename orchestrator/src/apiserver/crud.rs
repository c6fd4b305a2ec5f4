//! The object verbs: get, list, create, update (spec or status), bind, apply
//! and delete. Each is a decision on what the store holds, written through
//! [`ApiServer::guaranteed_update`]; none of them knows which transport
//! carried the request or checks who may make it (the router did).

use flotilla_api::meta::{now_timestamp, FOREGROUND_FINALIZER};
use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::{ApiError, ApplyOutcome, Consistency, ErrorCode, Propagation};

use super::authz::{check_current, Caller, Change};
use super::errors::{parse_revision, validate, ApiResult, Subject};
use super::ipam;
use super::keys::{key_for, namespace_prefix};
use super::stored::{
    decode_object, encode_object, new_uid, scope, ListPage, Selectors, PAGE_BYTES,
};
use super::update::{Attempt, Decision, Freshness};
use super::ApiServer;
use crate::store::{Action, Op, Precondition, Rejection};

impl<T> Decision<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Decision<U> {
        match self {
            Decision::Write {
                action,
                also,
                answer,
            } => Decision::Write {
                action,
                also,
                answer: f(answer),
            },
            Decision::Answer(a) => Decision::Answer(f(a)),
            Decision::Sync => Decision::Sync,
        }
    }
}

/// Stamps the revision a write committed at on the object it wrote.
fn at_revision(mut object: Object, revision: Option<u64>) -> Object {
    if let Some(rev) = revision {
        object.meta_mut().resource_version = rev.to_string();
    }
    object
}

impl ApiServer {
    /// Brings this replica up to date first when the caller asks for a
    /// linearizable read.
    pub(super) async fn barrier(&self, consistency: Consistency) -> ApiResult<()> {
        match consistency {
            Consistency::Linearizable => self.sync().await,
            Consistency::Stale => Ok(()),
        }
    }

    /// Reads one object.
    pub(super) async fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        consistency: Consistency,
    ) -> ApiResult<Object> {
        self.barrier(consistency).await?;
        let ns = scope(kind, namespace);
        self.read(kind, &ns, name)?
            .ok_or_else(|| Subject::object(kind, &ns, name).not_found())
    }

    /// Lists objects of one kind, a page at a time: a node's instances
    /// through the watch hub's index when they fit one page, anything else
    /// by a scan.
    pub(super) async fn list_objects(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        selectors: &Selectors,
        consistency: Consistency,
        (limit, continue_token): (u32, &str),
    ) -> ApiResult<ListPage> {
        self.barrier(consistency).await?;
        if let (Kind::Instance, Some(node), "") = (kind, selectors.1.node_name(), continue_token) {
            if let Some((items, revision, bytes)) =
                self.list_node_instances(node, namespace, selectors).await?
            {
                if (limit == 0 || items.len() <= limit as usize) && bytes <= PAGE_BYTES {
                    return Ok(ListPage {
                        items,
                        revision,
                        continue_token: String::new(),
                    });
                }
            }
        }
        self.list_page(kind, namespace, selectors, limit, continue_token)
    }

    fn prepare_new(&self, mut object: Object) -> ApiResult<Object> {
        object.apply_defaults();
        self.default_limits(&mut object)?;
        let kind = object.kind();
        let meta = object.meta_mut();
        if !kind.namespaced() {
            meta.namespace.clear();
        }
        meta.uid = new_uid();
        meta.creation_timestamp = now_timestamp();
        meta.deletion_timestamp.clear();
        meta.resource_version.clear();
        meta.generation = 1;
        validate(&object)?;
        Ok(object)
    }

    /// The revision of `namespace` if it accepts new objects, read from this
    /// replica; a create then commits only if the namespace is still at it.
    fn namespace_guard(&self, namespace: &str) -> ApiResult<u64> {
        let stored = self
            .read_stored(Kind::Namespace, "", namespace)?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    format!(
                        "namespace \"{namespace}\" not found; create it first (kind: Namespace)"
                    ),
                )
            })?;
        if decode_object(&stored)?.meta().is_being_deleted() {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "namespace \"{namespace}\" is being deleted; nothing new can be created in it"
                ),
            ));
        }
        Ok(stored.mod_revision)
    }

    /// The revision of the controller an object names in its owner
    /// references, if that owner exists with the uid named and is not being
    /// deleted; a create then commits only if the owner is still at it. This
    /// keeps a controller acting on a stale view (its cache saw a dependent
    /// orphaned before it saw the owner deleted) from creating dependents of
    /// an owner that is gone.
    fn controller_guard(&self, object: &Object) -> ApiResult<Option<(String, u64)>> {
        let meta = object.meta();
        let Some((index, owner)) = meta
            .owner_references
            .iter()
            .enumerate()
            .find(|(_, r)| r.controller)
        else {
            return Ok(None);
        };
        let Ok(kind) = Kind::parse(&owner.kind) else {
            return Ok(None);
        };
        let namespace = scope(kind, &meta.namespace);
        let named = format!(
            "{} \"{}\" (uid {}), the controller in metadata.ownerReferences[{index}]",
            kind.as_str(),
            owner.name,
            owner.uid
        );
        let stored = self
            .read_stored(kind, &namespace, &owner.name)?
            .filter(|stored| decode_object(stored).is_ok_and(|o| o.meta().uid == owner.uid))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    format!("{named}, does not exist; a dependent needs a live owner"),
                )
            })?;
        if decode_object(&stored)?.meta().is_being_deleted() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("{named}, is being deleted; it takes no new dependents"),
            ));
        }
        Ok(Some((
            key_for(kind, &namespace, &owner.name),
            stored.mod_revision,
        )))
    }

    /// The create of a prepared object, as one attempt's decision: its
    /// address or range claimed, its namespace guarded, refused when it
    /// exists. `lost_allocation` is kept between attempts: a claim another
    /// create took first is made elsewhere next time.
    fn plan_create(
        &self,
        prepared: &Object,
        attempt: &Attempt<'_>,
        lost_allocation: &mut bool,
    ) -> ApiResult<Decision<Object>> {
        let kind = prepared.kind();
        let (ns, name) = (&prepared.meta().namespace, &prepared.meta().name);
        if attempt.stored.is_some() {
            if !attempt.synced {
                return Ok(Decision::Sync);
            }
            return Err(Subject::object(kind, ns, name).rejected(Rejection::Exists {
                key: key_for(kind, ns, name),
            }));
        }
        if let Some(Rejection::Exists { key }) = attempt.rejected {
            if Self::is_allocation(key) {
                if !unallocated_is_empty(prepared) {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!(
                            "{} \"{name}\": its address or range is already allocated to another object",
                            kind.as_str()
                        ),
                    ));
                }
                *lost_allocation = true;
            }
        }
        let mut object = prepared.clone();
        let mut also = Vec::with_capacity(2);
        also.extend(self.allocate(&mut object, *lost_allocation)?);
        if kind.namespaced() {
            let rev = match self.namespace_guard(ns) {
                Ok(rev) => rev,
                Err(_) if !attempt.synced => return Ok(Decision::Sync),
                Err(e) => return Err(e),
            };
            also.push(Op {
                key: key_for(Kind::Namespace, "", ns),
                precondition: Precondition::ModRevision(rev),
                action: Action::Check,
            });
        }
        match self.charge_quotas(&object) {
            Ok(ops) => also.extend(ops),
            Err(_) if !attempt.synced => return Ok(Decision::Sync),
            Err(e) => return Err(e),
        }
        match self.controller_guard(&object) {
            Ok(Some((key, rev))) => also.push(Op {
                key,
                precondition: Precondition::ModRevision(rev),
                action: Action::Check,
            }),
            Ok(None) => {}
            Err(_) if !attempt.synced => return Ok(Decision::Sync),
            Err(e) => return Err(e),
        }
        Ok(Decision::Write {
            action: Action::Put(encode_object(&object)?),
            also,
            answer: object,
        })
    }

    /// Creates an object.
    pub async fn create(&self, object: Object) -> ApiResult<Object> {
        let prepared = self.prepare_new(object)?;
        let m = prepared.meta();
        let subject = Subject::object(prepared.kind(), &m.namespace, &m.name);
        let mut lost_allocation = false;
        let outcome = self
            .guaranteed_update(&subject, None, Freshness::Lazy, |attempt| {
                self.plan_create(&prepared, &attempt, &mut lost_allocation)
            })
            .await?;
        Ok(at_revision(outcome.answer, outcome.revision))
    }

    /// Replaces spec and metadata (or, with `status`, only the status), with
    /// compare-and-swap on the resourceVersion the object carries.
    pub async fn update(
        &self,
        caller: &Caller,
        mut object: Object,
        status: bool,
    ) -> ApiResult<Object> {
        if !status {
            object.apply_defaults();
        }
        let kind = object.kind();
        let ns = scope(kind, &object.meta().namespace);
        object.meta_mut().namespace = ns.clone();
        let name = object.meta().name.clone();
        let expected = parse_revision(&object.meta().resource_version, "metadata.resourceVersion")?;
        let subject = Subject::object(kind, &ns, &name);
        let outcome = self
            .guaranteed_update(&subject, expected, Freshness::Lazy, |attempt| {
                let Some(stored) = attempt.stored else {
                    return Err(subject.not_found());
                };
                let current = decode_object(stored)?;
                check_current(
                    caller,
                    if status { Change::Status } else { Change::Spec },
                    &current,
                )?;
                let next = if status {
                    let mut next = current.clone();
                    next.copy_status_from(&object);
                    next
                } else {
                    let mut desired = object.clone();
                    ipam::carry_allocations(&current, &mut desired)?;
                    let mut next = merge_update(&current, &desired);
                    mark_bound(&current, &mut next);
                    next
                };
                validate(&next)?;
                let finished =
                    !status && next.meta().is_being_deleted() && next.meta().finalizers.is_empty();
                Ok(if finished {
                    Decision::Write {
                        action: Action::Delete,
                        also: Self::release(&next).into_iter().collect(),
                        answer: next,
                    }
                } else {
                    Decision::Write {
                        action: Action::Put(encode_object(&next)?),
                        also: Vec::new(),
                        answer: next,
                    }
                })
            })
            .await?;
        Ok(at_revision(outcome.answer, outcome.revision))
    }

    /// Binds an unbound instance to a node: the update the scheduler makes,
    /// with only the names on the wire. Compare-and-swap on the
    /// resourceVersion as `update`; returns the bound instance's revision.
    pub async fn bind(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
        node_name: &str,
        resource_version: &str,
    ) -> ApiResult<u64> {
        let kind = Kind::Instance;
        let ns = scope(kind, namespace);
        let expected = parse_revision(resource_version, "resourceVersion")?;
        let subject = Subject::object(kind, &ns, name);
        let outcome = self
            .guaranteed_update(&subject, expected, Freshness::Lazy, |attempt| {
                let Some(stored) = attempt.stored else {
                    return Err(subject.not_found());
                };
                let current = decode_object(stored)?;
                check_current(caller, Change::Spec, &current)?;
                let Object::Instance(mut instance) = current else {
                    return Err(subject.not_found());
                };
                if !instance.spec.node_name.is_empty() {
                    return Err(subject.conflict(&format!(
                        "it is bound to node {} already",
                        instance.spec.node_name
                    )));
                }
                if instance.metadata.is_being_deleted() {
                    return Err(subject.conflict("it is being deleted"));
                }
                instance.bind_to(node_name);
                let next = Object::Instance(instance);
                validate(&next)?;
                Ok(Decision::Write {
                    action: Action::Put(encode_object(&next)?),
                    also: Vec::new(),
                    answer: (),
                })
            })
            .await?;
        outcome
            .revision
            .ok_or_else(|| subject.conflict("the bind wrote nothing"))
    }

    /// Creates the object, or updates it if its desired state differs.
    pub async fn apply(
        &self,
        caller: &Caller,
        object: Object,
    ) -> ApiResult<(Object, ApplyOutcome)> {
        let mut object = object;
        object.apply_defaults();
        let kind = object.kind();
        let ns = scope(kind, &object.meta().namespace);
        object.meta_mut().namespace = ns.clone();
        let name = object.meta().name.clone();
        validate(&object)?;
        let subject = Subject::object(kind, &ns, &name);
        let mut prepared = None;
        let mut lost_allocation = false;
        let outcome = self
            .guaranteed_update(&subject, None, Freshness::Synced, |attempt| {
                let Some(stored) = attempt.stored else {
                    if prepared.is_none() {
                        prepared = Some(self.prepare_new(object.clone())?);
                    }
                    let new = prepared.as_ref().expect("prepared above");
                    let plan = self.plan_create(new, &attempt, &mut lost_allocation)?;
                    return Ok(plan.map(|o| (o, ApplyOutcome::Created)));
                };
                let current = decode_object(stored)?;
                check_current(caller, Change::Spec, &current)?;
                let mut desired = object.clone();
                desired.meta_mut().resource_version.clear();
                // As at its create, so a manifest applied again is unchanged.
                self.default_limits(&mut desired)?;
                // A manifest that names no node keeps the binding the scheduler made.
                if let (Object::Instance(d), Object::Instance(c)) = (&mut desired, &current) {
                    if d.spec.node_name.is_empty() {
                        d.spec.node_name = c.spec.node_name.clone();
                    }
                }
                ipam::carry_allocations(&current, &mut desired)?;
                if current.same_desired_state(&desired) {
                    return Ok(Decision::Answer((current, ApplyOutcome::Unchanged)));
                }
                let next = merge_update(&current, &desired);
                validate(&next)?;
                Ok(Decision::Write {
                    action: Action::Put(encode_object(&next)?),
                    also: Vec::new(),
                    answer: (next, ApplyOutcome::Configured),
                })
            })
            .await?;
        let (object, applied) = outcome.answer;
        Ok((at_revision(object, outcome.revision), applied))
    }

    /// Deletes an object, or marks it deleting while finalizers remain.
    pub async fn delete(
        &self,
        caller: &Caller,
        kind: Kind,
        namespace: &str,
        name: &str,
        resource_version: &str,
        propagation: Propagation,
    ) -> ApiResult<(Object, bool)> {
        let expected = parse_revision(resource_version, "resourceVersion")?;
        if kind == Kind::Namespace {
            return self.delete_namespace(name, expected).await;
        }
        let subject = Subject::object(kind, namespace, name);
        let outcome = self
            .guaranteed_update(&subject, expected, Freshness::Synced, |attempt| {
                let Some(stored) = attempt.stored else {
                    return Err(subject.not_found());
                };
                let current = decode_object(stored)?;
                check_current(caller, Change::Spec, &current)?;
                let foreground = propagation == Propagation::Foreground && kind.owns_instances();
                if !current.meta().finalizers.is_empty() || foreground {
                    if current.meta().is_being_deleted() {
                        return Ok(Decision::Answer((current, false)));
                    }
                    let mut marked = current;
                    marked.meta_mut().deletion_timestamp = now_timestamp();
                    if foreground && !marked.meta().has_finalizer(FOREGROUND_FINALIZER) {
                        marked
                            .meta_mut()
                            .finalizers
                            .push(FOREGROUND_FINALIZER.to_string());
                    }
                    return Ok(Decision::Write {
                        action: Action::Put(encode_object(&marked)?),
                        also: Vec::new(),
                        answer: (marked, false),
                    });
                }
                let mut also: Vec<Op> = Self::release(&current).into_iter().collect();
                if propagation == Propagation::Orphan {
                    also.extend(self.orphan_ops(namespace, &current.meta().uid)?);
                }
                Ok(Decision::Write {
                    action: Action::Delete,
                    also,
                    answer: (current, true),
                })
            })
            .await?;
        let (object, gone) = outcome.answer;
        // A deleted object is answered with its last state, at the revision
        // it had; a marked one at the revision of the mark.
        Ok(if gone {
            (object, true)
        } else {
            (at_revision(object, outcome.revision), false)
        })
    }

    /// Writes that drop references to the owner with `uid` from the instances
    /// of `namespace`, committed with the owner's delete so no collector sees
    /// them ownerless in between.
    fn orphan_ops(&self, namespace: &str, uid: &str) -> ApiResult<Vec<Op>> {
        let prefix = namespace_prefix(Kind::Instance, namespace);
        let mut ops = Vec::new();
        for (key, stored) in self
            .store
            .reader()
            .scan(&prefix)
            .map_err(super::errors::internal)?
        {
            let mut obj = decode_object(&stored)?;
            let refs = &mut obj.meta_mut().owner_references;
            let before = refs.len();
            refs.retain(|r| r.uid != uid);
            if refs.len() != before {
                ops.push(Op {
                    key,
                    precondition: Precondition::ModRevision(stored.mod_revision),
                    action: Action::Put(encode_object(&obj)?),
                });
            }
        }
        Ok(ops)
    }

    /// Creates a namespace if it does not exist (used for `default` at start).
    pub async fn ensure_namespace(&self, name: &str) -> ApiResult<()> {
        let ns = Object::new_empty(Kind::Namespace, "", name);
        match self.create(ns).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == ErrorCode::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// True when the object asked for no particular address or range.
fn unallocated_is_empty(object: &Object) -> bool {
    match object {
        Object::Node(n) => n.spec.instance_cidr.is_empty(),
        Object::Service(s) => s.spec.cluster_ip.is_empty(),
        _ => true,
    }
}

/// An instance given a node by this update is marked Scheduled in the same
/// write, as Kubernetes' binding does.
fn mark_bound(current: &Object, next: &mut Object) {
    if let (Object::Instance(before), Object::Instance(after)) = (current, next) {
        if before.spec.node_name.is_empty() && !after.spec.node_name.is_empty() {
            let node = after.spec.node_name.clone();
            after.bind_to(&node);
        }
    }
}

/// The object an update stores: the caller's spec and user metadata over the
/// current object's server-owned fields and status; the generation moves
/// when the spec does.
fn merge_update(current: &Object, desired: &Object) -> Object {
    let mut next = current.clone();
    next.copy_spec_from(desired);
    {
        let d = desired.meta();
        let m = next.meta_mut();
        m.labels = d.labels.clone();
        m.annotations = d.annotations.clone();
        m.owner_references = d.owner_references.clone();
        m.finalizers = d.finalizers.clone();
    }
    let mut probe = current.clone();
    probe.copy_spec_from(desired);
    if probe != *current {
        next.meta_mut().generation = current.meta().generation + 1;
    }
    next
}
