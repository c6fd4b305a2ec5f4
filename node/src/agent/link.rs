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
    max_delay: Duration,
}

const MIN_DELAY: Duration = Duration::from_millis(200);

impl ApiLink {
    /// A link that will connect with `config`, retrying at most `max_delay` apart
    /// (a quarter of the lease interval keeps the node's report after an
    /// apiserver restart well within one lease period).
    pub fn new(config: ClientConfig, max_delay: Duration) -> Self {
        Self {
            max_delay: max_delay.max(MIN_DELAY),
            config,
            state: Mutex::new(State {
                client: None,
                next_attempt: Instant::now(),
                delay: MIN_DELAY,
            }),
        }
    }

    /// The apiserver's address.
    pub fn server(&self) -> &str {
        &self.config.server
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
                let jitter = Duration::from_millis(rand::random::<u64>() % 100);
                state.next_attempt = Instant::now() + state.delay + jitter;
                state.delay = (state.delay * 2).min(self.max_delay);
                None
            }
        }
    }

    /// Closes the connection after a failure: every stream on it ends (so
    /// watches relist) and the next call reconnects.
    pub async fn reset(&self) {
        let mut state = self.state.lock().await;
        if let Some(c) = state.client.take() {
            c.close();
        }
    }
}
