//! Deleting a namespace: it is marked Terminating (nothing new can be created
//! in it), everything in it is deleted, then the namespace itself. Objects
//! held by finalizers keep it Terminating; the next delete picks up where
//! this one stopped.

use flotilla_api::meta::now_timestamp;
use flotilla_api::namespace::NamespacePhase;
use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::{ApiError, ErrorCode};

use super::errors::{internal, ApiResult, Subject};
use super::keys::namespace_prefix;
use super::stored::{decode_object, encode_object};
use super::update::{Decision, Freshness};
use super::ApiServer;
use crate::store::{Action, Op, Precondition};

/// Deletes within one commit, so a large namespace is emptied in steps the
/// store takes without stalling.
const OPS_PER_COMMIT: usize = 256;

impl ApiServer {
    /// Deletes the namespace `name` (at resourceVersion `expected` when
    /// given): returns its last state and whether it is gone.
    pub(super) async fn delete_namespace(
        &self,
        name: &str,
        expected: Option<u64>,
    ) -> ApiResult<(Object, bool)> {
        if name == flotilla_api::namespace::DEFAULT_NAMESPACE {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "namespace \"default\" cannot be deleted",
            ));
        }
        let subject = Subject::object(Kind::Namespace, "", name);
        let outcome = self
            .guaranteed_update(&subject, expected, Freshness::Synced, |attempt| {
                let Some(stored) = attempt.stored else {
                    return Err(subject.not_found());
                };
                let current = decode_object(stored)?;
                if current.meta().is_being_deleted() {
                    return Ok(Decision::Answer((current, stored.mod_revision)));
                }
                let mut marked = current;
                marked.meta_mut().deletion_timestamp = now_timestamp();
                if let Object::Namespace(ns) = &mut marked {
                    ns.status.phase = NamespacePhase::Terminating;
                }
                Ok(Decision::Write {
                    action: Action::Put(encode_object(&marked)?),
                    also: Vec::new(),
                    answer: (marked, 0),
                })
            })
            .await?;
        let (mut marked, held_at) = outcome.answer;
        let ns_revision = outcome.revision.unwrap_or(held_at);
        let remaining = self.empty_namespace(name).await?;
        if remaining > 0 {
            marked.meta_mut().resource_version = ns_revision.to_string();
            return Ok((marked, false));
        }
        let op = Op {
            key: subject.key.clone(),
            precondition: Precondition::ModRevision(ns_revision),
            action: Action::Delete,
        };
        match self.commit(vec![op]).await? {
            Ok(_) => Ok((marked, true)),
            Err(r) => Err(subject.rejected(r)),
        }
    }

    /// Deletes what is in a namespace; returns how many objects remain
    /// (held by finalizers, or changed while this ran).
    async fn empty_namespace(&self, name: &str) -> ApiResult<usize> {
        let mut remaining = 0usize;
        for kind in Kind::ALL.into_iter().filter(|k| k.namespaced()) {
            let prefix = namespace_prefix(kind, name);
            let items = self.store.reader().scan(&prefix).map_err(internal)?;
            let mut ops = Vec::new();
            for (key, stored) in items {
                let obj = decode_object(&stored)?;
                if obj.meta().finalizers.is_empty() {
                    ops.push(Op {
                        key,
                        precondition: Precondition::ModRevision(stored.mod_revision),
                        action: Action::Delete,
                    });
                    ops.extend(Self::release(&obj));
                } else {
                    remaining += 1;
                    if !obj.meta().is_being_deleted() {
                        let mut m = obj.clone();
                        m.meta_mut().deletion_timestamp = now_timestamp();
                        ops.push(Op {
                            key,
                            precondition: Precondition::ModRevision(stored.mod_revision),
                            action: Action::Put(encode_object(&m)?),
                        });
                    }
                }
            }
            for chunk in ops.chunks(OPS_PER_COMMIT) {
                if let Err(r) = self.commit(chunk.to_vec()).await? {
                    tracing::debug!(
                        ?r,
                        "namespace cleanup raced a change; the next delete retries"
                    );
                    remaining += 1;
                }
            }
        }
        Ok(remaining)
    }
}
