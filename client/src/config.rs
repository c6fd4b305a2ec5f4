//! The client configuration file (`admin.config`, `~/.flotilla/config`,
//! `FLOTILLA_CONFIG`): where the apiserver is and who this client is.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{client_certificate_advice, ClientError, Result, While};
use crate::tls::{self, IssuedCert};

/// What a client needs to reach a cluster: written as `admin.config` by the first
/// server and read from `--config`, `FLOTILLA_CONFIG` or `~/.flotilla/config`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientConfig {
    /// The apiserver address, `HOST:PORT`.
    pub server: String,
    /// Who this client is (the certificate's common name), for display.
    pub identity: String,
    /// The cluster CA, PEM.
    pub ca_cert: String,
    /// The client certificate, PEM.
    pub client_cert: String,
    /// The client key, PEM.
    pub client_key: String,
}

impl ClientConfig {
    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ClientError::Config {
            path: path.display().to_string(),
            source: e.into(),
        })?;
        serde_yaml_ng::from_str(&text).map_err(|e| ClientError::Config {
            path: path.display().to_string(),
            source: e.into(),
        })
    }

    /// Writes a config file readable only by its owner.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_yaml_ng::to_string(self).map_err(std::io::Error::other)?;
        crate::files::write_private(path, text.as_bytes())
    }

    /// The default location: `~/.flotilla/config`.
    pub fn default_path() -> Option<PathBuf> {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".flotilla").join("config"))
    }

    /// The client certificate and key.
    pub fn cert(&self) -> IssuedCert {
        IssuedCert {
            cert_pem: self.client_cert.clone(),
            key_pem: self.client_key.clone(),
        }
    }

    /// Checks that the client certificate is valid now, so that an expired one
    /// is named instead of failing the TLS handshake; `origin` (where the
    /// configuration was read from) goes into the message. Returns what the
    /// certificate says about itself.
    pub fn check_certificate(&self, origin: Option<&Path>) -> Result<tls::CertInfo> {
        check_client_cert(&self.client_cert, &self.identity, origin)
    }
}

/// [`ClientConfig::check_certificate`] for a certificate given as PEM;
/// `identity` names it should it carry no common name.
pub(crate) fn check_client_cert(
    cert_pem: &str,
    identity: &str,
    origin: Option<&Path>,
) -> Result<tls::CertInfo> {
    let info = tls::CertInfo::from_pem(cert_pem).map_err(|e| ClientError::Config {
        path: origin.map_or_else(|| identity.to_string(), |p| p.display().to_string()),
        source: While::cause("clientCert", e),
    })?;
    match info.problem_at(time::OffsetDateTime::now_utc()) {
        None => Ok(info),
        Some(problem) => {
            let identity = if info.identity.is_empty() {
                identity.to_string()
            } else {
                info.identity.clone()
            };
            Err(ClientError::ClientCertificate {
                advice: client_certificate_advice(&identity),
                identity,
                origin: origin.map(|p| p.display().to_string()),
                problem,
            })
        }
    }
}

/// A client configuration that several tasks hold while its certificate is
/// renewed under them: each connection attempt reads the current one.
#[derive(Clone, Debug)]
pub struct SharedClientConfig(Arc<std::sync::RwLock<ClientConfig>>);

impl SharedClientConfig {
    /// Shares `config`.
    pub fn new(config: ClientConfig) -> Self {
        Self(Arc::new(std::sync::RwLock::new(config)))
    }

    /// The configuration as it is now.
    pub fn get(&self) -> ClientConfig {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the certificate and key (after a renewal).
    pub fn set_cert(&self, cert: &IssuedCert) {
        let mut config = self.0.write().unwrap_or_else(|p| p.into_inner());
        config.client_cert = cert.cert_pem.clone();
        config.client_key = cert.key_pem.clone();
    }
}

impl From<ClientConfig> for SharedClientConfig {
    fn from(config: ClientConfig) -> Self {
        Self::new(config)
    }
}
