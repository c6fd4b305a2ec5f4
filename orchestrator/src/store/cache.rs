//! A value built from every key under a few top segments of the state,
//! kept in memory and rebuilt whenever one of those keys changes: for the
//! few, rarely changed things that hot paths ask about on every request
//! (the RBAC bindings, which namespaces have quotas, which peers were
//! removed), so they never read the store there.
//!
//! Like an informer's cache it reflects what this peer has applied, a
//! moment after the apply: [`PrefixCache::refresh`] rebuilds it on the spot
//! when a decision must not rest on a copy that may lag (a refusal).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::state_machine::StateReader;

/// Longest a watcher waits for the next applied entry before it tries to
/// start its stream again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Builds the value from the state.
pub type Build<T> = fn(&StateReader) -> std::io::Result<T>;

/// The current value and the revision it was built at.
pub struct PrefixCache<T> {
    current: RwLock<Arc<T>>,
    reader: StateReader,
    build: Build<T>,
    what: &'static str,
    /// Dropped with the cache: its watchers then stop, and with them their
    /// hold on the state (a store reopened in the same process needs it).
    _alive: tokio::sync::watch::Sender<()>,
}

impl<T: Default + Send + Sync + 'static> PrefixCache<T> {
    /// Builds the value now and again whenever a key under one of `tops`
    /// changes. `what` names it in logs.
    pub fn start(
        reader: StateReader,
        tops: &[&'static str],
        what: &'static str,
        build: Build<T>,
    ) -> Arc<Self> {
        let (alive, watching) = tokio::sync::watch::channel(());
        let cache = Arc::new(Self {
            current: RwLock::new(Arc::new(T::default())),
            reader: reader.clone(),
            build,
            what,
            _alive: alive,
        });
        let notify = Arc::new(tokio::sync::Notify::new());
        for &top in tops {
            // Only a weak hold while waiting: the state is released as soon
            // as the cache is dropped.
            let (weak, notify, mut alive) =
                (Arc::downgrade(&cache), notify.clone(), watching.clone());
            tokio::spawn(async move {
                let follow = async {
                    loop {
                        let Some(cache) = weak.upgrade() else { return };
                        let reader = cache.reader.clone();
                        drop(cache);
                        let Ok(mut stream) = reader.watch_under(0, Some(top)) else {
                            // The history was reset under the stream (a
                            // snapshot installed): start again once the
                            // next entry is applied.
                            let next = reader.applied_index() + 1;
                            reader.wait_applied(next, RETRY_AFTER).await;
                            continue;
                        };
                        drop(reader);
                        // What changed before the stream started is read again.
                        notify.notify_one();
                        while let Ok(Some(_)) = stream.next().await {
                            notify.notify_one();
                        }
                    }
                };
                tokio::select! {
                    _ = follow => {}
                    _ = alive.changed() => {}
                }
            });
        }
        cache.rebuild();
        let weak = Arc::downgrade(&cache);
        let mut alive = watching;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = alive.changed() => return,
                }
                let Some(cache) = weak.upgrade() else { return };
                cache.rebuild();
            }
        });
        cache
    }

    fn rebuild(&self) {
        match (self.build)(&self.reader) {
            Ok(value) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
            }
            Err(e) => {
                tracing::warn!(error = %e, what = self.what, "cannot read the state; keeping the previous copy")
            }
        }
    }

    /// The value as last built.
    pub fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rebuilds the value from what this peer has applied, now, and
    /// returns it.
    pub fn refresh(&self) -> Arc<T> {
        self.rebuild();
        self.current()
    }
}
