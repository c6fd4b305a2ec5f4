//! Pushes instance status to the apiserver: the latest report per instance
//! wins, and reports wait in memory while the apiserver is unreachable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use flotilla_api::object::Object;
use flotilla_client::wire::ErrorCode;

use super::supervisor::{Key, StatusReport};
use flotilla_client::Link;

/// Runs until the supervisors are gone.
pub async fn run(link: Arc<Link>, mut rx: mpsc::UnboundedReceiver<StatusReport>) {
    let mut pending: BTreeMap<Key, StatusReport> = BTreeMap::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(r) => {
                    pending.insert(r.key.clone(), r);
                }
                None => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            pending.insert(r.key.clone(), r);
        }
        let Some(client) = link.client().await else {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => { pending.insert(r.key.clone(), r); }
                    None => return,
                },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        };
        let keys: Vec<Key> = pending.keys().cloned().collect();
        for key in keys {
            let Some(report) = pending.get(&key) else {
                continue;
            };
            let mut object = Object::Instance(report.instance.clone());
            object.meta_mut().resource_version.clear();
            match client.update_status(object).await {
                Ok(_) => {
                    pending.remove(&key);
                }
                Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                    pending.remove(&key);
                }
                Err(e) if e.code().is_some() => {
                    tracing::warn!(instance = %format!("{}/{}", key.0, key.1), error = %e, "status update refused");
                    pending.remove(&key);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "status update failed; will retry");
                    link.reset().await;
                    break;
                }
            }
        }
    }
}

/// Without a control plane, reports have nowhere to go.
pub async fn discard(mut rx: mpsc::UnboundedReceiver<StatusReport>) {
    while rx.recv().await.is_some() {}
}
