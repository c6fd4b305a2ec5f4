//! Writes Events for the scheduler and controllers. A repeat of the same reason
//! and message about the same object bumps the count of the event already
//! written instead of adding another, as Kubernetes does.

use std::collections::HashMap;
use std::sync::Mutex;

use flotilla_api::event::{Event, EventType};
use flotilla_api::meta::{now_timestamp, ObjectMeta};
use flotilla_api::object::{Kind, Object};
use flotilla_client::Client;

/// Bound on remembered events; past it the memory starts over (a repeat then
/// writes a new event, which is harmless).
const REMEMBERED: usize = 10_000;

type Memo = (String, String, String);

/// The event writer of one component.
pub struct Recorder {
    component: String,
    /// (uid, reason, message) -> the (namespace, name) of the event written.
    written: Mutex<HashMap<Memo, (String, String)>>,
}

impl Recorder {
    /// A recorder that signs events with `component`.
    pub fn new(component: &str) -> Self {
        Self {
            component: component.to_string(),
            written: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event about the object with metadata `about`. Failures are
    /// logged, never returned: an event is never worth failing a decision for.
    pub async fn record(
        &self,
        client: &Client,
        kind: Kind,
        about: &ObjectMeta,
        type_: EventType,
        reason: &str,
        message: &str,
    ) {
        let memo = (about.uid.clone(), reason.to_string(), message.to_string());
        let previous = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&memo)
            .cloned();
        if let Some((namespace, name)) = previous {
            if let Ok(Object::Event(mut e)) = client.get(Kind::Event, &namespace, &name).await {
                e.count += 1;
                e.last_timestamp = now_timestamp();
                if client.update(Object::Event(e)).await.is_ok() {
                    return;
                }
            }
        }
        let event = Event::about(kind, about, type_, reason, message, &self.component);
        let at = (
            event.metadata.namespace.clone(),
            event.metadata.name.clone(),
        );
        match client.create(Object::Event(event)).await {
            Ok(_) => {
                let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
                if written.len() >= REMEMBERED {
                    written.clear();
                }
                written.insert(memo, at);
            }
            Err(e) => tracing::debug!(error = %e, reason, "event not recorded"),
        }
    }
}
