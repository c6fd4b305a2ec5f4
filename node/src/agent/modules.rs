//! Module bytes on the node: cached on disk by digest (verified on every read),
//! downloaded from the apiserver when missing.

use std::path::PathBuf;
use std::sync::Arc;

use flotilla_api::module::digest_of;

use super::{AgentError, Result};
use flotilla_client::Link;

/// The node's module cache.
pub struct ModuleCache {
    dir: PathBuf,
    link: Option<Arc<Link>>,
}

impl ModuleCache {
    /// A cache in `dir`, filled through `link`.
    pub fn new(dir: PathBuf, link: Option<Arc<Link>>) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, link })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir
            .join(format!("{}.wasm", digest.trim_start_matches("sha256:")))
    }

    /// Stores bytes that were read locally (static instances); returns their digest.
    pub fn insert(&self, bytes: &[u8]) -> Result<String> {
        let digest = digest_of(bytes);
        let path = self.path(&digest);
        if !path.exists() {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, bytes).map_err(AgentError::io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(AgentError::io(&path))?;
        }
        Ok(digest)
    }

    /// The module's bytes, from disk or downloaded.
    pub async fn get(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.path(digest);
        if let Ok(bytes) = std::fs::read(&path) {
            if digest_of(&bytes) == digest {
                return Ok(bytes);
            }
            tracing::warn!(%digest, "cached module fails its digest; downloading again");
        }
        let link = self.link.as_ref().ok_or_else(|| {
            AgentError::Offline(format!(
                "module {digest} is not on this node and it has no control plane"
            ))
        })?;
        let client = link.client().await.ok_or_else(|| {
            AgentError::Offline(format!(
                "module {digest} is not cached and the apiserver is unreachable"
            ))
        })?;
        let bytes = client.download_module(digest).await?;
        self.insert(&bytes)?;
        Ok(bytes)
    }
}
