//! The state machine: applies committed commands to the key space (the single
//! writer), keeps the watch history window, and hands out cheap cloneable readers.
//!
//! Every committed command gets its log index as its revision, the same on every
//! peer, so a revision names one state of the cluster wherever it is read.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Cursor};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::backend::StateBackend;
use super::types::{
    Action, Command, CommandResponse, LogId, PeerId, Precondition, Rejection, StorageError,
    StoredMembership, StoredValue, TypeConfig,
};

/// One committed change to one key.
#[derive(Clone, Debug)]
pub struct Change {
    /// Revision it was committed at.
    pub revision: u64,
    /// The key.
    pub key: String,
    /// The new value, or for a delete the last value.
    pub value: StoredValue,
    /// Whether the key was deleted.
    pub deleted: bool,
    /// What a reader made of `value`, kept so that the many watchers that
    /// look at one change decode it once (the store itself never reads it).
    pub memo: Memo,
}

/// A slot for a reader's decoding of a change.
#[derive(Clone, Default)]
pub struct Memo(Arc<std::sync::OnceLock<Arc<dyn std::any::Any + Send + Sync>>>);

impl Memo {
    /// The value `init` makes, made once for all readers.
    pub fn get_or_init<T: Send + Sync + 'static>(&self, init: impl FnOnce() -> T) -> Option<&T> {
        self.0
            .get_or_init(|| Arc::new(init()) as Arc<dyn std::any::Any + Send + Sync>)
            .downcast_ref::<T>()
    }
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Memo(set)"
        } else {
            "Memo(empty)"
        })
    }
}

/// A watch asked for changes the history window no longer holds.
#[derive(Debug, thiserror::Error)]
#[error("revision {requested} is too old: the history window starts after revision {oldest}; list again and watch from the list's revision")]
pub struct TooOld {
    /// What was asked for.
    pub requested: u64,
    /// The oldest revision a watch can start from.
    pub oldest: u64,
}

struct History {
    changes: VecDeque<Arc<Change>>,
    capacity: usize,
    /// Every change with a revision above this one is in `changes`.
    start: u64,
    /// Every change, for watches of everything.
    tx: broadcast::Sender<Arc<Change>>,
    /// The changes under each top-level key segment (`instances` for
    /// `/instances/...`), so a watch of one kind is not woken by every
    /// other kind's changes: a thousand nodes' watches of Services and
    /// Endpoints would otherwise each wake on every instance binding.
    by_top: HashMap<String, broadcast::Sender<Arc<Change>>>,
}

impl History {
    fn sender_for(&mut self, top: Option<&str>) -> &broadcast::Sender<Arc<Change>> {
        let capacity = self.capacity.max(16);
        match top {
            None => &self.tx,
            Some(top) => self
                .by_top
                .entry(top.to_string())
                .or_insert_with(|| broadcast::channel(capacity).0),
        }
    }
}

/// The first segment of a key: `instances` for `/instances/default/a`.
pub fn top_segment(key: &str) -> &str {
    key.trim_start_matches('/').split('/').next().unwrap_or("")
}

/// What readers and the writer share.
pub struct Shared {
    backend: Arc<dyn StateBackend>,
    history: Mutex<History>,
    /// Log index applied (what read barriers wait on).
    applied: watch::Sender<u64>,
    /// Revision of the last applied change (what lists and watches speak).
    revision: std::sync::atomic::AtomicU64,
    /// Held while a snapshot is compared with the stored one and saved.
    saving_snapshot: Mutex<()>,
}

impl Shared {
    /// Saves a snapshot unless the stored one is newer: openraft builds
    /// snapshots in a task of their own, so a build can finish after an
    /// install of a newer snapshot from the leader.
    fn save_snapshot_unless_older(
        &self,
        meta: &SnapshotMeta<PeerId, openraft::BasicNode>,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let _one = self
            .saving_snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let stored = self
            .backend
            .load_snapshot()
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        if let Some((stored_meta, _)) = stored {
            let stored_meta: SnapshotMeta<PeerId, openraft::BasicNode> =
                postcard::from_bytes(&stored_meta).map_err(|e| snap_err(ErrorVerb::Read, e))?;
            if stored_meta.last_log_id > meta.last_log_id {
                return Ok(());
            }
        }
        let encoded = postcard::to_allocvec(meta).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.backend
            .save_snapshot(&encoded, data)
            .map_err(|e| snap_err(ErrorVerb::Write, e))
    }
}

/// A cheap, cloneable reader of the applied state.
#[derive(Clone)]
pub struct StateReader {
    shared: Arc<Shared>,
}

/// Changes after a revision: first the backlog from the window, then live ones.
pub struct ChangeStream {
    backlog: VecDeque<Arc<Change>>,
    rx: broadcast::Receiver<Arc<Change>>,
    /// Live changes at or below this were asked to be skipped (a caller that has
    /// seen a newer replica than this one).
    from: u64,
    last: u64,
}

impl ChangeStream {
    /// The next change of the backlog (what the window held when the stream
    /// was made), without waiting for live ones.
    pub fn next_buffered(&mut self) -> Option<Arc<Change>> {
        let c = self.backlog.pop_front()?;
        self.last = c.revision;
        Some(c)
    }

    /// The next change; `Err(TooOld)` if this watcher fell behind the window.
    pub async fn next(&mut self) -> Result<Option<Arc<Change>>, TooOld> {
        if let Some(c) = self.backlog.pop_front() {
            self.last = c.revision;
            return Ok(Some(c));
        }
        loop {
            match self.rx.recv().await {
                Ok(c) if c.revision <= self.from => continue,
                Ok(c) => {
                    self.last = c.revision;
                    return Ok(Some(c));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Err(TooOld {
                        requested: self.last,
                        oldest: self.last + 1,
                    })
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(None),
            }
        }
    }
}

impl StateReader {
    /// One key.
    pub fn get(&self, key: &str) -> io::Result<Option<StoredValue>> {
        self.shared.backend.get(key)
    }

    /// Keys under a prefix.
    pub fn scan(&self, prefix: &str) -> io::Result<Vec<(String, StoredValue)>> {
        self.shared.backend.scan(prefix)
    }

    /// At most `max` keys of `prefix` after `after`, in key order.
    pub fn scan_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        max: usize,
    ) -> io::Result<Vec<(String, StoredValue)>> {
        self.shared.backend.scan_page(prefix, after, max)
    }

    /// The revision of the last applied change.
    pub fn revision(&self) -> u64 {
        self.shared
            .revision
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The log index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        *self.shared.applied.borrow()
    }

    /// Waits until the applied log index reaches `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.shared.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|a| *a >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Changes committed after `from` (0: from now on).
    pub fn watch(&self, from: u64) -> Result<ChangeStream, TooOld> {
        self.watch_under(from, None)
    }

    /// Changes committed after `from` (0: from now on) to keys whose first
    /// segment is `top` (all keys when `None`).
    pub fn watch_under(&self, from: u64, top: Option<&str>) -> Result<ChangeStream, TooOld> {
        let mut history = self
            .shared
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let from = if from == 0 { self.revision() } else { from };
        if from < history.start {
            return Err(TooOld {
                requested: from,
                oldest: history.start,
            });
        }
        let backlog = history
            .changes
            .iter()
            .filter(|c| c.revision > from && top.is_none_or(|t| top_segment(&c.key) == t))
            .cloned()
            .collect();
        Ok(ChangeStream {
            backlog,
            rx: history.sender_for(top).subscribe(),
            from,
            last: from,
        })
    }

    /// The oldest revision a watch can start from.
    pub fn oldest_watchable(&self) -> u64 {
        self.shared
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .start
    }
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct AppliedMeta {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    revision: u64,
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    revision: u64,
    items: Vec<(String, StoredValue)>,
}

/// The raft state machine.
pub struct StateMachine {
    shared: Arc<Shared>,
    meta: AppliedMeta,
}

fn sm_err(verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

fn snap_err(verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Snapshot(None),
        verb,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

impl StateMachine {
    /// Opens the state machine over a backend; `history` is the watch window size.
    pub fn open(backend: Arc<dyn StateBackend>, history: usize) -> io::Result<Self> {
        let meta: AppliedMeta = match backend.meta()? {
            Some(b) => postcard::from_bytes(&b)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            None => AppliedMeta::default(),
        };
        let applied = meta.last_applied.map_or(0, |l| l.index);
        let revision = meta.revision;
        let (tx, _) = broadcast::channel(history.max(16));
        let shared = Arc::new(Shared {
            backend,
            history: Mutex::new(History {
                changes: VecDeque::new(),
                capacity: history.max(1),
                start: revision,
                tx,
                by_top: HashMap::new(),
            }),
            applied: watch::channel(applied).0,
            revision: std::sync::atomic::AtomicU64::new(revision),
            saving_snapshot: Mutex::new(()),
        });
        Ok(Self { shared, meta })
    }

    /// A reader sharing this state machine's state.
    pub fn reader(&self) -> StateReader {
        StateReader {
            shared: self.shared.clone(),
        }
    }

    fn encode_meta(&self) -> Result<Vec<u8>, StorageError> {
        postcard::to_allocvec(&self.meta).map_err(|e| sm_err(ErrorVerb::Write, e))
    }

    fn publish(&self, changes: Vec<Change>, applied: u64) {
        let mut history = self
            .shared
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for c in changes {
            let c = Arc::new(c);
            history.changes.push_back(c.clone());
            while history.changes.len() > history.capacity {
                if let Some(old) = history.changes.pop_front() {
                    history.start = old.revision;
                }
            }
            if let Some(tx) = history.by_top.get(top_segment(&c.key)) {
                let _ = tx.send(c.clone());
            }
            let _ = history.tx.send(c);
        }
        self.shared
            .revision
            .store(self.meta.revision, std::sync::atomic::Ordering::Release);
        self.shared.applied.send_replace(applied);
    }
}

/// Pending writes of one apply batch, so later commands see earlier ones.
struct Overlay<'a> {
    backend: &'a dyn StateBackend,
    pending: HashMap<String, Option<StoredValue>>,
    order: Vec<String>,
}

impl Overlay<'_> {
    fn get(&self, key: &str) -> io::Result<Option<StoredValue>> {
        match self.pending.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.backend.get(key),
        }
    }

    fn set(&mut self, key: String, value: Option<StoredValue>) {
        if self.pending.insert(key.clone(), value).is_none() {
            self.order.push(key);
        }
    }
}

fn check(
    precondition: Precondition,
    key: &str,
    current: &Option<StoredValue>,
) -> Option<Rejection> {
    match (precondition, current) {
        (Precondition::None, _) => None,
        (Precondition::Absent, Some(_)) => Some(Rejection::Exists { key: key.into() }),
        (Precondition::Absent, None) => None,
        (Precondition::Present, None) | (Precondition::ModRevision(_), None) => {
            Some(Rejection::Missing { key: key.into() })
        }
        (Precondition::Present, Some(_)) => None,
        (Precondition::ModRevision(rev), Some(v)) if v.mod_revision != rev => {
            Some(Rejection::Conflict {
                key: key.into(),
                expected: rev,
                actual: v.mod_revision,
            })
        }
        (Precondition::ModRevision(_), Some(_)) => None,
    }
}

/// Applies one command on the overlay, all ops or none; a command that changes
/// something takes the next revision from `counter`.
fn apply_command(
    overlay: &mut Overlay<'_>,
    cmd: &Command,
    counter: &mut u64,
    changes: &mut Vec<Change>,
) -> io::Result<CommandResponse> {
    let revision = *counter + 1;
    let mut previous = Vec::with_capacity(cmd.ops.len());
    for op in &cmd.ops {
        let current = overlay.get(&op.key)?;
        if let Some(rejected) = check(op.precondition, &op.key, &current) {
            return Ok(CommandResponse {
                revision: *counter,
                rejected: Some(rejected),
            });
        }
        previous.push(current);
    }
    let before = changes.len();
    for (op, prev) in cmd.ops.iter().zip(&previous) {
        match &op.action {
            Action::Check => {}
            Action::Put(bytes) => {
                let value = StoredValue {
                    value: bytes.clone(),
                    create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
                    mod_revision: revision,
                };
                overlay.set(op.key.clone(), Some(value.clone()));
                changes.push(Change {
                    revision,
                    key: op.key.clone(),
                    value,
                    deleted: false,
                    memo: Memo::default(),
                });
            }
            Action::Delete => {
                if let Some(prev) = prev {
                    overlay.set(op.key.clone(), None);
                    changes.push(Change {
                        revision,
                        key: op.key.clone(),
                        value: StoredValue {
                            mod_revision: revision,
                            ..prev.clone()
                        },
                        deleted: true,
                        memo: Memo::default(),
                    });
                }
            }
        }
    }
    if changes.len() > before {
        *counter = revision;
    }
    Ok(CommandResponse {
        revision: *counter,
        rejected: None,
    })
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.meta.last_applied, self.meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<CommandResponse>>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let backend = self.shared.backend.clone();
        let mut overlay = Overlay {
            backend: backend.as_ref(),
            pending: HashMap::new(),
            order: Vec::new(),
        };
        let mut responses = Vec::new();
        let mut changes = Vec::new();
        let mut counter = self.meta.revision;
        for entry in entries {
            self.meta.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(Vec::new()),
                EntryPayload::Normal(proposal) => {
                    let mut out = Vec::with_capacity(proposal.commands.len());
                    for cmd in &proposal.commands {
                        let resp = apply_command(&mut overlay, cmd, &mut counter, &mut changes)
                            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
                        out.push(resp);
                    }
                    responses.push(out);
                }
                EntryPayload::Membership(m) => {
                    self.meta.membership = StoredMembership::new(Some(entry.log_id), m);
                    responses.push(Vec::new());
                }
            }
        }
        self.meta.revision = counter;
        let meta = self.encode_meta()?;
        let mut pending = overlay.pending;
        let writes: Vec<(String, Option<StoredValue>)> = overlay
            .order
            .into_iter()
            .map(|k| {
                let v = pending.remove(&k).flatten();
                (k, v)
            })
            .collect();
        backend
            .write(&writes, &meta)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let applied = self.meta.last_applied.map_or(0, |l| l.index);
        self.publish(changes, applied);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Copied here, while no apply can run, so the snapshot is exactly the state
        // at `last_applied`; encoding and writing it happen off the apply path.
        let items = self.shared.backend.scan("/");
        SnapshotBuilder {
            shared: self.shared.clone(),
            meta: self.meta.clone(),
            items,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<PeerId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = super::format::open_ambiguous("a snapshot", &data)
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        self.meta = AppliedMeta {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            revision: body.revision,
        };
        let encoded_meta = self.encode_meta()?;
        self.shared
            .backend
            .replace_all(body.items, &encoded_meta)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.shared.save_snapshot_unless_older(meta, &data)?;
        let applied = meta.last_log_id.map_or(0, |l| l.index);
        let body_revision = self.meta.revision;
        self.shared
            .revision
            .store(body_revision, std::sync::atomic::Ordering::Release);
        {
            // Watchers cannot be told what the snapshot skipped over: end their
            // streams so they relist, and restart the window here.
            let mut history = self
                .shared
                .history
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            history.changes.clear();
            history.start = body_revision;
            let capacity = history.capacity;
            history.tx = broadcast::channel(capacity.max(16)).0;
            history.by_top.clear();
        }
        self.shared.applied.send_replace(applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some((meta, data)) = self
            .shared
            .backend
            .load_snapshot()
            .map_err(|e| snap_err(ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        let meta: SnapshotMeta<PeerId, openraft::BasicNode> =
            postcard::from_bytes(&meta).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Builds a snapshot from a copy of the key space taken at a known position.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    meta: AppliedMeta,
    items: io::Result<Vec<(String, StoredValue)>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let items = std::mem::replace(&mut self.items, Ok(Vec::new()))
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let data = super::format::seal(&SnapshotBody {
            revision: self.meta.revision,
            items,
        })
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let last = self.meta.last_applied;
        let snapshot_id = match last {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, rand::random::<u32>()),
            None => format!("empty-{}", rand::random::<u32>()),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.meta.membership.clone(),
            snapshot_id,
        };
        // The snapshot is durable, and so is the key space it was taken from, before
        // raft may purge the log it replaces.
        self.shared
            .backend
            .flush()
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.shared.save_snapshot_unless_older(&meta, &data)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
