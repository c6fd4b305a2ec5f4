//! The watch hub: one reader of the store's changes that hands each Instance
//! change to the watchers of its node only. Without it every change wakes
//! every node's watch (`spec.nodeName=NODE`), which then finds the change is
//! not for it: with 1,000 nodes, a thousand wake-ups per binding.
//!
//! A watcher registers first and reads the store's window afterwards, so no
//! change falls between the two; it skips what the queue repeats.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use flotilla_api::object::{Kind, Object};

use super::decode_object;
use super::keys::kind_prefix;
use crate::store::state_machine::{Change, StateReader};

/// Changes a node's watcher may have queued before it is dropped as too slow.
const QUEUE: usize = 4096;

type Senders = HashMap<String, Vec<(u64, mpsc::Sender<Arc<Change>>)>>;

/// Routes Instance changes to the watchers of their node.
pub struct WatchHub {
    by_node: Mutex<Senders>,
    next_id: AtomicU64,
}

impl WatchHub {
    /// Starts the hub's reader on `reader`.
    pub fn start(reader: StateReader) -> Arc<Self> {
        let hub = Arc::new(Self {
            by_node: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            let prefix = kind_prefix(Kind::Instance);
            loop {
                let Ok(mut stream) = reader.watch(0) else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                loop {
                    let next = stream.next().await;
                    let Some(hub) = weak.upgrade() else { return };
                    match next {
                        Ok(Some(change)) => {
                            if change.key.starts_with(&prefix) {
                                hub.route(change);
                            }
                        }
                        // A reset (snapshot installed) or a lag: every
                        // watcher must list again.
                        Ok(None) | Err(_) => {
                            hub.by_node
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .clear();
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
        let mut by_node = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(senders) = by_node.get_mut(&i.spec.node_name) {
            // A watcher too slow to keep up is dropped; it ends and relists.
            senders.retain(|(_, tx)| tx.try_send(change.clone()).is_ok());
        }
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
