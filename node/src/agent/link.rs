//! The node's link to the apiserver: one connection, remade on demand with
//! backoff, so everything else can ask for a client and carry on without one.
//! Each attempt uses the node's current certificate (renewed under the link);
//! one outside its validity period is not offered to the apiserver at all:
//! the link says once, as an error, which certificate it is and how to
//! rejoin, and stays offline instead of failing handshakes in a loop.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use flotilla_api::client::{Client, ClientConfig, SharedClientConfig};

use super::identity::expired_message;

struct State {
    client: Option<Client>,
    next_attempt: Instant,
    delay: Duration,
    /// The certificate already reported as unusable (so it is said once).
    reported: Option<String>,
}

/// A shared, self-healing connection.
pub struct ApiLink {
    config: SharedClientConfig,
    /// The node's name and where its certificate is kept, for messages.
    name: String,
    path: PathBuf,
    server: String,
    state: Mutex<State>,
    max_delay: Duration,
}

const MIN_DELAY: Duration = Duration::from_millis(200);

impl ApiLink {
    /// A link for node `name` that will connect with `config` (kept at
    /// `path`), retrying at most `max_delay` apart (a quarter of the lease
    /// interval keeps the node's report after an apiserver restart well within
    /// one lease period).
    pub fn new(config: ClientConfig, name: &str, path: PathBuf, max_delay: Duration) -> Self {
        Self {
            max_delay: max_delay.max(MIN_DELAY),
            server: config.server.clone(),
            config: SharedClientConfig::new(config),
            name: name.to_string(),
            path,
            state: Mutex::new(State {
                client: None,
                next_attempt: Instant::now(),
                delay: MIN_DELAY,
                reported: None,
            }),
        }
    }

    /// The apiserver's address.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The credentials connections are made with (renewal replaces the
    /// certificate in it).
    pub fn config(&self) -> &SharedClientConfig {
        &self.config
    }

    /// Where the node's credentials are kept.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Why the node's certificate cannot be used now, as a message for its
    /// operator; `None` while it is valid.
    pub fn certificate_problem(&self) -> Option<String> {
        let config = self.config.get();
        let info = match flotilla_api::tls::CertInfo::from_pem(&config.client_cert) {
            Ok(info) => info,
            Err(e) => {
                let path = self.path.display();
                return Some(format!(
                    "the certificate in {path} does not parse ({e}); join the node again with a new token"
                ));
            }
        };
        let problem = info.problem_at(time::OffsetDateTime::now_utc())?;
        Some(expired_message(&self.name, &self.path, &problem))
    }

    /// A connected client, or `None` while the apiserver is unreachable (attempts
    /// are spaced by a growing delay, so callers may ask as often as they like)
    /// or the node's certificate is not valid.
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
        if let Some(problem) = self.certificate_problem() {
            if state.reported.as_deref() != Some(problem.as_str()) {
                tracing::error!("{problem}");
                state.reported = Some(problem);
            }
            // Checked again now and then: nothing but a new join helps, but a
            // clock put right does.
            state.next_attempt = Instant::now() + Duration::from_secs(5);
            return None;
        }
        state.reported = None;
        match Client::connect(&self.config.get()).await {
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
