//! Renewal of the node's certificate (`node:NAME`), as the kubelet rotates its
//! client certificate: once the renewal point has passed (`--cert-renew-at`, a
//! fraction of the certificate's validity period, two thirds by default), the
//! agent makes a new key and asks the apiserver to sign it
//! (`RenewCertificate`) over a connection of its own made with the
//! certificate it replaces; the apiserver signs only for the identity that
//! certificate proves, and only while it is valid. The new
//! certificate is written to `DATA_DIR/node.config` (so a restart uses it),
//! and used from then on for new connections to the apiserver and other
//! nodes and by the node's own listener. Connections already made keep going.
//!
//! A certificate that expired (the node was offline past its end) cannot be
//! renewed: the link says so and how to rejoin; this loop stops.
//!
//! Must never: change the node's identity, or put a certificate in use that
//! does not match the key it was asked for.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use flotilla_client::tls::{self, CertInfo, IssuedCert, RenewAt};
use flotilla_client::wire::{RequestV1, ResponseV1};
use flotilla_client::Client;

use flotilla_client::Link;

/// Longest a renewal request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the loop is.
enum State {
    /// Waiting for the current certificate's renewal point.
    Waiting,
    /// Past the renewal point: asking the apiserver, again after each failure
    /// (`failures` so far) with a growing delay that stays well inside what is
    /// left of the certificate's validity.
    Renewing { failures: u32 },
    /// Nothing more to do in this process: renewal is off, or the certificate
    /// expired or does not parse (the link reports it).
    Done,
}

/// What a renewed certificate goes into.
pub struct Renewal {
    /// The link, whose configuration holds the certificate (and is what new
    /// connections, the tunnel's among them, read).
    pub link: Arc<Link>,
    /// Where the node's credentials are kept (rewritten with the new
    /// certificate).
    pub path: std::path::PathBuf,
    /// The node's listener, given the new certificate too.
    pub listener: Option<quinn::Endpoint>,
    /// When to renew.
    pub renew_at: RenewAt,
}

/// Renews the node's certificate for as long as the agent runs.
pub async fn run(renewal: Renewal) {
    let mut state = State::Waiting;
    loop {
        state = match state {
            State::Done => return,
            other => renewal.step(other).await,
        };
    }
}

impl Renewal {
    fn current(&self) -> Option<CertInfo> {
        CertInfo::from_pem(&self.link.config().get().client_cert).ok()
    }

    async fn step(&self, state: State) -> State {
        let Some(info) = self.current() else {
            return State::Done;
        };
        let now = OffsetDateTime::now_utc();
        if now > info.not_after {
            return State::Done;
        }
        match state {
            State::Waiting => {
                let Some(due) = self.renew_at.due(&info) else {
                    return State::Done;
                };
                let wait = due - now;
                if wait.is_positive() {
                    tokio::time::sleep(wait.try_into().unwrap_or(Duration::ZERO)).await;
                }
                State::Renewing { failures: 0 }
            }
            State::Renewing { failures } => match self.renew(&info).await {
                Ok(new) => {
                    tracing::info!(
                        identity = %new.identity,
                        not_after = %new.not_after_rfc3339(),
                        path = %self.path.as_path().display(),
                        "renewed the node's certificate"
                    );
                    State::Waiting
                }
                Err(e) => {
                    let left = info.not_after - OffsetDateTime::now_utc();
                    tracing::warn!(
                        error = %e,
                        identity = %info.identity,
                        expires = %info.not_after_rfc3339(),
                        "renewing the node's certificate failed; trying again"
                    );
                    tokio::time::sleep(retry_delay(failures, left)).await;
                    State::Renewing {
                        failures: failures.saturating_add(1),
                    }
                }
            },
            State::Done => State::Done,
        }
    }

    /// One renewal: a new key, the apiserver's signature, checks, then the
    /// data dir and everything that uses the certificate.
    async fn renew(&self, current: &CertInfo) -> Result<CertInfo, String> {
        // A connection of its own, made with the current certificate: the
        // link's may have been made with an older one, which the apiserver
        // does not accept for a renewal once it has expired.
        let client = Client::connect(&self.link.config().get())
            .await
            .map_err(|e| e.to_string())?;
        let (key_pem, csr_pem) =
            tls::generate_csr(&current.identity).map_err(|e| format!("making a key: {e}"))?;
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.call(RequestV1::RenewCertificate { csr_pem }),
        )
        .await;
        client.close();
        let answer = answer
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        let ResponseV1::RenewedCertificate { cert_pem } = answer else {
            return Err(format!("unexpected answer: {answer:?}"));
        };
        let new = CertInfo::from_pem(&cert_pem).map_err(|e| format!("the new certificate: {e}"))?;
        if new.identity != current.identity {
            return Err(format!(
                "the apiserver signed {} instead of {}; kept the current certificate",
                new.identity, current.identity
            ));
        }
        if !tls::cert_matches_key(&cert_pem, &key_pem).unwrap_or(false) {
            return Err("the new certificate is not for the key sent; kept the current one".into());
        }
        let cert = IssuedCert { cert_pem, key_pem };
        let mut config = self.link.config().get();
        config.client_cert = cert.cert_pem.clone();
        config.client_key = cert.key_pem.clone();
        config
            .save(self.path.as_path())
            .map_err(|e| format!("{}: {e}", self.path.as_path().display()))?;
        if let Some(listener) = &self.listener {
            let quic =
                super::listener::quic_config(&config.ca_cert, &cert).map_err(|e| e.to_string())?;
            listener.set_server_config(Some(quic));
        }
        self.link.config().set_cert(&cert);
        Ok(new)
    }
}

/// After `failures` failed attempts with `left` of the certificate's validity
/// to go: half a second doubling, at most a tenth of what is left (so many
/// attempts fit before the end) and at most a minute, at least 100 ms.
fn retry_delay(failures: u32, left: time::Duration) -> Duration {
    let grown = Duration::from_millis(500).saturating_mul(1 << failures.min(7));
    let tenth: Duration = (left / 10_i32).try_into().unwrap_or(Duration::ZERO);
    grown
        .min(tenth)
        .min(Duration::from_secs(60))
        .max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_grow_but_stay_inside_what_is_left() {
        let year = time::Duration::days(365);
        assert_eq!(retry_delay(0, year), Duration::from_millis(500));
        assert_eq!(retry_delay(3, year), Duration::from_secs(4));
        assert_eq!(retry_delay(30, year), Duration::from_secs(60));
        assert_eq!(
            retry_delay(5, time::Duration::seconds(5)),
            Duration::from_millis(500)
        );
        assert_eq!(
            retry_delay(5, time::Duration::seconds(-5)),
            Duration::from_millis(100)
        );
    }
}
