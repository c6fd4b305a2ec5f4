//! The watch hub: one reader of the store's changes that hands each Instance
//! change to the watchers of its node only. Without it every change wakes
//! every node's watch (`spec.nodeName=NODE`), which then finds the change is
//! not for it: with 1,000 nodes, a thousand wake-ups per binding.
//!
//! A watcher registers first and reads the store's window afterwards, so no
//! change falls between the two; it skips what the queue repeats.
//!
//! The hub also keeps which instance keys each node has, so a node's list of
//! its instances reads those keys instead of decoding every instance in the
//! cluster (a thousand nodes relisting at once would otherwise decode every
//! instance a thousand times).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use flotilla_api::object::{Kind, Object};

use super::keys::kind_prefix;
use super::stored::decode_object;
use crate::store::state_machine::{Change, StateReader};

/// Changes a node's watcher may have queued before it is dropped as too slow.
const QUEUE: usize = 4096;

type Senders = HashMap<String, Vec<(u64, mpsc::Sender<Arc<Change>>)>>;

/// Routes Instance changes to the watchers of their node.
pub struct WatchHub {
    by_node: Mutex<Senders>,
    next_id: AtomicU64,
    index: Mutex<Index>,
    /// The revision through which the index is current; 0 while it is built.
    processed: tokio::sync::watch::Sender<u64>,
}

/// Instance keys by node name, and each key's node.
#[derive(Default)]
struct Index {
    keys: HashMap<String, std::collections::BTreeSet<String>>,
    node_of: HashMap<String, String>,
}

impl Index {
    fn set(&mut self, key: &str, node: &str) {
        if let Some(old) = self.node_of.get(key) {
            if old == node {
                return;
            }
            if let Some(set) = self.keys.get_mut(old) {
                set.remove(key);
            }
        }
        if node.is_empty() {
            self.node_of.remove(key);
            return;
        }
        self.node_of.insert(key.to_string(), node.to_string());
        self.keys
            .entry(node.to_string())
            .or_default()
            .insert(key.to_string());
    }
}

impl WatchHub {
    /// Starts the hub's reader on `reader`.
    pub fn start(reader: StateReader) -> Arc<Self> {
        let hub = Arc::new(Self {
            by_node: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            index: Mutex::new(Index::default()),
            processed: tokio::sync::watch::channel(0).0,
        });
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            let prefix = kind_prefix(Kind::Instance);
            loop {
                let Ok(mut stream) = reader.watch_under(0, Some(Kind::Instance.plural())) else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                // The index from a scan taken after the stream started: the
                // stream then replays what the scan may already hold, which
                // setting a key's node again does not change.
                let at = reader.revision();
                let mut fresh = Index::default();
                if let Ok(items) = reader.scan(&prefix) {
                    for (key, stored) in items {
                        if let Ok(Object::Instance(i)) = decode_object(&stored) {
                            fresh.set(&key, &i.spec.node_name);
                        }
                    }
                }
                {
                    let Some(hub) = weak.upgrade() else { return };
                    *hub.index.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
                    hub.processed.send_replace(at);
                }
                loop {
                    let next = stream.next().await;
                    let Some(hub) = weak.upgrade() else { return };
                    match next {
                        Ok(Some(change)) => {
                            let revision = change.revision;
                            if change.key.starts_with(&prefix) {
                                hub.route(change);
                            }
                            hub.processed.send_if_modified(|p| {
                                let newer = revision > *p;
                                *p = (*p).max(revision);
                                newer
                            });
                        }
                        // A reset (snapshot installed) or a lag: every
                        // watcher must list again.
                        Ok(None) | Err(_) => {
                            hub.by_node
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .clear();
                            hub.processed.send_replace(0);
                            break;
                        }
                    }
                }
            }
        });
        hub
    }

    fn route(&self, change: Arc<Change>) {
        let decoded = change
            .memo
            .get_or_init(|| decode_object(&change.value).ok());
        let Some(Some(Object::Instance(i))) = decoded else {
            return;
        };
        {
            let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            let node = if change.deleted {
                ""
            } else {
                i.spec.node_name.as_str()
            };
            index.set(&change.key, node);
        }
        let mut by_node = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(senders) = by_node.get_mut(&i.spec.node_name) {
            // A watcher too slow to keep up is dropped; it ends and relists.
            senders.retain(|(_, tx)| tx.try_send(change.clone()).is_ok());
        }
    }

    /// The keys of `node`'s instances as of `revision` or later; `None` when
    /// the index does not reach that revision within a short wait (the caller
    /// then scans).
    pub async fn keys_of(&self, node: &str, revision: u64) -> Option<Vec<String>> {
        let mut processed = self.processed.subscribe();
        let reached = tokio::time::timeout(
            Duration::from_millis(500),
            processed.wait_for(|p| *p >= revision && *p > 0),
        )
        .await;
        if !matches!(reached, Ok(Ok(_))) {
            return None;
        }
        let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            index
                .keys
                .get(node)
                .map(|k| k.iter().cloned().collect())
                .unwrap_or_default(),
        )
    }

    /// Registers a watcher of `node`'s instances.
    pub fn subscribe(&self, node: &str) -> (u64, mpsc::Receiver<Arc<Change>>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.by_node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(node.to_string())
            .or_default()
            .push((id, tx));
        (id, rx)
    }

    /// Removes a watcher.
    pub fn unsubscribe(&self, node: &str, id: u64) {
        let mut by_node = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(senders) = by_node.get_mut(node) {
            senders.retain(|(i, _)| *i != id);
            if senders.is_empty() {
                by_node.remove(node);
            }
        }
    }
}
