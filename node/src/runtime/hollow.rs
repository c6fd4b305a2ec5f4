//! The hollow runtime (Kubernetes' kubemark idea): it compiles nothing and runs
//! nothing, yet to the agent its instances look alive. A command-world instance
//! "runs" until it is stopped; an http-world instance answers every request
//! with `200 hollow`. With it, the real agent code (registration, sync,
//! supervisor, reporter, probes) can load a control plane with thousands of
//! nodes from one process.
//!
//! An instance costs a stop signal and nothing else: no wasmtime `Engine`, no
//! store, no task, no thread.
//!
//! Must never: run or compile guest code.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;
use wasmparser::{Encoding, Parser, Payload};

use crate::body::Body;

use super::{
    BoxFuture, HttpBackend, InstanceHandle, Launch, ModuleKind, Prepared, Result, Runtime,
    RuntimeError, World,
};

/// What every hollow http-world instance answers.
const BODY: &[u8] = b"hollow\n";

/// A [`Runtime`] whose instances only pretend to run (for load-testing the
/// control plane with many nodes in one process). Stateless: one value serves
/// any number of nodes.
#[derive(Clone, Copy, Debug, Default)]
pub struct HollowRuntime;

impl HollowRuntime {
    /// What hollow nodes report as their runtime version.
    pub const VERSION: &'static str = "hollow";
}

impl Runtime for HollowRuntime {
    /// Reads the module's header and its top-level exports (no validation, no
    /// compilation) to tell component from core module and the world: a
    /// component exporting `wasi:cli/run` but not `wasi:http/incoming-handler`
    /// is Command, any other component Http, a core module Command.
    fn prepare(&self, digest: &str, bytes: Vec<u8>) -> BoxFuture<'_, Result<Prepared>> {
        let prepared = sniff(&bytes).map(|(kind, world)| Prepared {
            digest: digest.to_string(),
            kind,
            world,
            inner: None,
        });
        Box::pin(std::future::ready(prepared))
    }

    /// An instance in the world the spec states (else the detected one) that
    /// runs until stopped. Only a core module stated to be in the http world is
    /// refused, as the wasmtime runtime does.
    fn start(&self, prepared: &Prepared, launch: Launch) -> Result<InstanceHandle> {
        let world = launch.world.unwrap_or(prepared.world);
        if prepared.kind == ModuleKind::Core && world == World::Http {
            return Err(RuntimeError::WorldMismatch {
                stated: World::Http,
                detail: "is a core module (core modules run only in the command world)".into(),
            });
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        Ok(InstanceHandle {
            world,
            stop: Arc::new(stop_tx),
            // No task: `wait` then resolves only on stop.
            task: None,
            exit: None,
            http: (world == World::Http).then(|| HttpBackend::Hollow(HollowHttp { stop: stop_rx })),
            // Nothing runs to ask: a hollow instance is stopped at once.
            stop_signal: std::sync::Mutex::new(None),
        })
    }

    fn version(&self) -> &'static str {
        Self::VERSION
    }
}

/// Kind and world of a module from its header and top-level component exports.
/// Nested modules and components are walked past, function bodies are not read.
fn sniff(bytes: &[u8]) -> Result<(ModuleKind, World)> {
    let mut kind = None;
    // How deep inside nested modules and components the parser is.
    let mut depth = 0usize;
    let (mut exports_http, mut exports_run) = (false, false);
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| RuntimeError::Invalid(e.to_string()))? {
            Payload::Version { encoding, .. } if depth == 0 => {
                kind = Some(match encoding {
                    Encoding::Component => ModuleKind::Component,
                    Encoding::Module => ModuleKind::Core,
                });
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(exports) if depth == 0 => {
                for export in exports {
                    let name = export
                        .map_err(|e| RuntimeError::Invalid(e.to_string()))?
                        .name
                        .0;
                    exports_http |= name.starts_with("wasi:http/incoming-handler@0.2");
                    exports_run |= name.starts_with("wasi:cli/run@0.2");
                }
            }
            _ => {}
        }
    }
    match kind {
        Some(ModuleKind::Core) => Ok((ModuleKind::Core, World::Command)),
        Some(ModuleKind::Component) if exports_run && !exports_http => {
            Ok((ModuleKind::Component, World::Command))
        }
        Some(ModuleKind::Component) => Ok((ModuleKind::Component, World::Http)),
        None => Err(RuntimeError::Invalid("no wasm header".into())),
    }
}

/// The http side of a hollow instance: a canned answer until stopped.
#[derive(Clone)]
pub(crate) struct HollowHttp {
    stop: watch::Receiver<bool>,
}

impl HollowHttp {
    pub(crate) fn serve(&self, _req: http::Request<Body>) -> Result<http::Response<Body>> {
        if *self.stop.borrow() {
            return Err(RuntimeError::Stopped);
        }
        let mut resp = http::Response::new(crate::body::full(Bytes::from_static(BODY)));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::*;
    use super::super::Exit;
    use super::*;

    fn component(body: &str) -> Vec<u8> {
        wat::parse_str(format!(
            "(component (core module (func (export \"_start\"))) {body})"
        ))
        .unwrap()
    }

    /// Re-exports an imported `wasi:cli/run`.
    const EXPORTS_RUN: &str =
        "(import \"wasi:cli/run@0.2.0\" (instance $r (export \"run\" (func)))) \
                               (export \"wasi:cli/run@0.2.0\" (instance $r))";

    #[test]
    fn sniffs_kind_and_world_without_compiling() {
        let core = wat::parse_str("(module (func (export \"_start\")))").unwrap();
        assert_eq!(sniff(&core).unwrap(), (ModuleKind::Core, World::Command));
        assert_eq!(
            sniff(&component(EXPORTS_RUN)).unwrap(),
            (ModuleKind::Component, World::Command)
        );
        // Neither export (a nested component's exports do not count): http.
        assert_eq!(
            sniff(&component(&format!("(component {EXPORTS_RUN})"))).unwrap(),
            (ModuleKind::Component, World::Http)
        );
        assert!(matches!(
            sniff(b"not wasm at all"),
            Err(RuntimeError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn instances_run_until_stopped_and_answer_http() {
        let rt = HollowRuntime;
        let p = rt.prepare("sha256:x", component("")).await.unwrap();
        assert_eq!(p.world, World::Http);
        assert!(!p.from_cache());
        let mut handle = rt
            .start(&p, launch("default/h", Captured::default().sink()))
            .unwrap();
        let http = handle.http_handle().unwrap();
        let get = || {
            ::http::Request::get("/")
                .body(crate::body::empty())
                .unwrap()
        };
        let resp = http.serve(get()).await.unwrap();
        let status = resp.status().as_u16();
        let body = crate::body::collect(resp.into_body(), 1024).await.unwrap();
        assert_eq!((status, body.as_ref()), (200, BODY));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), handle.wait())
                .await
                .is_err(),
            "a hollow instance never ends on its own"
        );
        handle.stop();
        assert_eq!(handle.wait().await, Exit::Stopped);
        assert!(matches!(
            http.serve(get()).await,
            Err(RuntimeError::Stopped)
        ));

        // The command world, stated in the spec, never exits on its own either.
        let mut l = launch("default/c", Captured::default().sink());
        l.world = Some(World::Command);
        let mut handle = rt.start(&p, l).unwrap();
        assert!(handle.http_handle().is_none());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), handle.wait())
                .await
                .is_err()
        );
        handle.stop();
        assert_eq!(handle.wait().await, Exit::Stopped);
    }

    #[tokio::test]
    async fn a_core_module_is_refused_in_the_http_world() {
        let rt = HollowRuntime;
        let core = wat::parse_str("(module (func (export \"_start\")))").unwrap();
        let p = rt.prepare("sha256:core", core).await.unwrap();
        let mut l = launch("default/c", Captured::default().sink());
        l.world = Some(World::Http);
        let err = rt.start(&p, l).unwrap_err();
        assert!(matches!(err, RuntimeError::WorldMismatch { .. }), "{err}");
    }

    #[tokio::test]
    async fn wasmtime_refuses_what_a_hollow_runtime_prepared() {
        let dir = tempfile::tempdir().unwrap();
        let wasmtime = super::super::WasmtimeRuntime::new(config(dir.path())).unwrap();
        let core = wat::parse_str("(module (func (export \"_start\")))").unwrap();
        let p = HollowRuntime.prepare("sha256:core", core).await.unwrap();
        let err = wasmtime
            .start(&p, launch("default/c", Captured::default().sink()))
            .unwrap_err();
        assert!(matches!(err, RuntimeError::ForeignModule), "{err}");
    }
}
