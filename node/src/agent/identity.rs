//! The node's identity: joined once with a token (the CA pinned by the token's
//! fingerprint, the certificate by CSR), then kept in the data dir so a restart
//! needs no token. The certificate is renewed in place (`renewal`); one that
//! expired while the node was away needs a new join, which a restart with
//! `--token` does (same name, same data dir).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use flotilla_client::tls;
use flotilla_client::token::JoinToken;
use flotilla_client::wire::{RequestV1, ResponseV1};
use flotilla_client::{Client, ClientConfig};

use super::{AgentError, Result};

/// What a joined node keeps.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeFile {
    /// The node's name.
    pub name: String,
    /// The apiserver it talks to.
    pub server: String,
}

/// A node's credentials.
#[derive(Clone)]
pub struct Identity {
    /// Client configuration (CA, certificate `node:NAME`, key).
    pub client: ClientConfig,
    /// Where it is kept (`DATA_DIR/node.config`).
    pub path: PathBuf,
}

/// What to tell the operator of a node whose certificate is outside its
/// validity period: which certificate, since when, and how to rejoin.
pub fn expired_message(name: &str, path: &Path, problem: &str) -> String {
    format!(
        "the certificate of node {name} (node:{name}, in {}) {problem}; the apiserver refuses it, so the node stays offline (its instances keep running). To rejoin: make a token with `flotilla token create` and restart the node with --token TOKEN (same --name and --data-dir)",
        path.display()
    )
}

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    AgentError::io(p)
}

/// Loads the identity from `dir`, or joins with `token` and saves it.
pub async fn load_or_join(
    dir: &Path,
    server: Option<&str>,
    token: Option<&str>,
    name: &str,
) -> Result<Identity> {
    flotilla_client::files::create_private_dir(dir).map_err(io(dir))?;
    let node_file = path(dir, "node.json");
    let config_file = path(dir, "node.config");
    if node_file.exists() && config_file.exists() {
        let text = std::fs::read_to_string(&node_file).map_err(io(&node_file))?;
        let file: NodeFile = serde_json::from_str(&text)
            .map_err(|e| AgentError::setting(node_file.display().to_string(), e))?;
        if file.name != name {
            return Err(AgentError::Config(format!(
                "{} belongs to node \"{}\", not \"{name}\"; use another --data-dir",
                dir.display(),
                file.name
            )));
        }
        let mut client = ClientConfig::load(&config_file)?;
        if let Some(server) = server {
            client.server = server.to_string();
        }
        match (client.check_certificate(Some(&config_file)), token) {
            // Offline past expiry, and given a token: join again as itself.
            (Err(e), Some(token)) => {
                tracing::warn!(error = %e, "joining again with the token given");
                let server = client.server.clone();
                return join(dir, &server, token, name).await;
            }
            // Valid; or expired without a token, which the link reports (with
            // what to do) while the instances keep running.
            _ => {
                return Ok(Identity {
                    client,
                    path: config_file,
                })
            }
        }
    }
    let (Some(server), Some(token_text)) = (server, token) else {
        return Err(AgentError::Config(format!(
            "{} holds no node identity: the first start needs --server and --token",
            dir.display()
        )));
    };
    join(dir, server, token_text, name).await
}

/// Joins with a token and saves the identity in `dir`.
async fn join(dir: &Path, server: &str, token_text: &str, name: &str) -> Result<Identity> {
    let node_file = path(dir, "node.json");
    let config_file = path(dir, "node.config");
    let token = JoinToken::parse(token_text)
        .map_err(|e| AgentError::join("reading the token")(e.into()))?;
    let anon = Client::connect_pinned(server, &token.ca_sha256)
        .await
        .map_err(|e| AgentError::join("connecting to the server")(e.into()))?;
    let (key_pem, csr_pem) = tls::generate_csr(&format!("node:{name}"))
        .map_err(|e| AgentError::join("making a key and a certificate request")(e.into()))?;
    let resp = anon
        .call(RequestV1::JoinNode {
            token: token_text.trim().to_string(),
            name: name.to_string(),
            csr_pem,
        })
        .await
        .map_err(|e| AgentError::join("asking to join")(e.into()))?;
    let ResponseV1::JoinedNode {
        cert_pem,
        ca_cert_pem,
    } = resp
    else {
        return Err(AgentError::join("asking to join")(
            format!("unexpected answer: {resp:?}").into(),
        ));
    };
    let client = ClientConfig {
        server: server.to_string(),
        identity: format!("node:{name}"),
        ca_cert: ca_cert_pem,
        client_cert: cert_pem,
        client_key: key_pem,
    };
    client.save(&config_file).map_err(io(&config_file))?;
    let file = NodeFile {
        name: name.to_string(),
        server: server.to_string(),
    };
    let text = serde_json::to_string_pretty(&file)
        .map_err(|e| AgentError::setting(node_file.display().to_string(), e))?;
    std::fs::write(&node_file, text).map_err(io(&node_file))?;
    Ok(Identity {
        client,
        path: config_file,
    })
}
