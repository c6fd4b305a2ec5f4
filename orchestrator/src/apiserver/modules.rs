//! Module blobs: uploaded as a chunked stream (the transport reads it),
//! checked against their digest and the Wasm validator before anything is
//! stored, then stored content-addressed through the store, so every store
//! peer holds every module.

use flotilla_api::fields::FieldSelector;
use flotilla_api::labels::LabelSelector;
use flotilla_api::module::{digest_of, is_valid_digest, Module, ModuleType};
use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::{ApiError, Consistency, ErrorCode, MODULE_CHUNK};

use super::errors::{internal, store_error, ApiResult};
use super::keys::blob_prefix;
use super::stored::decode_object;
use super::ApiServer;
use crate::store::{Action, Command, Op, Precondition};

fn invalid(msg: String) -> ApiError {
    ApiError::new(ErrorCode::Invalid, msg)
}

/// Checks bytes are valid Wasm; returns whether they are a component.
pub fn validate_wasm(bytes: &[u8]) -> Result<ModuleType, String> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("not a WebAssembly binary (no \\0asm header)".into());
    }
    let is_component = wasmparser::Parser::is_component(bytes);
    let mut validator = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
    validator
        .validate_all(bytes)
        .map_err(|e| format!("invalid WebAssembly: {e}"))?;
    Ok(if is_component {
        ModuleType::Component
    } else {
        ModuleType::Core
    })
}

impl ApiServer {
    /// Checks what an upload announces before any byte of it is read.
    pub(super) fn check_upload(&self, digest: &str, size: u64, source: &str) -> ApiResult<()> {
        if !is_valid_digest(digest) {
            return Err(invalid(format!(
                "digest: \"{digest}\" is not a digest (expected sha256:<64 hex>)"
            )));
        }
        if size > self.max_module_bytes {
            return Err(invalid(format!(
                "module {source} is {size} bytes; the limit is {} bytes (server flag --max-module-size)",
                self.max_module_bytes
            )));
        }
        Ok(())
    }

    /// Stores the uploaded `bytes` of a module announced as `digest`: they
    /// must hash to it and be valid Wasm. Storing a module already there
    /// answers the stored one.
    pub(super) async fn store_module(
        &self,
        digest: &str,
        size: u64,
        source: &str,
        bytes: Vec<u8>,
    ) -> ApiResult<Object> {
        let actual = digest_of(&bytes);
        if actual != digest {
            return Err(invalid(format!(
                "digest mismatch for {source}: the bytes hash to {actual}, the upload said {digest}; nothing was stored"
            )));
        }
        let module_type = validate_wasm(&bytes).map_err(|e| invalid(format!("{source}: {e}")))?;

        let name = Module::name_for_digest(digest);
        self.sync().await?;
        if let Some(existing) = self.read(Kind::Module, "", &name)? {
            return Ok(existing);
        }
        let hex = digest.trim_start_matches("sha256:");
        for (i, chunk) in bytes.chunks(MODULE_CHUNK).enumerate() {
            let op = Op {
                key: format!("{}{i:06}", blob_prefix(hex)),
                precondition: Precondition::None,
                action: Action::Put(chunk.to_vec()),
            };
            self.store
                .propose(Command { ops: vec![op] })
                .await
                .map_err(store_error)?;
        }
        let mut module = Object::new_empty(Kind::Module, "", &name);
        if let Object::Module(m) = &mut module {
            m.spec.digest = digest.to_string();
            m.spec.size = size;
            m.spec.module_type = module_type;
            m.spec.source = source.to_string();
        }
        match self.create(module).await {
            Ok(o) => Ok(o),
            Err(e) if e.code == ErrorCode::AlreadyExists => self
                .read(Kind::Module, "", &name)?
                .ok_or_else(|| internal("module vanished after upload")),
            Err(e) => Err(e),
        }
    }

    /// A stored module's bytes, in the chunks they were stored in.
    /// Refuses `node` a module no instance bound to it runs: a node
    /// downloads only what it is to run.
    pub(super) async fn node_runs_module(&self, node: &str, digest: &str) -> ApiResult<()> {
        let selectors = (
            LabelSelector::default(),
            FieldSelector::parse(&format!("spec.nodeName={node}"))
                .map_err(|e| internal(format!("the node's field selector: {e}")))?,
        );
        let mut continue_token = String::new();
        loop {
            let page = self
                .list_objects(
                    Kind::Instance,
                    None,
                    &selectors,
                    Consistency::Linearizable,
                    (flotilla_client::LIST_PAGE, &continue_token),
                )
                .await?;
            let runs = page
                .items
                .iter()
                .any(|o| matches!(o, Object::Instance(i) if i.spec.module == digest));
            if runs {
                return Ok(());
            }
            if page.continue_token.is_empty() {
                break;
            }
            continue_token = page.continue_token;
        }
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "forbidden: node:{node} may not get modules \"{}\": no instance bound to {node} runs {digest}",
                Module::name_for_digest(digest)
            ),
        ))
    }

    pub(super) async fn module_chunks(&self, digest: &str) -> ApiResult<Vec<Vec<u8>>> {
        if !is_valid_digest(digest) {
            return Err(invalid(format!(
                "digest: \"{digest}\" is not a digest (expected sha256:<64 hex>)"
            )));
        }
        self.sync().await?;
        let name = Module::name_for_digest(digest);
        let stored = self.read_stored(Kind::Module, "", &name)?.ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("module {digest} not found"))
        })?;
        decode_object(&stored)?;
        let hex = digest.trim_start_matches("sha256:");
        let chunks = self
            .store
            .reader()
            .scan(&blob_prefix(hex))
            .map_err(internal)?;
        Ok(chunks.into_iter().map(|(_, chunk)| chunk.value).collect())
    }
}
