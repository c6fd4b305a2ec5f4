//! What a controller's decision asks for, as data: a [`Plan`] of [`Write`]s
//! and when to look again. Deciding is pure (a function of the cache's
//! snapshot of one key, unit-tested as a table); [`execute`] makes the writes
//! through the API, one call each, and records them in the cache so the next
//! decision does not make them again while their watch events are on their
//! way.

use flotilla_api::deployment::LABEL_TEMPLATE_HASH;
use flotilla_api::event::EventType;
use flotilla_api::instance::{Instance, InstanceTemplate};
use flotilla_api::meta::{ObjectMeta, OwnerReference};
use flotilla_api::module::Module;
use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::{ErrorCode, Propagation, RequestV1};
use flotilla_client::ClientError;
use rand::Rng;

use super::runtime::{Action, Ctx, ReconcileError};
use crate::informer::Cache;

/// One write a decision asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Create this instance.
    CreateInstance(Instance),
    /// Delete this instance; one already gone counts as deleted.
    DeleteInstance(Instance),
    /// Write an object's status; a conflict or a vanished object is left to
    /// the next run, which sees the newer state.
    Status(Object),
    /// Write an object's spec and metadata with compare-and-swap on the
    /// version held; a conflict or a vanished object is left likewise.
    Update(Object),
    /// Create an object; one that exists already counts as created.
    Create(Object),
    /// Delete an object, at the version held when it has one (an object
    /// changed since stays); one already gone counts as deleted.
    Delete(Object),
    /// Record an event about an object.
    Event {
        /// The kind of the object.
        kind: Kind,
        /// Its metadata.
        about: ObjectMeta,
        /// Normal or Warning.
        type_: EventType,
        /// A CamelCase reason.
        reason: String,
        /// What happened.
        message: String,
    },
}

impl Write {
    /// An event about `about`.
    pub fn event(
        kind: Kind,
        about: &ObjectMeta,
        type_: EventType,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Write::Event {
            kind,
            about: about.clone(),
            type_,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// A decision: the writes to make, in order, and when to look again.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The writes.
    pub writes: Vec<Write>,
    /// After the writes.
    pub action: Action,
    /// Why part of what the object asks for cannot be done now (the writes
    /// still happen; the reconcile then counts as failed and is retried).
    pub blocked: Option<String>,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            writes: Vec::new(),
            action: Action::AwaitChange,
            blocked: None,
        }
    }
}

impl Plan {
    /// Nothing to do until a change.
    pub fn nothing() -> Self {
        Self::default()
    }
}

/// An owner reference to the controlling object.
pub(super) fn owner_ref(kind: Kind, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: flotilla_api::object::API_VERSION.to_string(),
        kind: kind.as_str().to_string(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        controller: true,
        block_owner_deletion: true,
    }
}

/// A new instance name `<prefix>-<5 random>`, at most 63 characters.
pub(super) fn instance_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    let prefix: String = prefix.chars().take(57).collect();
    format!("{}-{suffix}", prefix.trim_end_matches('-'))
}

/// A new instance from `template`, owned by the object (`kind`, `owner`),
/// bound to `node_name` when given (a DaemonSet's).
pub(super) fn new_instance(
    kind: Kind,
    owner: &ObjectMeta,
    template: &InstanceTemplate,
    name_prefix: &str,
    node_name: Option<&str>,
) -> Instance {
    let mut meta = ObjectMeta::new(&owner.namespace, &instance_name(name_prefix));
    meta.labels = template.metadata.labels.clone();
    meta.labels
        .insert(LABEL_TEMPLATE_HASH.to_string(), template.template_hash());
    meta.annotations = template.metadata.annotations.clone();
    meta.owner_references = vec![owner_ref(kind, owner)];
    let mut spec = template.spec.clone();
    if let Some(node) = node_name {
        spec.node_name = node.to_string();
    }
    Instance {
        metadata: meta,
        spec,
        status: Default::default(),
    }
}

/// Whether the module a template names can be had: a digest must have been
/// uploaded (its Module object is in the cache); anything else is not the
/// controllers' to judge.
pub(super) fn module_uploaded(cache: &Cache, module: &str) -> bool {
    !flotilla_api::module::is_valid_digest(module)
        || cache.contains(Kind::Module, "", &Module::name_for_digest(module))
}

/// The message for a template whose module was never uploaded.
pub(super) fn module_missing(kind: Kind, name: &str, module: &str) -> String {
    format!(
        "{kind} \"{name}\": module {module} (spec.template.spec.module) has not been uploaded; `flotilla apply` uploads a local .wasm file and writes its digest"
    )
}

fn tolerated(e: &ClientError, codes: &[ErrorCode]) -> bool {
    e.code().is_some_and(|c| codes.contains(&c))
}

/// Makes the writes in order; the first that fails in a way the next run
/// would not mend stops the rest and is the reconcile's error.
pub async fn execute(ctx: &Ctx, plan: Plan) -> Result<Action, ReconcileError> {
    let Plan {
        writes,
        action,
        blocked,
    } = plan;
    for write in writes {
        execute_one(ctx, write).await?;
    }
    match blocked {
        Some(why) => Err(ReconcileError::Blocked(why)),
        None => Ok(action),
    }
}

async fn execute_one(ctx: &Ctx, write: Write) -> Result<(), ClientError> {
    let client = &ctx.client;
    match write {
        Write::CreateInstance(instance) => {
            // NotFound and Conflict say the owner is gone or going: the
            // change that says so is on its way to the cache.
            match client.create(Object::Instance(instance)).await {
                Ok(created) => ctx.cache.wrote(created),
                Err(e) if tolerated(&e, &[ErrorCode::NotFound, ErrorCode::Conflict]) => {}
                Err(e) => return Err(e),
            }
        }
        Write::DeleteInstance(i) => {
            let deleted = client
                .delete(
                    Kind::Instance,
                    &i.metadata.namespace,
                    &i.metadata.name,
                    Propagation::Background,
                )
                .await;
            match deleted {
                Ok(_) => {}
                Err(e) if tolerated(&e, &[ErrorCode::NotFound]) => {}
                Err(e) => return Err(e),
            }
            ctx.cache.removed(&Object::Instance(i));
        }
        Write::Status(mut object) => {
            object.meta_mut().resource_version.clear();
            match client.update_status(object).await {
                Ok(o) => ctx.cache.wrote(o),
                Err(e) if tolerated(&e, &[ErrorCode::NotFound, ErrorCode::Conflict]) => {}
                Err(e) => return Err(e),
            }
        }
        Write::Update(object) => match client.update(object).await {
            Ok(o) => ctx.cache.wrote(o),
            Err(e) if tolerated(&e, &[ErrorCode::NotFound, ErrorCode::Conflict]) => {}
            Err(e) => return Err(e),
        },
        Write::Create(object) => match client.create(object).await {
            Ok(o) => ctx.cache.wrote(o),
            Err(e) if tolerated(&e, &[ErrorCode::AlreadyExists]) => {}
            Err(e) => return Err(e),
        },
        Write::Delete(object) => {
            let meta = object.meta();
            let deleted = client
                .call(RequestV1::Delete {
                    kind: object.kind(),
                    namespace: meta.namespace.clone(),
                    name: meta.name.clone(),
                    resource_version: meta.resource_version.clone(),
                    propagation: Propagation::Background,
                })
                .await;
            match deleted {
                Ok(_) => ctx.cache.removed(&object),
                Err(e) if tolerated(&e, &[ErrorCode::NotFound, ErrorCode::Conflict]) => {}
                Err(e) => return Err(e),
            }
        }
        Write::Event {
            kind,
            about,
            type_,
            reason,
            message,
        } => {
            ctx.recorder
                .record(client, kind, &about, type_, &reason, &message)
                .await;
        }
    }
    Ok(())
}
