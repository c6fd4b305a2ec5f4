//! openraft's log storage on a [`LogBackend`]: entries are kept in memory for
//! reads (the log is compacted after each snapshot, so it stays small) and made
//! durable by the backend before an append is acknowledged.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use openraft::raft::AppendEntriesRequest;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, RaftLogReader, StorageIOError, Vote,
};

use super::types::{LogId, PeerId, StorageError, TypeConfig};
use super::wal::LogBackend;

struct Inner {
    backend: Box<dyn LogBackend>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    purged: Option<LogId>,
    committed: Option<LogId>,
    vote: Option<Vote<PeerId>>,
    /// Where this peer, while it leads, sends its new entries before they are
    /// on its own disk (see [`LogStore::replicate_early`]).
    early: Option<EarlyReplication>,
}

struct EarlyReplication {
    me: PeerId,
    tx: tokio::sync::mpsc::UnboundedSender<EarlyAppend>,
    /// Writes this peer is committing; early appends only while it is one.
    committing: Arc<AtomicUsize>,
}

/// A leader's new entries as the append its followers would get from it.
pub type EarlyAppend = AppendEntriesRequest<TypeConfig>;

impl Inner {
    /// The append a leader sends for `entries`, when this peer leads the
    /// term that made them and knows the entry before them.
    fn early_append(&self, entries: &[Entry<TypeConfig>]) -> Option<EarlyAppend> {
        let early = self.early.as_ref()?;
        if early.committing.load(Ordering::Relaxed) > 1 {
            return None;
        }
        let me = &early.me;
        let vote = self.vote?;
        let first = entries.first()?;
        let own_term = vote.is_committed() && vote.leader_id().voted_for() == Some(*me);
        if !own_term
            || entries
                .iter()
                .any(|e| e.log_id.leader_id != *vote.leader_id())
        {
            return None;
        }
        let prev_log_id = match first.log_id.index.checked_sub(1) {
            None => None,
            Some(prev) => Some(
                self.entries
                    .get(&prev)
                    .map(|e| e.log_id)
                    .or(self.purged.filter(|p| p.index == prev))?,
            ),
        };
        Some(AppendEntriesRequest {
            vote,
            prev_log_id,
            entries: entries.to_vec(),
            leader_commit: self.committed,
        })
    }
}

/// The raft log store; clones share the same log.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    flusher: mpsc::Sender<FlushRequest>,
    /// The committed index, readable without the lock (metrics read it while
    /// an append may hold the lock for a write).
    committed_index: Arc<AtomicU64>,
}

struct FlushRequest {
    file: Arc<std::fs::File>,
    callback: LogFlushed<TypeConfig>,
}

/// Group commit: waits for append requests, syncs each file written once for
/// everything queued, then acknowledges in order. After an fsync fails no
/// file is synced again: the kernel may have dropped the pages that failed
/// and a second fsync would report success for data that is gone (the
/// PostgreSQL fsync lesson); every later append fails, and raft stops.
fn run_flusher(rx: mpsc::Receiver<FlushRequest>, dir: PathBuf) {
    let mut failed: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        if failed.is_none() {
            let mut synced: Vec<*const std::fs::File> = Vec::new();
            for req in batch.iter().rev() {
                let ptr = Arc::as_ptr(&req.file);
                if !synced.contains(&ptr) {
                    synced.push(ptr);
                    if let Err(e) = req.file.sync_data() {
                        let e = super::disk::storage_error(&dir, "syncing the write-ahead log", &e);
                        tracing::error!(error = %e, "the write-ahead log cannot be synced; this peer stops writing");
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
        }
        for req in batch {
            let r = match &failed {
                None => Ok(()),
                Some(why) => Err(io::Error::other(why.clone())),
            };
            req.callback.log_io_completed(r);
        }
    }
}

fn io_err(subject: ErrorSubject<PeerId>, verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> io::Result<T> {
    postcard::from_bytes(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}")))
}

impl LogStore {
    /// Wraps a backend and loads what it recovered.
    pub fn open(
        backend: Box<dyn LogBackend>,
        recovered: super::wal::Recovered,
    ) -> io::Result<Self> {
        let mut entries = BTreeMap::new();
        for (index, bytes) in recovered.entries {
            let entry: Entry<TypeConfig> = decode(&bytes, "log entry")?;
            if entry.log_id.index != index {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "log entry at index {index} claims index {}",
                        entry.log_id.index
                    ),
                ));
            }
            entries.insert(index, entry);
        }
        let purged = match recovered.purged {
            Some((_, marker)) => Some(decode(&marker, "purge marker")?),
            None => None,
        };
        let committed = match recovered.committed {
            Some(bytes) => decode(&bytes, "committed marker")?,
            None => None,
        };
        let vote = match recovered.vote {
            Some(bytes) => Some(decode(&bytes, "vote")?),
            None => None,
        };
        let (flusher, rx) = mpsc::channel();
        let dir = backend.location().to_path_buf();
        std::thread::Builder::new()
            .name("raft-log-flusher".into())
            .spawn(move || run_flusher(rx, dir))?;
        Ok(Self {
            flusher,
            committed_index: Arc::new(AtomicU64::new(committed.map_or(0, |c: LogId| c.index))),
            inner: Arc::new(Mutex::new(Inner {
                backend,
                entries,
                purged,
                committed,
                vote,
                early: None,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the log as the backend last wrote
        // it; the in-memory copy is still a prefix of it, so go on.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, entries this peer appends as leader are also sent to
    /// `tx` as an append for its followers, as soon as they are written and
    /// before they are synced.
    ///
    /// openraft 0.9 waits for the leader's own fsync before it replicates, so
    /// without this the leader's and the followers' fsyncs run one after the
    /// other. A follower treats the early append like any append from its
    /// leader; when openraft's own append of the same entries arrives, they
    /// are already there. The leader still counts itself only once its fsync
    /// is done, so nothing commits on fewer durable copies than before.
    ///
    /// Only while `committing` (the writes this peer is committing) is at
    /// most one: with several in flight, one entry's fsync already overlaps
    /// another's replication, and a second copy of every entry would only
    /// cost CPU.
    pub fn replicate_early(
        &self,
        me: PeerId,
        tx: tokio::sync::mpsc::UnboundedSender<EarlyAppend>,
        committing: Arc<AtomicUsize>,
    ) {
        self.lock().early = Some(EarlyReplication { me, tx, committing });
    }

    /// Makes a vote this peer holds as leader an ordinary vote for itself, so
    /// that after a restart it leads again only after an election, in a new
    /// term.
    ///
    /// openraft 0.9 would resume leading in the old term, numbering new
    /// entries from the end of its log on disk. With early replication a
    /// follower may hold an entry of that term the leader lost in a crash
    /// before its fsync; the same log id would then name two different
    /// entries. An election cannot pass that follower by: its log is longer.
    pub fn step_down_after_restart(&self, me: PeerId) -> io::Result<()> {
        let mut inner = self.lock();
        let Some(vote) = inner.vote else {
            return Ok(());
        };
        if !vote.is_committed() || vote.leader_id().voted_for() != Some(me) {
            return Ok(());
        }
        let plain = Vote::new(vote.leader_id().get_term(), me);
        let bytes = postcard::to_allocvec(&plain).map_err(io::Error::other)?;
        inner.backend.save_vote(&bytes)?;
        inner.vote = Some(plain);
        Ok(())
    }

    /// The vote last saved.
    pub fn vote(&self) -> Option<Vote<PeerId>> {
        self.lock().vote
    }

    /// The index of the last entry known committed (0 before any).
    pub fn committed_index(&self) -> u64 {
        self.committed_index.load(Ordering::Relaxed)
    }

    /// Number of entries held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the log holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let inner = self.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.lock();
        let last = inner
            .entries
            .last_key_value()
            .map(|(_, e)| *e.get_log_id())
            .or(inner.purged);
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<PeerId>) -> Result<(), StorageError> {
        let mut inner = self.lock();
        let bytes = postcard::to_allocvec(vote)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        inner
            .backend
            .save_vote(&bytes)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<PeerId>>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut inner = self.lock();
        let bytes = postcard::to_allocvec(&committed)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        inner
            .backend
            .save_committed(&bytes)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        inner.committed = committed;
        self.committed_index
            .store(committed.map_or(0, |c| c.index), Ordering::Relaxed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let mut encoded = Vec::with_capacity(entries.len());
        for e in &entries {
            let bytes = postcard::to_allocvec(e)
                .map_err(|err| io_err(ErrorSubject::Log(e.log_id), ErrorVerb::Write, err))?;
            encoded.push((e.log_id.index, bytes));
        }
        let mut inner = self.lock();
        let file = inner
            .backend
            .append(&encoded)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        if let Some(early) = inner.early_append(&entries) {
            if let Some(replication) = &inner.early {
                let _ = replication.tx.send(early);
            }
        }
        for e in entries {
            inner.entries.insert(e.log_id.index, e);
        }
        drop(inner);
        // The flusher acknowledges once the entries are on disk; appends made
        // while it syncs share its next fsync.
        if let Err(mpsc::SendError(req)) = self.flusher.send(FlushRequest { file, callback }) {
            req.callback
                .log_io_completed(Err(io::Error::other("the log flusher has stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.lock();
        inner
            .backend
            .truncate(log_id.index)
            .map_err(|e| io_err(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))?;
        inner.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.lock();
        let marker = postcard::to_allocvec(&log_id)
            .map_err(|e| io_err(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))?;
        inner
            .backend
            .purge(log_id.index, &marker)
            .map_err(|e| io_err(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))?;
        let kept = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = kept;
        inner.purged = Some(log_id);
        Ok(())
    }
}
