//! [`Link`]: a shared, self-healing connection to the apiserver. One
//! connection, remade on demand with backoff, so that everything holding the
//! link can ask for a client and carry on without one. Each attempt uses the
//! configuration's current certificate (renewal replaces it under the link);
//! one outside its validity period is not offered to the apiserver at all:
//! the link says once, as an error, which certificate it is and what to do,
//! and stays offline instead of failing handshakes in a loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::client::Client;
use crate::config::SharedClientConfig;
use crate::tls::CertInfo;

/// Turns what is wrong with the link's certificate (`expired at …`) into the
/// whole message for its operator.
pub type CertificateAdvice = Arc<dyn Fn(&str) -> String + Send + Sync>;

struct State {
    client: Option<Client>,
    next_attempt: Instant,
    delay: Duration,
    /// The certificate problem already reported (so it is said once).
    reported: Option<String>,
}

/// A shared, self-healing connection.
pub struct Link {
    config: SharedClientConfig,
    server: String,
    /// Where the credentials are kept, for messages and for saving renewals.
    origin: Option<PathBuf>,
    advice: CertificateAdvice,
    state: Mutex<State>,
    max_delay: Duration,
}

/// The first delay after a failed attempt; it doubles up to the link's
/// maximum.
const MIN_DELAY: Duration = Duration::from_millis(200);

impl Link {
    /// A link that connects with `config`, retrying at most `max_delay` apart.
    pub fn new(config: impl Into<SharedClientConfig>, max_delay: Duration) -> Self {
        let config = config.into();
        Self {
            max_delay: max_delay.max(MIN_DELAY),
            server: config.get().server,
            config,
            origin: None,
            advice: Arc::new(|problem| {
                format!("the client certificate {problem}; the apiserver would refuse it")
            }),
            state: Mutex::new(State {
                client: None,
                next_attempt: Instant::now(),
                delay: MIN_DELAY,
                reported: None,
            }),
        }
    }

    /// Names where the credentials are kept and how a certificate problem is
    /// explained to whoever runs this process.
    pub fn with_origin(
        mut self,
        path: PathBuf,
        advice: impl Fn(&str) -> String + Send + Sync + 'static,
    ) -> Self {
        self.origin = Some(path);
        self.advice = Arc::new(advice);
        self
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

    /// Where the credentials are kept, when known.
    pub fn origin(&self) -> Option<&Path> {
        self.origin.as_deref()
    }

    /// Why the certificate cannot be used now, as a message for the operator;
    /// `None` while it is valid.
    pub fn certificate_problem(&self) -> Option<String> {
        let config = self.config.get();
        let problem = match CertInfo::from_pem(&config.client_cert) {
            Ok(info) => info.problem_at(time::OffsetDateTime::now_utc())?,
            Err(e) => format!("does not parse ({e})"),
        };
        Some((self.advice)(&problem))
    }

    /// A connected client, or `None` while the apiserver is unreachable
    /// (attempts are spaced by a growing delay, so callers may ask as often
    /// as they like) or the certificate is not valid.
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
            // Checked again now and then: nothing but new credentials help,
            // but a clock put right does.
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
    /// watches pick up again) and the next call reconnects.
    pub async fn reset(&self) {
        let mut state = self.state.lock().await;
        if let Some(c) = state.client.take() {
            c.close();
        }
    }

    /// [`Link::reset`], unless the link has already moved on from the
    /// connection of `client` (another holder saw it break first).
    pub async fn reset_if(&self, client: &Client) {
        let mut state = self.state.lock().await;
        if state
            .client
            .as_ref()
            .is_some_and(|c| c.same_connection(client))
        {
            if let Some(c) = state.client.take() {
                c.close();
            }
        }
    }
}
