//! [`ApiServer::guaranteed_update`], Kubernetes' `GuaranteedUpdate`: read a
//! key, let a closure decide what to write from what it found, commit that
//! with compare-and-swap on the revision read, and on a lost race read again
//! and ask again. Every read-modify-write of the apiserver goes through it:
//! create, update, status, bind, apply, delete and peer ids.
//!
//! The consistency rule, in one place: reads come from this replica, which
//! may lag. A lagging view can only make a write fail its precondition (the
//! leader checks it), never succeed wrongly, so no read barrier is taken up
//! front ([`Freshness::Lazy`]). Only when this view says no (the key is
//! missing, or older than the revision the caller holds, or the commit lost
//! a race) is the replica brought up to date, once, and the closure asked
//! again. [`Freshness::Synced`] takes the barrier first, for decisions that
//! must see every earlier write (apply's comparison, delete's cascade).

use crate::store::{Action, Op, Precondition, Rejection, StoredValue};

use flotilla_client::wire::ErrorCode;

use super::errors::{store_error, Subject};
use super::{ApiResult, ApiServer};

/// How many times a read-modify-write is tried before it gives up.
const ATTEMPTS: usize = 5;

/// How fresh the first read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Freshness {
    /// Read this replica as it is; sync only when it says no.
    Lazy,
    /// Sync before the first read.
    Synced,
}

/// What the closure is shown on each attempt.
pub(super) struct Attempt<'a> {
    /// The key's value as read, `None` when absent.
    pub stored: Option<&'a StoredValue>,
    /// Why the previous attempt's commit was refused, if it was.
    pub rejected: Option<&'a Rejection>,
    /// Whether this replica was brought up to date before the read: a
    /// decision that the view makes impossible (a name taken, a namespace
    /// missing) is only final when it was.
    pub synced: bool,
}

/// What the closure decided.
pub(super) enum Decision<T> {
    /// Commit `action` on the key (guarded by the revision read, or by its
    /// absence) together with `also`, then answer `answer`.
    Write {
        action: Action,
        also: Vec<Op>,
        answer: T,
    },
    /// Write nothing; answer now.
    Answer(T),
    /// This view may be behind: bring the replica up to date and ask again
    /// (only while [`Attempt::synced`] is false).
    Sync,
}

/// A committed (or unneeded) write: the closure's answer and the revision
/// its commit got (`None` when nothing was written).
pub(super) struct Outcome<T> {
    pub answer: T,
    pub revision: Option<u64>,
}

impl ApiServer {
    /// Reads the subject's key, asks `decide`, commits, and retries on lost
    /// races.
    ///
    /// `expected` is the revision the caller's change was made on: when the
    /// key is at another one the answer is a conflict (after making sure this
    /// replica is not merely behind). A `NotFound` from `decide` on a view
    /// not yet synced is retried once synced, as is any refused commit while
    /// `expected` is `None` (nothing the caller held has been overtaken).
    pub(super) async fn guaranteed_update<T>(
        &self,
        subject: &Subject,
        expected: Option<u64>,
        freshness: Freshness,
        mut decide: impl FnMut(Attempt<'_>) -> ApiResult<Decision<T>>,
    ) -> ApiResult<Outcome<T>> {
        let mut synced = false;
        if freshness == Freshness::Synced {
            self.sync().await?;
            synced = true;
        }
        let mut rejected: Option<Rejection> = None;
        for _ in 0..ATTEMPTS {
            let key = subject.key.as_str();
            let stored = self.store.reader().get(key).map_err(super::internal)?;
            let behind = match (&stored, expected) {
                (Some(s), Some(expected)) => expected > s.mod_revision,
                _ => false,
            };
            if behind && !synced {
                self.sync().await?;
                synced = true;
                continue;
            }
            if let (Some(s), Some(expected)) = (&stored, expected) {
                if s.mod_revision != expected {
                    return Err(subject.conflict(&format!(
                        "resourceVersion {expected} was given, the object is at {}",
                        s.mod_revision
                    )));
                }
            }
            let decided = decide(Attempt {
                stored: stored.as_ref(),
                rejected: rejected.as_ref(),
                synced,
            });
            let (action, also, answer) = match decided {
                Ok(Decision::Answer(answer)) => {
                    return Ok(Outcome {
                        answer,
                        revision: None,
                    })
                }
                Ok(Decision::Write {
                    action,
                    also,
                    answer,
                }) => (action, also, answer),
                Ok(Decision::Sync) => {
                    self.sync().await?;
                    synced = true;
                    continue;
                }
                Err(e) if e.code == ErrorCode::NotFound && !synced => {
                    self.sync().await?;
                    synced = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let precondition = match &stored {
                Some(s) => Precondition::ModRevision(s.mod_revision),
                None => Precondition::Absent,
            };
            let mut ops = Vec::with_capacity(1 + also.len());
            ops.extend(also);
            ops.push(Op {
                key: key.to_string(),
                precondition,
                action,
            });
            match self.commit(ops).await? {
                Ok(revision) => {
                    return Ok(Outcome {
                        answer,
                        revision: Some(revision),
                    })
                }
                Err(r) => {
                    let own_key = r.key() == key;
                    if own_key && expected.is_some() && synced {
                        // Read fresh and still overtaken: the caller's
                        // version is not the newest.
                        return Err(subject.rejected(r));
                    }
                    self.sync().await?;
                    synced = true;
                    rejected = Some(r);
                }
            }
        }
        Err(subject.conflict("it kept changing; retries exhausted"))
    }

    /// Brings this replica up to date with every committed write.
    pub(super) async fn sync(&self) -> ApiResult<()> {
        self.store.read_barrier().await.map_err(store_error)
    }
}
