//! A [`StateBackend`] that takes writes into memory and hands them to the
//! backend below in batches, every [`FLUSH_EVERY`] or every [`FLUSH_KEYS`]
//! keys, whichever comes first.
//!
//! sled makes every atomic batch its own pair of log-buffer writes, which cost
//! more than the rest of applying a raft entry. Batching many entries into one
//! sled batch keeps that cost per flush instead of per entry.
//!
//! Durability does not change: the raft log is what makes a write durable,
//! and the backend below was already flushed lazily. After a crash the key
//! space and its applied position are those of the last flush, still
//! written in one atomic batch, and raft replays the log from there. Snapshots
//! flush first, so the log is never purged past what the backend holds.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::backend::StateBackend;
use super::types::StoredValue;

/// How often pending writes go to the backend below.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Pending keys that wake the flusher before its time. sled holds every read
/// while it applies a batch, so batches stay small enough not to stall the
/// reads of the raft apply path.
pub const FLUSH_KEYS: usize = 256;
/// Pending keys beyond which a write flushes at once rather than wait.
const MAX_PENDING: usize = 50_000;

/// Writes not yet in the backend below.
#[derive(Default)]
struct Pending {
    /// Key → (sequence of the write, value or deletion).
    entries: BTreeMap<String, (u64, Option<StoredValue>)>,
    /// The applied position of the last write, with its sequence.
    meta: Option<(u64, Vec<u8>)>,
    seq: u64,
    stopping: bool,
    /// A flush that failed. The key space below may then hold less than was
    /// applied, so every later write and flush fails with it, and raft stops
    /// this peer's state machine rather than go on over it.
    failed: Option<String>,
}

struct Shared {
    below: Box<dyn StateBackend>,
    pending: Mutex<Pending>,
    wake: Condvar,
    /// One flush at a time (the background one, or one asked for).
    flushing: Mutex<()>,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves everything pending to the backend below in one atomic write.
    fn flush_pending(&self) -> io::Result<()> {
        let _one = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.flush_pending_once();
        if let Err(e) = &result {
            self.pending().failed.get_or_insert_with(|| e.to_string());
        }
        result
    }

    fn flush_pending_once(&self) -> io::Result<()> {
        let (changes, written, meta) = {
            let pending = self.pending();
            if let Some(failed) = &pending.failed {
                return Err(earlier_failure(failed));
            }
            let Some((meta_seq, meta)) = pending.meta.clone() else {
                return Ok(());
            };
            let mut changes = Vec::with_capacity(pending.entries.len());
            let mut written = Vec::with_capacity(pending.entries.len());
            for (key, (seq, value)) in &pending.entries {
                changes.push((key.clone(), value.clone()));
                written.push(*seq);
            }
            (changes, written, (meta_seq, meta))
        };
        self.below.write(&changes, &meta.1)?;
        let mut pending = self.pending();
        for ((key, _), seq) in changes.iter().zip(written) {
            // A key written again meanwhile stays for the next flush.
            if pending.entries.get(key).is_some_and(|(s, _)| *s == seq) {
                pending.entries.remove(key);
            }
        }
        if pending.meta.as_ref().is_some_and(|(s, _)| *s == meta.0) {
            pending.meta = None;
        }
        Ok(())
    }
}

fn earlier_failure(failed: &str) -> io::Error {
    io::Error::other(format!(
        "an earlier write of the key space failed: {failed}"
    ))
}

/// The write-behind key space over another backend.
pub struct WriteBehind {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl WriteBehind {
    /// Wraps `below` and starts its flusher thread.
    pub fn new(below: Box<dyn StateBackend>) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            below,
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            flushing: Mutex::new(()),
        });
        let background = shared.clone();
        let flusher = std::thread::Builder::new()
            .name("state-flusher".into())
            .spawn(move || run_flusher(&background))?;
        Ok(Self {
            shared,
            flusher: Some(flusher),
        })
    }
}

fn run_flusher(shared: &Shared) {
    loop {
        {
            let pending = shared.pending();
            let (pending, _) = shared
                .wake
                .wait_timeout(pending, FLUSH_EVERY)
                .unwrap_or_else(|p| p.into_inner());
            if pending.stopping {
                return;
            }
        }
        if let Err(e) = shared.flush_pending() {
            tracing::error!(error = %e, "writing the state machine's key space failed");
            return;
        }
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        self.shared.pending().stopping = true;
        self.shared.wake.notify_all();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        if let Err(e) = self.shared.flush_pending() {
            tracing::error!(error = %e, "writing the state machine's key space failed");
        }
    }
}

impl StateBackend for WriteBehind {
    fn get(&self, key: &str) -> io::Result<Option<StoredValue>> {
        if let Some((_, value)) = self.shared.pending().entries.get(key) {
            return Ok(value.clone());
        }
        // Not pending when looked at: the backend below has it, or a newer
        // value if a write and a flush came in between.
        self.shared.below.get(key)
    }

    fn scan_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        max: usize,
    ) -> io::Result<Vec<(String, StoredValue)>> {
        use std::ops::Bound;
        // Pending first: a key flushed after this copy is read below, and is
        // at least as new as the copy.
        let start = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Included(prefix),
        };
        let overlay: Vec<(String, Option<StoredValue>)> = self
            .shared
            .pending()
            .entries
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect();
        let below = self.shared.below.scan_page(prefix, after, max)?;
        if overlay.is_empty() {
            return Ok(below);
        }
        // Below's page ends at its last key when it is full; pending keys past
        // it belong to a later page.
        let page_end = (below.len() >= max)
            .then(|| below.last().map(|(k, _)| k.clone()))
            .flatten();
        let mut merged: BTreeMap<String, StoredValue> = below.into_iter().collect();
        for (key, value) in overlay {
            if page_end.as_ref().is_some_and(|end| &key > end) {
                break;
            }
            match value {
                Some(v) => merged.insert(key, v),
                None => merged.remove(&key),
            };
        }
        Ok(merged.into_iter().take(max).collect())
    }

    fn write(&self, changes: &[(String, Option<StoredValue>)], meta: &[u8]) -> io::Result<()> {
        let must_flush = {
            let mut pending = self.shared.pending();
            if let Some(failed) = &pending.failed {
                return Err(earlier_failure(failed));
            }
            for (key, value) in changes {
                pending.seq += 1;
                let seq = pending.seq;
                pending.entries.insert(key.clone(), (seq, value.clone()));
            }
            pending.seq += 1;
            pending.meta = Some((pending.seq, meta.to_vec()));
            if pending.entries.len() >= FLUSH_KEYS {
                self.shared.wake.notify_one();
            }
            pending.entries.len() >= MAX_PENDING
        };
        if must_flush {
            self.shared.flush_pending()?;
        }
        Ok(())
    }

    fn meta(&self) -> io::Result<Option<Vec<u8>>> {
        if let Some((_, meta)) = &self.shared.pending().meta {
            return Ok(Some(meta.clone()));
        }
        self.shared.below.meta()
    }

    fn replace_all(&self, items: Vec<(String, StoredValue)>, meta: &[u8]) -> io::Result<()> {
        let _one = self
            .shared
            .flushing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Readers wait while the snapshot goes in: with pending writes gone
        // and the backend below not yet replaced, they would see older
        // values than they may have seen already.
        let mut pending = self.shared.pending();
        if let Some(failed) = &pending.failed {
            return Err(earlier_failure(failed));
        }
        self.shared.below.replace_all(items, meta)?;
        pending.entries.clear();
        pending.meta = None;
        Ok(())
    }

    fn save_snapshot(&self, meta: &[u8], data: &[u8]) -> io::Result<()> {
        // The log is purged up to the snapshot once it is saved: what was
        // applied must be below by then.
        self.shared.flush_pending()?;
        self.shared.below.save_snapshot(meta, data)
    }

    fn load_snapshot(&self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.shared.below.load_snapshot()
    }

    fn flush(&self) -> io::Result<()> {
        self.shared.flush_pending()?;
        self.shared.below.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::SledBackend;

    fn value(v: &str, rev: u64) -> StoredValue {
        StoredValue {
            value: v.as_bytes().to_vec(),
            create_revision: rev,
            mod_revision: rev,
        }
    }

    fn open(dir: &std::path::Path) -> WriteBehind {
        WriteBehind::new(Box::new(SledBackend::open(dir).unwrap())).unwrap()
    }

    #[test]
    fn reads_see_pending_writes_and_deletes_over_the_backend_below() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .write(
                &[
                    ("/a/1".into(), Some(value("one", 1))),
                    ("/a/2".into(), Some(value("two", 2))),
                    ("/b/1".into(), Some(value("other", 3))),
                ],
                b"m1",
            )
            .unwrap();
        store.flush().unwrap();
        store
            .write(
                &[
                    ("/a/1".into(), None),
                    ("/a/3".into(), Some(value("three", 4))),
                    ("/a/2".into(), Some(value("two again", 5))),
                ],
                b"m2",
            )
            .unwrap();
        assert_eq!(store.get("/a/1").unwrap(), None);
        assert_eq!(store.get("/a/2").unwrap(), Some(value("two again", 5)));
        let keys: Vec<(String, u64)> = store
            .scan("/a/")
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.mod_revision))
            .collect();
        assert_eq!(keys, vec![("/a/2".into(), 5), ("/a/3".into(), 4)]);
        assert_eq!(store.meta().unwrap(), Some(b"m2".to_vec()));
    }

    #[test]
    fn pages_of_a_scan_merge_pending_keys_into_the_page_they_fall_in() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let below: Vec<(String, Option<StoredValue>)> = [1, 3, 5, 7, 9]
            .iter()
            .map(|i| (format!("/a/{i}"), Some(value("below", *i))))
            .collect();
        store.write(&below, b"m1").unwrap();
        store.flush().unwrap();
        // Pending: a new key inside the first page, one past it, a delete.
        store
            .write(
                &[
                    ("/a/2".into(), Some(value("new", 10))),
                    ("/a/8".into(), Some(value("new", 11))),
                    ("/a/3".into(), None),
                    ("/b/0".into(), Some(value("other kind", 12))),
                ],
                b"m2",
            )
            .unwrap();
        let mut pages = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page: Vec<String> = store
                .scan_page("/a/", after.as_deref(), 2)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 2, "{page:?}");
            after = page.last().cloned();
            pages.push(page);
        }
        let keys: Vec<String> = pages.concat();
        assert_eq!(keys, ["/a/1", "/a/2", "/a/5", "/a/7", "/a/8", "/a/9"]);
        let whole: Vec<String> = store
            .scan("/a/")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, whole, "pages make up the whole scan");
    }

    #[test]
    fn the_flusher_writes_pending_keys_and_position_below_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .write(&[("/k".into(), Some(value("v", 7)))], b"applied-7")
            .unwrap();
        assert_eq!(store.shared.below.get("/k").unwrap(), None);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while store.shared.below.meta().unwrap() != Some(b"applied-7".to_vec()) {
            assert!(std::time::Instant::now() < deadline, "never flushed");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(store.shared.below.get("/k").unwrap(), Some(value("v", 7)));
        // The flusher forgets what it wrote just after writing it, within
        // the same flush: once that flush lets go, nothing flushed is pending.
        drop(store.shared.flushing.lock().unwrap());
        assert!(store.shared.pending().entries.is_empty());
    }

    #[test]
    fn dropping_flushes_and_a_snapshot_install_discards_pending_writes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            store
                .write(&[("/gone".into(), Some(value("x", 1)))], b"m1")
                .unwrap();
            store
                .replace_all(vec![("/snap".into(), value("s", 9))], b"m9")
                .unwrap();
            assert_eq!(store.get("/gone").unwrap(), None);
            store
                .write(&[("/after".into(), Some(value("a", 10)))], b"m10")
                .unwrap();
        }
        let store = open(dir.path());
        let keys: Vec<String> = store
            .scan("/")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec!["/after".to_string(), "/snap".to_string()]);
        assert_eq!(store.meta().unwrap(), Some(b"m10".to_vec()));
    }
}
