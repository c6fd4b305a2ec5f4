//! What client verbs share: where the configuration is and how to connect.

use std::path::PathBuf;

use anyhow::anyhow;
use flotilla_client::{Client, ClientConfig};

/// Global options of client verbs.
pub struct Context {
    config: Option<PathBuf>,
    server: Option<String>,
}

impl Context {
    /// From the global flags.
    pub fn new(config: Option<PathBuf>, server: Option<String>) -> Self {
        Self { config, server }
    }

    fn config_path(&self) -> anyhow::Result<PathBuf> {
        self.config
            .clone()
            .or_else(ClientConfig::default_path)
            .ok_or_else(|| anyhow!("no client configuration: pass --config or set FLOTILLA_CONFIG"))
    }

    /// The `--server` flag, if given.
    pub fn server(&self) -> Option<&str> {
        self.server.as_deref()
    }

    /// Loads the configuration, with `--server` applied.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let path = self.config_path()?;
        if !path.exists() {
            return Err(anyhow!(
                "no client configuration at {}: start a cluster with `flotilla up`, or pass --config DATA_DIR/admin.config",
                path.display()
            ));
        }
        let mut config = ClientConfig::load(&path)?;
        if let Some(server) = &self.server {
            config.server = server.clone();
        }
        Ok(config)
    }

    /// Connects to the apiserver. A client certificate outside its validity
    /// period is named (with the file it came from) before anything is sent.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let config = self.client_config()?;
        config.check_certificate(Some(&self.config_path()?))?;
        Ok(Client::connect(&config).await?)
    }
}

/// Parses a duration flag (`30s`, `5m`, `24h`).
pub fn parse_duration(s: &str) -> Result<flotilla_api::duration::Duration, String> {
    flotilla_api::duration::Duration::parse(s).map_err(|e| e.to_string())
}

/// Parses a quantity flag (`64Mi`, `2000m`).
pub fn parse_quantity(s: &str) -> Result<flotilla_api::quantity::Quantity, String> {
    flotilla_api::quantity::Quantity::parse(s).map_err(|e| e.to_string())
}
