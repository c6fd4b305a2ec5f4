//! A local copy of some kinds of objects, kept current by list-then-watch, for
//! the scheduler and the controllers: they decide from memory and write through
//! the API (Kubernetes calls this an informer).
//!
//! Writes a component makes are put into the copy at once
//! ([`Cache::wrote`], [`Cache::removed`]), so the next decision does not act again
//! on a state it has already changed while the watch event is still in flight.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::{EventType, WatchEvent};
use flotilla_client::{Client, ClientError};

type Key = (String, String);

#[derive(Default)]
struct State {
    objects: HashMap<Kind, BTreeMap<Key, Object>>,
    /// Uids this component deleted whose Deleted event has not arrived yet.
    tombstones: HashSet<String>,
}

/// The local copy; shared between the task that fills it and its readers.
pub struct Cache {
    state: Mutex<State>,
    changes: watch::Sender<u64>,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::default()),
            changes: watch::channel(0).0,
        }
    }
}

fn key_of(o: &Object) -> Key {
    (o.meta().namespace.clone(), o.meta().name.clone())
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// A receiver that wakes when anything in the cache changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Every object of `kind`, ordered by namespace and name.
    pub fn list(&self, kind: Kind) -> Vec<Object> {
        self.lock()
            .objects
            .get(&kind)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One object.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Object> {
        self.lock()
            .objects
            .get(&kind)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Replaces everything of `kind` with a fresh listing.
    fn reset(&self, kind: Kind, items: Vec<Object>) {
        {
            let mut state = self.lock();
            let map = items.into_iter().map(|o| (key_of(&o), o)).collect();
            state.objects.insert(kind, map);
            state.tombstones.clear();
        }
        self.bump();
    }

    /// Applies a change seen by a watch. Older states than the one held (a
    /// component's own write can overtake its event) are ignored.
    pub fn observe(&self, event: WatchEvent) {
        {
            let mut state = self.lock();
            let kind = event.object.kind();
            let key = key_of(&event.object);
            match event.event_type {
                EventType::Deleted => {
                    state.tombstones.remove(&event.object.meta().uid);
                    let map = state.objects.entry(kind).or_default();
                    if map
                        .get(&key)
                        .is_some_and(|held| held.meta().uid == event.object.meta().uid)
                    {
                        map.remove(&key);
                    }
                }
                _ => {
                    if state.tombstones.contains(&event.object.meta().uid) {
                        return;
                    }
                    let mut object = event.object;
                    object.meta_mut().resource_version = event.revision.to_string();
                    let map = state.objects.entry(kind).or_default();
                    let newer = map.get(&key).is_none_or(|held| {
                        held.meta().uid != object.meta().uid
                            || held.meta().revision() <= event.revision
                    });
                    if newer {
                        map.insert(key, object);
                    }
                }
            }
        }
        self.bump();
    }

    /// Records an object this component just created or updated.
    pub fn wrote(&self, object: Object) {
        {
            let mut state = self.lock();
            let map = state.objects.entry(object.kind()).or_default();
            let key = key_of(&object);
            let newer = map.get(&key).is_none_or(|held| {
                held.meta().uid != object.meta().uid
                    || held.meta().revision() <= object.meta().revision()
            });
            if newer {
                map.insert(key, object);
            }
        }
        self.bump();
    }

    /// Records an object this component just deleted.
    pub fn removed(&self, object: &Object) {
        {
            let mut state = self.lock();
            state.tombstones.insert(object.meta().uid.clone());
            if let Some(map) = state.objects.get_mut(&object.kind()) {
                let key = key_of(object);
                if map
                    .get(&key)
                    .is_some_and(|held| held.meta().uid == object.meta().uid)
                {
                    map.remove(&key);
                }
            }
        }
        self.bump();
    }
}

/// Fills `cache` with `kinds` and keeps it current until the connection or a
/// watch breaks (the error is returned; the caller reconnects and calls again).
/// `synced` is sent `true` once every kind has been listed.
pub async fn run(
    client: &Client,
    kinds: &[Kind],
    cache: &Cache,
    synced: &watch::Sender<bool>,
) -> Result<(), ClientError> {
    let (tx, mut rx) = mpsc::channel::<Result<WatchEvent, ClientError>>(1024);
    let mut watchers = Vec::new();
    for &kind in kinds {
        let (items, revision) = client.list(kind, None, "").await?;
        cache.reset(kind, items);
        let mut stream = client.watch(Some(kind), None, "", revision).await?;
        let tx = tx.clone();
        watchers.push(tokio::spawn(async move {
            loop {
                let next = stream.next().await;
                let end = !matches!(next, Ok(Some(_)));
                let item = match next {
                    Ok(Some(e)) => Ok(e),
                    Ok(None) => Err(ClientError::Unexpected("the server ended a watch".into())),
                    Err(e) => Err(e),
                };
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        }));
    }
    drop(tx);
    synced.send_replace(true);
    let result = loop {
        match rx.recv().await {
            Some(Ok(event)) => cache.observe(event),
            Some(Err(e)) => break Err(e),
            None => break Ok(()),
        }
    };
    synced.send_replace(false);
    for w in watchers {
        w.abort();
    }
    result
}

/// Waits until the cache changes or `period` passes, then lets a burst of
/// changes settle for `settle`.
pub async fn changed_or_tick(
    changes: &mut watch::Receiver<u64>,
    period: Duration,
    settle: Duration,
) {
    let _ = tokio::time::timeout(period, changes.changed()).await;
    tokio::time::sleep(settle).await;
    changes.mark_unchanged();
}
