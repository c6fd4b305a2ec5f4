//! A local copy of some kinds of objects, kept current by the one watcher
//! (`flotilla_client::watcher`), for the scheduler and the controllers: they
//! decide from memory and write through the API (Kubernetes calls this an
//! informer).
//!
//! Writes a component makes are put into the copy at once
//! ([`Cache::wrote`], [`Cache::removed`]), so the next decision does not act
//! again on a state it has already changed while the watch event is still in
//! flight. Every change the watch brings is also announced as a
//! [`CacheChange`], old and new state together, so controllers can tell which
//! keys it concerns; a cheaper counter ([`Cache::subscribe`]) says only that
//! something changed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use flotilla_api::instance::Instance;
use flotilla_api::object::{Kind, Object};
use flotilla_client::watcher::{Event, Params, Source, Watcher};
use flotilla_client::wire::{EventType, WatchEvent};

/// `(namespace, name)`.
pub type Key = (String, String);

/// How many changes a slow subscriber may fall behind before it is told it
/// lagged (and must treat everything as changed).
const CHANGES_BUFFERED: usize = 8192;

/// What changed in the cache.
#[derive(Clone, Debug)]
pub enum CacheChange {
    /// Everything of this kind was listed again: any of it may have changed.
    Reset(Kind),
    /// An object was added or changed; `old` is what was held before.
    Upserted {
        /// The state held before, if any.
        old: Option<Object>,
        /// The new state.
        new: Object,
    },
    /// An object is gone; its last state.
    Removed(Object),
}

#[derive(Default)]
struct State {
    objects: HashMap<Kind, BTreeMap<Key, Object>>,
    /// Instance keys by the uid of each owner they name.
    owned: HashMap<String, BTreeSet<Key>>,
    /// Instance keys by the node they are bound to.
    on_node: HashMap<String, BTreeSet<Key>>,
    /// Uids this component deleted whose Deleted event has not arrived yet.
    tombstones: HashSet<String>,
}

impl State {
    fn index(&mut self, o: &Object) {
        if let Object::Instance(i) = o {
            let key = key_of(o);
            for r in &i.metadata.owner_references {
                self.owned
                    .entry(r.uid.clone())
                    .or_default()
                    .insert(key.clone());
            }
            if !i.spec.node_name.is_empty() {
                self.on_node
                    .entry(i.spec.node_name.clone())
                    .or_default()
                    .insert(key);
            }
        }
    }

    fn unindex(&mut self, o: &Object) {
        if let Object::Instance(i) = o {
            let key = key_of(o);
            for r in &i.metadata.owner_references {
                if let Some(set) = self.owned.get_mut(&r.uid) {
                    set.remove(&key);
                    if set.is_empty() {
                        self.owned.remove(&r.uid);
                    }
                }
            }
            if let Some(set) = self.on_node.get_mut(&i.spec.node_name) {
                set.remove(&key);
                if set.is_empty() {
                    self.on_node.remove(&i.spec.node_name);
                }
            }
        }
    }

    /// Puts `object` in place of what is held under its key; returns the old.
    fn insert(&mut self, object: Object) -> Option<Object> {
        let kind = object.kind();
        let key = key_of(&object);
        let old = self.objects.entry(kind).or_default().remove(&key);
        if let Some(old) = &old {
            self.unindex(old);
        }
        self.index(&object);
        self.objects.entry(kind).or_default().insert(key, object);
        old
    }

    fn remove(&mut self, kind: Kind, key: &Key) -> Option<Object> {
        let old = self.objects.get_mut(&kind)?.remove(key)?;
        self.unindex(&old);
        Some(old)
    }

    fn instances(&self, keys: Option<&BTreeSet<Key>>) -> Vec<Instance> {
        let Some(keys) = keys else {
            return Vec::new();
        };
        let Some(map) = self.objects.get(&Kind::Instance) else {
            return Vec::new();
        };
        keys.iter()
            .filter_map(|k| match map.get(k) {
                Some(Object::Instance(i)) => Some(i.clone()),
                _ => None,
            })
            .collect()
    }
}

/// The local copy; shared between the tasks that fill it and its readers.
pub struct Cache {
    state: Mutex<State>,
    changes: watch::Sender<u64>,
    announced: broadcast::Sender<CacheChange>,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::default()),
            changes: watch::channel(0).0,
            announced: broadcast::channel(CHANGES_BUFFERED).0,
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

    fn announce(&self, change: CacheChange) {
        // Nobody listening is fine: the counter still moves.
        let _ = self.announced.send(change);
    }

    /// A receiver that wakes when anything in the cache changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Every change the watches bring, old and new state together.
    pub fn changes(&self) -> broadcast::Receiver<CacheChange> {
        self.announced.subscribe()
    }

    /// Every object of `kind`, ordered by namespace and name.
    pub fn list(&self, kind: Kind) -> Vec<Object> {
        self.lock()
            .objects
            .get(&kind)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every object of `kind` in `namespace`, ordered by name.
    pub fn list_in(&self, kind: Kind, namespace: &str) -> Vec<Object> {
        let from = (namespace.to_string(), String::new());
        self.lock()
            .objects
            .get(&kind)
            .map(|m| {
                m.range(from..)
                    .take_while(|((ns, _), _)| ns == namespace)
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The keys of every object of `kind`.
    pub fn keys(&self, kind: Kind) -> Vec<Key> {
        self.lock()
            .objects
            .get(&kind)
            .map(|m| m.keys().cloned().collect())
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

    /// Whether an object is held.
    pub fn contains(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        self.lock()
            .objects
            .get(&kind)
            .is_some_and(|m| m.contains_key(&(namespace.to_string(), name.to_string())))
    }

    /// The instances that name the owner with `uid` (being deleted or not).
    pub fn owned_by(&self, uid: &str) -> Vec<Instance> {
        let state = self.lock();
        state.instances(state.owned.get(uid))
    }

    /// The instances bound to `node`.
    pub fn on_node(&self, node: &str) -> Vec<Instance> {
        let state = self.lock();
        state.instances(state.on_node.get(node))
    }

    /// Replaces everything of `kind` with a fresh listing.
    fn reset(&self, kind: Kind, items: Vec<Object>) {
        {
            let mut state = self.lock();
            let old: Vec<Object> = state
                .objects
                .remove(&kind)
                .map(|m| m.into_values().collect())
                .unwrap_or_default();
            for o in &old {
                state.unindex(o);
            }
            for o in items {
                state.insert(o);
            }
            state.tombstones.clear();
        }
        self.bump();
        self.announce(CacheChange::Reset(kind));
    }

    /// Applies a change seen by a watch. Older states than the one held (a
    /// component's own write can overtake its event) are ignored.
    pub fn observe(&self, event: WatchEvent) {
        let announced = {
            let mut state = self.lock();
            let kind = event.object.kind();
            let key = key_of(&event.object);
            match event.event_type {
                EventType::Deleted => {
                    state.tombstones.remove(&event.object.meta().uid);
                    let held_same = state
                        .objects
                        .get(&kind)
                        .and_then(|m| m.get(&key))
                        .is_some_and(|held| held.meta().uid == event.object.meta().uid);
                    if held_same {
                        state.remove(kind, &key);
                    }
                    Some(CacheChange::Removed(event.object))
                }
                _ => {
                    if state.tombstones.contains(&event.object.meta().uid) {
                        return;
                    }
                    let mut object = event.object;
                    object.meta_mut().resource_version = event.revision.to_string();
                    let newer = state
                        .objects
                        .get(&kind)
                        .and_then(|m| m.get(&key))
                        .is_none_or(|held| {
                            held.meta().uid != object.meta().uid
                                || held.meta().revision() <= event.revision
                        });
                    if newer {
                        let old = state.insert(object.clone());
                        Some(CacheChange::Upserted { old, new: object })
                    } else {
                        None
                    }
                }
            }
        };
        self.bump();
        if let Some(change) = announced {
            self.announce(change);
        }
    }

    /// Records an object this component just created or updated.
    pub fn wrote(&self, object: Object) {
        {
            let mut state = self.lock();
            let newer = state
                .objects
                .get(&object.kind())
                .and_then(|m| m.get(&key_of(&object)))
                .is_none_or(|held| {
                    held.meta().uid != object.meta().uid
                        || held.meta().revision() <= object.meta().revision()
                });
            if newer {
                state.insert(object);
            }
        }
        self.bump();
    }

    /// Records an object this component just deleted.
    pub fn removed(&self, object: &Object) {
        {
            let mut state = self.lock();
            state.tombstones.insert(object.meta().uid.clone());
            let key = key_of(object);
            let held_same = state
                .objects
                .get(&object.kind())
                .and_then(|m| m.get(&key))
                .is_some_and(|held| held.meta().uid == object.meta().uid);
            if held_same {
                state.remove(object.kind(), &key);
            }
        }
        self.bump();
    }
}

/// Fills `cache` with `kinds` and keeps it current for as long as the future
/// runs, through any number of breaks (each kind's watcher picks up or
/// relists on its own). `synced` is sent `true` once every kind has been
/// listed.
pub async fn run<S>(source: S, kinds: &[Kind], cache: Arc<Cache>, synced: watch::Sender<bool>)
where
    S: Source + Clone + 'static,
{
    let listed = Arc::new(Mutex::new(HashSet::new()));
    let want = kinds.len();
    let mut tasks = tokio::task::JoinSet::new();
    for &kind in kinds {
        let mut watcher = Watcher::new(source.clone(), Params::all(kind));
        let cache = cache.clone();
        let listed = listed.clone();
        let synced = synced.clone();
        tasks.spawn(async move {
            loop {
                match watcher.next().await {
                    Event::Restarted { kind, items, .. } => {
                        cache.reset(kind, items);
                        let mut listed = listed.lock().unwrap_or_else(|p| p.into_inner());
                        listed.insert(kind);
                        if listed.len() == want {
                            synced.send_replace(true);
                        }
                    }
                    Event::Changed(event) => cache.observe(event),
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
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
