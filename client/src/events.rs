//! Writes Events, aggregated and rate-limited as Kubernetes' event series:
//! repeats of the same reason and message about the same object become one
//! Event whose `count` and `lastTimestamp` move, written at most once per
//! [`SERIES_INTERVAL`]; and new series about one object are limited by a
//! token bucket, so a guest hammering a denied host (or a thousand hosts)
//! costs the store a few writes, not one per request.
//!
//! Must never: fail or hold up the caller's decision over an event (failures
//! are logged), or grow without bound (both memories start over past
//! [`REMEMBERED`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::event::{Event, EventType};
use flotilla_api::meta::{now_timestamp, ObjectMeta};
use flotilla_api::object::{Kind, Object};
use tokio::time::Instant;

use crate::Client;

/// Shortest time between two writes of one series.
pub const SERIES_INTERVAL: Duration = Duration::from_secs(10);
/// New series one object may start at once…
const BURST: f64 = 25.0;
/// …and how soon it may start one more after that.
const REFILL_EVERY: Duration = Duration::from_secs(10);
/// Bound on the series and buckets remembered.
const REMEMBERED: usize = 10_000;

/// (uid or namespace/name of the object, reason, message).
type SeriesKey = (String, String, String);

#[derive(Default)]
struct Series {
    /// The Event last written for it, as stored (with its resourceVersion).
    written: Option<Event>,
    /// Occurrences not written yet.
    pending: u32,
    /// When it was last written.
    last_write: Option<Instant>,
    /// A writer owns the series (writing, or waiting for its interval).
    busy: bool,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let refilled = now.duration_since(self.at).as_secs_f64() / REFILL_EVERY.as_secs_f64();
        self.tokens = (self.tokens + refilled).min(BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Default)]
struct Memory {
    series: HashMap<SeriesKey, Series>,
    buckets: HashMap<String, Bucket>,
}

/// What one write of a series carries.
struct Occurrence {
    kind: Kind,
    about: ObjectMeta,
    type_: EventType,
    reason: String,
    message: String,
}

/// The event writer of one component (a controller manager, a scheduler, a
/// node agent).
pub struct Recorder {
    component: String,
    /// The node the events come from, for a node agent's.
    host: String,
    memory: Arc<Mutex<Memory>>,
}

impl Recorder {
    /// A recorder that signs events with `component`.
    pub fn new(component: &str) -> Self {
        Self {
            component: component.to_string(),
            host: String::new(),
            memory: Arc::default(),
        }
    }

    /// A recorder of node `host`'s agent: its events name the node as their
    /// source, which is what a node may write.
    pub fn on_node(component: &str, host: &str) -> Self {
        Self {
            host: host.to_string(),
            ..Self::new(component)
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event about the object with metadata `about`. The first of
    /// a series is written before this returns; repeats are counted and
    /// written at most once per [`SERIES_INTERVAL`], in the background.
    pub async fn record(
        &self,
        client: &Client,
        kind: Kind,
        about: &ObjectMeta,
        type_: EventType,
        reason: &str,
        message: &str,
    ) {
        let object = if about.uid.is_empty() {
            format!("{}/{}/{}", kind.as_str(), about.namespace, about.name)
        } else {
            about.uid.clone()
        };
        let key = (object.clone(), reason.to_string(), message.to_string());
        let now = Instant::now();
        let due = {
            let mut memory = self.memory();
            if memory.series.len() >= REMEMBERED {
                memory.series.retain(|_, s| s.busy);
            }
            if memory.buckets.len() >= REMEMBERED {
                memory.buckets.clear();
            }
            if !memory.series.contains_key(&key) {
                let bucket = memory.buckets.entry(object).or_insert(Bucket {
                    tokens: BURST,
                    at: now,
                });
                if !bucket.take(now) {
                    tracing::debug!(reason, "event dropped: too many new ones about one object");
                    return;
                }
            }
            let series = memory.series.entry(key.clone()).or_default();
            series.pending += 1;
            if series.busy {
                return;
            }
            series.busy = true;
            series.last_write.map_or(now, |t| t + SERIES_INTERVAL)
        };
        let occurrence = Arc::new(Occurrence {
            kind,
            about: about.clone(),
            type_,
            reason: reason.to_string(),
            message: message.to_string(),
        });
        let writer = SeriesWriter {
            component: self.component.clone(),
            host: self.host.clone(),
            memory: self.memory.clone(),
            key,
            occurrence,
            client: client.clone(),
        };
        if due <= now {
            // The first of a series, or the first after a quiet interval:
            // written before the caller goes on.
            if writer.write_pending().await {
                tokio::spawn(writer.run(Instant::now() + SERIES_INTERVAL));
            }
        } else {
            tokio::spawn(writer.run(due));
        }
    }
}

/// Writes one series while it has occurrences pending.
struct SeriesWriter {
    component: String,
    host: String,
    memory: Arc<Mutex<Memory>>,
    key: SeriesKey,
    occurrence: Arc<Occurrence>,
    client: Client,
}

impl SeriesWriter {
    async fn run(self, mut due: Instant) {
        loop {
            tokio::time::sleep_until(due).await;
            if !self.write_pending().await {
                return;
            }
            due = Instant::now() + SERIES_INTERVAL;
        }
    }

    /// Writes what is pending; returns whether more came meanwhile (the
    /// writer then keeps the series), else lets the series go.
    async fn write_pending(&self) -> bool {
        let (count, written) = {
            let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
            let Some(series) = memory.series.get_mut(&self.key) else {
                return false;
            };
            let count = std::mem::take(&mut series.pending);
            if count == 0 {
                series.busy = false;
                return false;
            }
            (count, series.written.clone())
        };
        let at = self.write(count, written).await;
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        let Some(series) = memory.series.get_mut(&self.key) else {
            return false;
        };
        series.last_write = Some(Instant::now());
        if at.is_some() {
            series.written = at;
        }
        if series.pending == 0 {
            series.busy = false;
            false
        } else {
            true
        }
    }

    /// Adds `count` to the series' Event, or creates it; returns it as
    /// stored. One that cannot be updated (expired, changed by someone else)
    /// is replaced by a new one.
    async fn write(&self, count: u32, written: Option<Event>) -> Option<Event> {
        let o = &self.occurrence;
        if let Some(mut e) = written {
            e.count = e.count.saturating_add(count);
            e.last_timestamp = now_timestamp();
            match self.client.update(Object::Event(e)).await {
                Ok(Object::Event(stored)) => return Some(stored),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, reason = %o.reason, "event not updated; writing a new one")
                }
            }
        }
        let mut about = o.about.clone();
        if about.uid.is_empty() {
            // Told only the name: the Event names the object's uid too, which
            // `describe` finds it by. Read once per series.
            if let Ok(object) = self.client.get(o.kind, &about.namespace, &about.name).await {
                about.uid = object.meta().uid.clone();
            }
        }
        let mut event = Event::about(
            o.kind,
            &about,
            o.type_,
            &o.reason,
            &o.message,
            &self.component,
        );
        event.count = count;
        event.source.host = self.host.clone();
        match self.client.create(Object::Event(event)).await {
            Ok(Object::Event(stored)) => Some(stored),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, reason = %o.reason, "event not recorded");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_starts_a_burst_of_series_then_one_per_refill() {
        let start = Instant::now();
        let mut bucket = Bucket {
            tokens: BURST,
            at: start,
        };
        let started = (0..100).filter(|_| bucket.take(start)).count();
        assert_eq!(started, BURST as usize);
        assert!(!bucket.take(start + REFILL_EVERY / 2));
        assert!(bucket.take(start + REFILL_EVERY));
        assert!(!bucket.take(start + REFILL_EVERY));
        // A long quiet spell refills the burst, no more.
        let later = start + REFILL_EVERY * 1000;
        assert_eq!(
            (0..100).filter(|_| bucket.take(later)).count(),
            BURST as usize
        );
    }
}
