//! The node's link to the apiserver: one connection, remade on demand with
//! backoff, so everything else can ask for a client and carry on without one.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use flotilla_api::client::{Client, ClientConfig};

struct State {
    client: Option<Client>,
    next_attempt: Instant,
    delay: Duration,
}

/// A shared, self-healing connection.
pub struct ApiLink {
    config: ClientConfig,
    state: Mutex<State>,
}

const MIN_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(5);

impl ApiLink {
    /// A link that will connect with `config`.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State {
                client: None,
                next_attempt: Instant::now(),
                delay: MIN_DELAY,
            }),
        }
    }

    /// A connected client, or `None` while the apiserver is unreachable (attempts
    /// are spaced by a growing delay, so callers may ask as often as they like).
    pub async fn client(&self) -> Option<Client> {
        let mut state = self.state.lock().await;
        if let Some(c) = &state.client {
            if c.is_connected() {
                return Some(c.clone());
            }
            state.client = None;
        }
        if Instant::now() < state.next_attempt {
            return None;
        }
        match Client::connect(&self.config).await {
            Ok(c) => {
                state.delay = MIN_DELAY;
                state.client = Some(c.clone());
                Some(c)
            }
            Err(e) => {
                tracing::debug!(error = %e, "apiserver unreachable");
                state.next_attempt = Instant::now() + state.delay;
                state.delay = (state.delay * 2).min(MAX_DELAY);
                None
            }
        }
    }

    /// Drops the connection after a failure so the next call reconnects.
    pub async fn reset(&self) {
        let mut state = self.state.lock().await;
        if state.client.as_ref().is_some_and(|c| !c.is_connected()) {
            state.client = None;
        }
    }
}
