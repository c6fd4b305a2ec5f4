//! The on-disk compile cache: `<digest>.<kind>.<engine>.cwasm` files that this
//! node wrote after compiling a module itself.
//!
//! Loading a compiled artifact runs its machine code, so the only files ever
//! loaded are ones named for this exact engine build and configuration, in a
//! directory only this node's user can write.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmparser::{Parser, Validator, WasmFeatures};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use super::{Compiled, RuntimeError};

pub(crate) struct CompileCache {
    dir: PathBuf,
    /// Names the engine build and configuration; artifacts of any other engine
    /// are never considered.
    engine_tag: String,
}

impl CompileCache {
    pub(crate) fn open(dir: &Path, engine: &Engine) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            engine_tag: format!(
                "wasmtime-{}-{:016x}",
                super::engine::WASMTIME_VERSION,
                hasher.finish()
            ),
        })
    }

    fn path(&self, digest: &str, component: bool) -> PathBuf {
        let kind = if component { "component" } else { "module" };
        self.dir
            .join(format!("{digest}.{kind}.{}.cwasm", self.engine_tag))
    }

    /// The compiled module for `digest`: from the cache if this node compiled
    /// it before, else validated, compiled and written to the cache. Returns
    /// whether it came from the cache.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(Compiled, bool), RuntimeError> {
        check_digest(digest)?;
        let component = Parser::is_component(bytes);
        let path = self.path(digest, component);
        if path.is_file() {
            match load(engine, &path, component) {
                Ok(compiled) => return Ok((compiled, true)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "dropping unusable cached artifact");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }

        validate(bytes)?;
        let (compiled, serialized) = if component {
            let c = Component::new(engine, bytes)
                .map_err(|e| RuntimeError::Compile(format!("{e:#}")))?;
            let serialized = c.serialize();
            (compiled_component(engine, c), serialized)
        } else {
            let m =
                Module::new(engine, bytes).map_err(|e| RuntimeError::Compile(format!("{e:#}")))?;
            let serialized = m.serialize();
            (Compiled::Core(m), serialized)
        };
        // A cache that cannot be written costs a recompile next time, nothing
        // more.
        match serialized {
            Ok(artifact) => {
                if let Err(e) = write_atomically(&path, &artifact) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write compile cache");
                }
            }
            Err(e) => tracing::warn!(digest, error = %e, "cannot serialize compiled module"),
        }
        Ok((compiled, false))
    }
}

/// Digests name files: only `[A-Za-z0-9:_-]` (e.g. `sha256:ab12..`).
fn check_digest(digest: &str) -> Result<(), RuntimeError> {
    let ok = !digest.is_empty()
        && digest.len() <= 200
        && digest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Invalid(format!(
            "digest {digest:?} is not of the form ALGORITHM:HEX"
        )))
    }
}

fn validate(bytes: &[u8]) -> Result<(), RuntimeError> {
    let mut validator = Validator::new_with_features(WasmFeatures::default());
    validator
        .validate_all(bytes)
        .map(|_| ())
        .map_err(|e| RuntimeError::Invalid(e.to_string()))
}

fn compiled_component(engine: &Engine, component: Component) -> Compiled {
    let mut exports_http = false;
    let mut exports_run = false;
    for (name, _) in component.component_type().exports(engine) {
        // Any 0.2.x version of the interface.
        exports_http |= name.starts_with("wasi:http/incoming-handler@0.2");
        exports_run |= name.starts_with("wasi:cli/run@0.2");
    }
    Compiled::Component {
        component,
        exports_http,
        exports_run,
    }
}

#[allow(unsafe_code)]
fn load(engine: &Engine, path: &Path, component: bool) -> wasmtime::Result<Compiled> {
    // SAFETY: `deserialize_file` trusts the file to be an artifact wasmtime
    // produced. Files are only read from this node's own cache directory
    // (mode 0700), under a name that includes this engine's compatibility hash,
    // and are only ever written there by `load_or_compile` after compiling them
    // itself (atomically, via rename); wasmtime additionally checks the
    // header and engine compatibility.
    if component {
        let c = unsafe { Component::deserialize_file(engine, path)? };
        Ok(compiled_component(engine, c))
    } else {
        let m = unsafe { Module::deserialize_file(engine, path)? };
        Ok(Compiled::Core(m))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn second_runtime_loads_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = wat::parse_str(
            r#"(module
                (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                (memory (export "memory") 1)
                (func (export "_start") (call $exit (i32.const 0))))"#,
        )
        .unwrap();
        let first = WasmtimeRuntime::new(config(dir.path())).unwrap();
        let p = first.prepare("sha256:c0ffee", bytes.clone()).await.unwrap();
        assert!(!p.from_cache());
        assert_eq!(p.kind, ModuleKind::Core);
        assert_eq!(p.world, World::Command);
        let files: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(
            files[0].starts_with("sha256:c0ffee.module.wasmtime-48.0.8-"),
            "{files:?}"
        );
        assert!(files[0].ends_with(".cwasm"), "{files:?}");
        drop(first);

        let second = WasmtimeRuntime::new(config(dir.path())).unwrap();
        let t = Instant::now();
        let p = second.prepare("sha256:c0ffee", bytes).await.unwrap();
        assert!(p.from_cache());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // And it runs.
        let log = Captured::default();
        let mut h = second
            .start(&p, launch("default/cached", log.sink()))
            .unwrap();
        assert_eq!(h.wait().await, Exit::Code(0));
    }

    #[tokio::test]
    async fn a_corrupt_cache_file_is_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = wat::parse_str("(module (func (export \"_start\")))").unwrap();
        let rt = WasmtimeRuntime::new(config(dir.path())).unwrap();
        rt.prepare("sha256:01", bytes.clone()).await.unwrap();
        let file = std::fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&file, b"garbage").unwrap();
        let p = rt.prepare("sha256:01", bytes).await.unwrap();
        assert!(!p.from_cache());
        assert!(std::fs::metadata(&file).unwrap().len() > 7);
    }

    #[tokio::test]
    async fn digests_that_are_not_file_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rt = WasmtimeRuntime::new(config(dir.path())).unwrap();
        let bytes = wat::parse_str("(module (func (export \"_start\")))").unwrap();
        let err = rt.prepare("../../etc/x", bytes).await.unwrap_err();
        assert!(matches!(err, RuntimeError::Invalid(_)), "{err}");
    }
}
