//! Static instances: Instance manifests in the node's manifests directory run
//! on this node with no control plane at all. With one reachable, each appears
//! as a mirror object (annotated, for display); removing the file stops the
//! instance and removes its mirror.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use flotilla_api::instance::Instance;
use flotilla_api::manifest::{manifest_files, parse_manifests};
use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::{ErrorCode, Propagation};

use super::modules::ModuleCache;
use super::supervisor::Key;
use super::sync::MIRROR_ANNOTATION;
use super::Shared;

/// How often the directory is read again.
const POLL: Duration = Duration::from_millis(500);

fn read_dir(dir: &Path, node: &str, modules: &ModuleCache) -> BTreeMap<Key, Instance> {
    let mut out = BTreeMap::new();
    let Ok(files) = manifest_files(dir) else {
        return out;
    };
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let objects = match parse_manifests(&text) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "skipping an invalid static manifest");
                continue;
            }
        };
        for object in objects {
            let Object::Instance(mut instance) = object else {
                continue;
            };
            if !instance.spec.module.starts_with("sha256:") {
                let path = dir.join(&instance.spec.module);
                let bytes = match std::fs::read(&path) {
                    Ok(b) if path.extension().and_then(|e| e.to_str()) == Some("wat") => {
                        match wat::parse_bytes(&b) {
                            Ok(b) => b.into_owned(),
                            Err(e) => {
                                tracing::warn!(module = %path.display(), error = %e, "invalid WAT");
                                continue;
                            }
                        }
                    }
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(module = %path.display(), error = %e, "cannot read a static instance's module");
                        continue;
                    }
                };
                match modules.insert(&bytes) {
                    Ok(digest) => instance.spec.module = digest,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot cache a static module");
                        continue;
                    }
                }
            }
            instance.spec.node_name = node.to_string();
            let key = (
                instance.metadata.namespace.clone(),
                instance.metadata.name.clone(),
            );
            out.insert(key, instance);
        }
    }
    out
}

/// Runs forever.
pub async fn run(
    shared: Arc<Shared>,
    dir: PathBuf,
    modules: Arc<ModuleCache>,
    tx: watch::Sender<BTreeMap<Key, Instance>>,
) {
    let node = shared.config.name.clone();
    let mut mirrored: BTreeMap<Key, Instance> = BTreeMap::new();
    loop {
        let found = read_dir(&dir, &node, &modules);
        tx.send_if_modified(|current| {
            let same = current.len() == found.len()
                && current
                    .iter()
                    .zip(found.iter())
                    .all(|((ka, a), (kb, b))| ka == kb && a.spec == b.spec);
            if !same {
                *current = found.clone();
            }
            !same
        });
        if let Some(link) = &shared.link {
            if let Some(client) = link.client().await {
                for (key, instance) in &found {
                    if mirrored.get(key).is_some_and(|m| m.spec == instance.spec) {
                        continue;
                    }
                    let mut mirror = instance.clone();
                    mirror
                        .metadata
                        .annotations
                        .insert(MIRROR_ANNOTATION.to_string(), "true".to_string());
                    match client.apply(Object::Instance(mirror)).await {
                        Ok(_) => {
                            mirrored.insert(key.clone(), instance.clone());
                        }
                        Err(e) if e.code() == Some(ErrorCode::NotFound) => {}
                        Err(e) => tracing::debug!(error = %e, "mirror not written"),
                    }
                }
                let gone: Vec<Key> = mirrored
                    .keys()
                    .filter(|k| !found.contains_key(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    match client
                        .delete(Kind::Instance, &key.0, &key.1, Propagation::Background)
                        .await
                    {
                        Ok(_) => {
                            mirrored.remove(&key);
                        }
                        Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                            mirrored.remove(&key);
                        }
                        Err(_) => {}
                    }
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}
