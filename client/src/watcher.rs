//! The one list-then-watch loop (kube-runtime's `watcher`): list what matches,
//! watch from the list's revision, pick the watch up again from the last
//! revision seen after a break, relist when the server says that revision is
//! too old, and back off between failed attempts. Every cache of the cluster
//! is fed by it: the scheduler's and controllers' informer and the node's
//! desired state and network tables.
//!
//! A [`Watcher`] is an explicit state machine: [`State`] says what it does
//! next, and [`Watcher::step`] does it. It reports [`Event`]s: a whole new
//! list (`Restarted`, which replaces everything the consumer holds of this
//! kind) or one change.
//!
//! Must never: drop a change silently (a gap is always closed by a relist),
//! or spin: every failure waits out a backoff.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use flotilla_api::object::{Kind, Object};

use crate::client::{Client, WatchStream};
use crate::error::ClientError;
use crate::link::Link;
use crate::wire::{Consistency, ErrorCode, WatchEvent};

/// Where a watcher gets its client.
pub trait Source: Send + Sync {
    /// A connected client, or `None` while there is none.
    fn client(&self) -> impl Future<Output = Option<Client>> + Send;
    /// The connection of `client` broke: the next [`Source::client`] should
    /// make a new one.
    fn lost(&self, client: &Client) -> impl Future<Output = ()> + Send;
}

impl Source for Link {
    async fn client(&self) -> Option<Client> {
        Link::client(self).await
    }

    async fn lost(&self, client: &Client) {
        self.reset_if(client).await
    }
}

/// A fixed connection: once it breaks the watcher waits in backoff for good,
/// so it suits tests and short-lived tools; daemons use a [`Link`].
impl Source for Client {
    async fn client(&self) -> Option<Client> {
        self.is_connected().then(|| self.clone())
    }

    async fn lost(&self, _client: &Client) {}
}

impl<T: Source> Source for Arc<T> {
    fn client(&self) -> impl Future<Output = Option<Client>> + Send {
        (**self).client()
    }

    fn lost(&self, client: &Client) -> impl Future<Output = ()> + Send {
        (**self).lost(client)
    }
}

/// What to watch: one kind, optionally one namespace, and selectors.
#[derive(Clone, Debug)]
pub struct Params {
    /// The kind.
    pub kind: Kind,
    /// One namespace, or all.
    pub namespace: Option<String>,
    /// Label selector text, empty for all.
    pub label_selector: String,
    /// Field selector text (`spec.nodeName=edge-1`), empty for all.
    pub field_selector: String,
}

impl Params {
    /// Every object of `kind`.
    pub fn all(kind: Kind) -> Self {
        Self {
            kind,
            namespace: None,
            label_selector: String::new(),
            field_selector: String::new(),
        }
    }

    /// Only the objects matching a field selector.
    pub fn fields(mut self, selector: impl Into<String>) -> Self {
        self.field_selector = selector.into();
        self
    }
}

/// How long a watcher waits after failures: `initial`, doubling up to `max`,
/// back to `initial` after a success.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Backoff {
    /// The wait after one of `delay` failed again.
    pub fn after(&self, delay: Duration) -> Duration {
        (delay * 2).min(self.max)
    }
}

impl Default for Backoff {
    /// 200 ms doubling to 2 s: short, because the caches it feeds decide
    /// placements and routes, and a control plane coming back should be seen
    /// within a couple of seconds.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(2),
        }
    }
}

/// What a watcher reports.
#[derive(Clone, Debug)]
pub enum Event {
    /// A new list: everything that matches now, at `revision`. It replaces
    /// all the consumer holds of this watcher's kind.
    Restarted {
        /// The kind listed.
        kind: Kind,
        /// The objects.
        items: Vec<Object>,
        /// The store revision the list reflects.
        revision: u64,
    },
    /// One change after the last list.
    Changed(WatchEvent),
}

/// What the watcher does next.
enum State {
    /// Nothing is held, or what is held may have a gap: list next.
    Empty,
    /// Everything through `revision` was delivered: open a watch from there.
    Resume {
        /// The newest revision delivered.
        revision: u64,
    },
    /// A watch is open; everything through `revision` was delivered.
    Watching {
        /// The connection the watch is on.
        client: Client,
        /// The open watch.
        stream: WatchStream,
        /// The newest revision delivered.
        revision: u64,
    },
    /// An attempt failed: wait until `until`, then resume from `revision`
    /// (or list again when `None`).
    Backoff {
        /// When to try again.
        until: Instant,
        /// Where to pick up.
        revision: Option<u64>,
    },
}

/// A list-then-watch loop over one kind.
pub struct Watcher<S> {
    source: S,
    params: Params,
    state: State,
    backoff: Backoff,
    delay: Duration,
}

impl<S: Source> Watcher<S> {
    /// A watcher of `params` through `source`, with the default backoff.
    pub fn new(source: S, params: Params) -> Self {
        Self::with_backoff(source, params, Backoff::default())
    }

    /// A watcher with its own backoff.
    pub fn with_backoff(source: S, params: Params, backoff: Backoff) -> Self {
        Self {
            source,
            params,
            state: State::Empty,
            delay: backoff.initial,
            backoff,
        }
    }

    /// The kind watched.
    pub fn kind(&self) -> Kind {
        self.params.kind
    }

    /// The next event; waits (through any number of failures) until there is
    /// one. Cancel-safe between events: dropping the future loses nothing
    /// that was not yet reported, at worst a list that is made again.
    pub async fn next(&mut self) -> Event {
        loop {
            if let Some(event) = self.step().await {
                return event;
            }
        }
    }

    /// Advances the state machine by one step; `Some` when the step has
    /// something to report.
    pub async fn step(&mut self) -> Option<Event> {
        match std::mem::replace(&mut self.state, State::Empty) {
            State::Empty => self.list().await,
            State::Resume { revision } => {
                self.open(revision).await;
                None
            }
            State::Watching {
                client,
                mut stream,
                revision,
            } => match stream.next().await {
                Ok(Some(event)) => {
                    self.delay = self.backoff.initial;
                    self.state = State::Watching {
                        client,
                        stream,
                        revision: revision.max(event.revision),
                    };
                    Some(Event::Changed(event))
                }
                // The server ended the watch (it is stopping): pick it up
                // again, from another server if need be.
                Ok(None) => {
                    self.back_off(Some(revision));
                    None
                }
                Err(e) => {
                    self.failed(&client, e, Some(revision)).await;
                    None
                }
            },
            State::Backoff { until, revision } => {
                tokio::time::sleep_until(until).await;
                self.state = match revision {
                    Some(revision) => State::Resume { revision },
                    None => State::Empty,
                };
                None
            }
        }
    }

    async fn list(&mut self) -> Option<Event> {
        let Some(client) = self.source.client().await else {
            self.back_off(None);
            return None;
        };
        let p = &self.params;
        let listed = client
            .list_selected(
                p.kind,
                p.namespace.as_deref(),
                &p.label_selector,
                &p.field_selector,
                Consistency::Linearizable,
            )
            .await;
        match listed {
            Ok((items, revision)) => {
                self.delay = self.backoff.initial;
                self.state = State::Resume { revision };
                Some(Event::Restarted {
                    kind: p.kind,
                    items,
                    revision,
                })
            }
            Err(e) => {
                self.failed(&client, e, None).await;
                None
            }
        }
    }

    async fn open(&mut self, revision: u64) {
        let Some(client) = self.source.client().await else {
            self.back_off(Some(revision));
            return;
        };
        let p = &self.params;
        let opened = client
            .watch_selected(
                Some(p.kind),
                p.namespace.as_deref(),
                &p.label_selector,
                &p.field_selector,
                revision,
            )
            .await;
        match opened {
            Ok(stream) => {
                self.state = State::Watching {
                    client,
                    stream,
                    revision,
                }
            }
            Err(e) => self.failed(&client, e, Some(revision)).await,
        }
    }

    /// After a failure: a revision that is too old means a relist at once;
    /// anything else waits out the backoff (and a broken connection is
    /// handed back to the source).
    async fn failed(&mut self, client: &Client, e: ClientError, revision: Option<u64>) {
        if e.code() == Some(ErrorCode::TooOld) {
            tracing::debug!(kind = %self.params.kind, error = %e, "watch too old; listing again");
            self.state = State::Empty;
            return;
        }
        tracing::debug!(kind = %self.params.kind, error = %e, "watch failed");
        if e.code().is_none() {
            self.source.lost(client).await;
        }
        self.back_off(revision);
    }

    fn back_off(&mut self, revision: Option<u64>) {
        let jitter = Duration::from_millis(rand::random::<u64>() % 50);
        self.state = State::Backoff {
            until: Instant::now() + self.delay + jitter,
            revision,
        };
        self.delay = self.backoff.after(self.delay);
    }
}
