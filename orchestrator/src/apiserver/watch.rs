//! Watches: the changes after a revision, from the store's history window,
//! filtered by kind, namespace and selectors. A [`WatchFeed`] yields them one
//! at a time; transports turn them into frames (or, later, lines of JSON).
//! A node's watch of its own instances is fed by the watch hub, which hands
//! each Instance change only to the watches of its node.

use std::sync::Arc;

use flotilla_api::object::Kind;
use flotilla_client::wire::{ApiError, ErrorCode, EventType, WatchEvent};

use super::errors::ApiResult;
use super::keys::{self, kind_prefix, namespace_prefix};
use super::stored::{decode_object, Selectors};
use super::watchhub::WatchHub;
use super::ApiServer;
use crate::store::state_machine::{Change, ChangeStream, TooOld};

/// A watcher's queue from the hub, and the revision through which the
/// store's window already delivered.
struct HubFeed {
    hub: Arc<WatchHub>,
    node: String,
    id: u64,
    rx: tokio::sync::mpsc::Receiver<Arc<Change>>,
    skip_through: u64,
}

impl Drop for HubFeed {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.node, self.id);
    }
}

/// An open watch.
pub struct WatchFeed {
    stream: ChangeStream,
    hub: Option<HubFeed>,
    prefix: String,
    namespace: Option<String>,
    selectors: Selectors,
}

impl ApiServer {
    /// Opens a watch of the changes committed after `from_revision` (0: from
    /// now); `TooOld` when that revision left the history window.
    pub(super) fn open_watch(
        &self,
        kind: Option<Kind>,
        namespace: Option<String>,
        selectors: Selectors,
        from_revision: u64,
    ) -> ApiResult<WatchFeed> {
        let prefix = match (kind, namespace.as_deref()) {
            (Some(k), Some(ns)) if k.namespaced() => namespace_prefix(k, ns),
            (Some(k), _) => kind_prefix(k),
            (None, _) => "/".to_string(),
        };
        // A node's watch of its instances is fed by the hub; register before
        // reading the window so nothing falls in between.
        let hub = match (kind, selectors.1.node_name()) {
            (Some(Kind::Instance), Some(node)) => {
                let (id, rx) = self.watch_hub.subscribe(node);
                Some(HubFeed {
                    hub: self.watch_hub.clone(),
                    node: node.to_string(),
                    id,
                    rx,
                    skip_through: from_revision,
                })
            }
            _ => None,
        };
        let top = kind.map(|k| k.plural());
        let stream = self
            .store
            .reader()
            .watch_under(from_revision, top)
            .map_err(|too_old| ApiError::new(ErrorCode::TooOld, too_old.to_string()))?;
        Ok(WatchFeed {
            stream,
            hub,
            prefix,
            namespace,
            selectors,
        })
    }
}

impl WatchFeed {
    /// The next change the watch asked for; an error ends the watch (the
    /// window moved past it, or this peer installed a snapshot: list again).
    pub async fn next(&mut self) -> ApiResult<WatchEvent> {
        loop {
            let change = match next_change(&mut self.stream, self.hub.as_mut()).await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    return Err(ApiError::new(
                        ErrorCode::TooOld,
                        "the watch was reset (this peer installed a snapshot); list again and watch from the list's revision",
                    ))
                }
                Err(too_old) => return Err(ApiError::new(ErrorCode::TooOld, too_old.to_string())),
            };
            if let Some(event) = self.select(&change) {
                return Ok(event);
            }
        }
    }

    /// The event for `change` when the watch wants it.
    fn select(&self, change: &Change) -> Option<WatchEvent> {
        if !change.key.starts_with(&self.prefix) || keys::is_internal(&change.key) {
            return None;
        }
        // Decoded once for every watch that sees this change.
        let decoded = change.memo.get_or_init(|| match decode_object(&change.value) {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(key = %change.key, error = %e, "skipping an undecodable object in a watch");
                None
            }
        });
        let Some(Some(shared)) = decoded else {
            return None;
        };
        if let Some(ns) = self.namespace.as_deref() {
            if shared.kind().namespaced() && shared.meta().namespace != ns {
                return None;
            }
        }
        let (labels, fields) = &self.selectors;
        if !labels.matches(&shared.meta().labels) || !fields.matches(shared) {
            return None;
        }
        let event_type = if change.deleted {
            EventType::Deleted
        } else if change.value.create_revision == change.value.mod_revision {
            EventType::Added
        } else {
            EventType::Modified
        };
        Some(WatchEvent {
            revision: change.revision,
            event_type,
            object: shared.clone(),
        })
    }
}

/// The next change for a watch: from the store's stream, or, for a hub-fed
/// watch, the window's backlog and then the hub's queue.
async fn next_change(
    stream: &mut ChangeStream,
    hub: Option<&mut HubFeed>,
) -> Result<Option<Arc<Change>>, TooOld> {
    let Some(feed) = hub else {
        return stream.next().await;
    };
    if let Some(c) = stream.next_buffered() {
        feed.skip_through = feed.skip_through.max(c.revision);
        return Ok(Some(c));
    }
    loop {
        match feed.rx.recv().await {
            Some(c) if c.revision <= feed.skip_through => continue,
            Some(c) => return Ok(Some(c)),
            None => return Ok(None),
        }
    }
}
