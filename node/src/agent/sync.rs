//! The desired state from the apiserver: every Instance bound to this node,
//! through the one watcher (list, watch, pick up after a break). The last state seen is
//! kept on disk so a node restarted while the control plane is away runs it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

use flotilla_api::instance::Instance;
use flotilla_api::object::{Kind, Object};
use flotilla_client::watcher::{Event, Params, Watcher};
use flotilla_client::wire::EventType;

use super::supervisor::Key;
use super::Shared;
use flotilla_client::Link;

const DESIRED_FILE: &str = "desired.bin";

/// The desired state saved by a previous run, if any.
pub fn load_desired(dir: &Path) -> BTreeMap<Key, Instance> {
    std::fs::read(dir.join(DESIRED_FILE))
        .ok()
        .and_then(|b| postcard::from_bytes::<Vec<Instance>>(&b).ok())
        .map(|items| items.into_iter().map(|i| (key_of(&i), i)).collect())
        .unwrap_or_default()
}

fn save_desired(dir: &Path, desired: &BTreeMap<Key, Instance>) {
    let items: Vec<&Instance> = desired.values().collect();
    if let Ok(bytes) = postcard::to_allocvec(&items) {
        let tmp = dir.join("desired.tmp");
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(tmp, dir.join(DESIRED_FILE));
        }
    }
}

fn key_of(i: &Instance) -> Key {
    (i.metadata.namespace.clone(), i.metadata.name.clone())
}

fn bound_here(i: &Instance, node: &str) -> bool {
    i.spec.node_name == node && !i.metadata.annotations.contains_key(MIRROR_ANNOTATION)
}

pub use flotilla_api::instance::MIRROR_ANNOTATION;

/// Runs forever.
pub async fn run(shared: Arc<Shared>, link: Arc<Link>, tx: watch::Sender<BTreeMap<Key, Instance>>) {
    let node = shared.config.name.clone();
    let dir = shared.config.data_dir.clone();
    // Only this node's instances travel: every node watching every
    // instance would cost the apiserver nodes × changes sends.
    let params = Params::all(Kind::Instance).fields(format!("spec.nodeName={node}"));
    let mut watcher = Watcher::new(link, params);
    let mut desired: BTreeMap<Key, Instance> = BTreeMap::new();
    loop {
        match watcher.next().await {
            Event::Restarted { items, .. } => {
                desired = items
                    .into_iter()
                    .filter_map(|o| match o {
                        Object::Instance(i) if bound_here(&i, &node) => Some(i),
                        _ => None,
                    })
                    .map(|i| (key_of(&i), i))
                    .collect();
                publish(&tx, &dir, &desired);
            }
            Event::Changed(event) => {
                let Object::Instance(i) = event.object else {
                    continue;
                };
                let key = key_of(&i);
                let changed = match event.event_type {
                    EventType::Deleted => desired.remove(&key).is_some(),
                    _ if bound_here(&i, &node) && i.metadata.deletion_timestamp.is_empty() => {
                        let same = desired.get(&key).is_some_and(|d| d.spec == i.spec);
                        desired.insert(key, i);
                        !same
                    }
                    _ => desired.remove(&key).is_some(),
                };
                if changed {
                    publish(&tx, &dir, &desired);
                }
            }
        }
    }
}

fn publish(
    tx: &watch::Sender<BTreeMap<Key, Instance>>,
    dir: &Path,
    desired: &BTreeMap<Key, Instance>,
) {
    save_desired(dir, desired);
    tx.send_if_modified(|current| {
        let same = current.len() == desired.len()
            && current
                .iter()
                .zip(desired.iter())
                .all(|((ka, a), (kb, b))| ka == kb && a.spec == b.spec);
        if !same {
            *current = desired.clone();
        }
        !same
    });
}
