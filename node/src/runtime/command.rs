//! The command world: `wasi:cli/run` of a component, on its own task.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use wasmtime::Store;
use wasmtime_wasi::p2::bindings::CommandPre;

use super::host::{Host, StoreParams, P2};
use super::{
    stopped, Compiled, Exit, InstanceHandle, Launch, Prepared, Result, RuntimeError, RuntimeInner,
    World,
};

pub(crate) fn start(
    rt: &RuntimeInner,
    prepared: &Prepared,
    launch: Launch,
) -> Result<InstanceHandle> {
    let pre = command_pre(rt, prepared, &launch.name)?;
    let (params, stop_signal) = StoreParams::new(rt, launch).with_stop_signal();
    let engine = rt.engine.clone();
    Ok(spawn_command(stop_signal, move |stop| async move {
        let mut store = params.store(&engine, params.p2());
        let result = tokio::select! {
            biased;
            () = stop => return Exit::Stopped,
            r = run(&pre, &mut store) => r,
        };
        match result {
            Ok(Ok(())) => Exit::Code(0),
            // `wasi:cli/run` returned `err`: the conventional exit code 1.
            Ok(Err(())) => Exit::Code(1),
            Err(e) => Exit::from_error(&e, store.data().memory.refused()),
        }
    }))
}

async fn run(
    pre: &CommandPre<Host<P2>>,
    store: &mut Store<Host<P2>>,
) -> wasmtime::Result<Result<(), ()>> {
    let command = pre.instantiate_async(&mut *store).await?;
    command.wasi_cli_run().call_run(&mut *store).await
}

/// Spawns the task of a command-world instance. `body` gets a future that
/// resolves when the instance is stopped; dropping `stop_signal` asks it to
/// stop on its own.
pub(crate) fn spawn_command<F, Fut>(stop_signal: tokio::io::DuplexStream, body: F) -> InstanceHandle
where
    F: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Exit> + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(body(Box::pin(stopped(stop_rx))));
    InstanceHandle {
        world: World::Command,
        stop: Arc::new(stop_tx),
        task: Some(task),
        exit: None,
        http: None,
        stop_signal: std::sync::Mutex::new(Some(stop_signal)),
    }
}

/// Links once per prepared component; later starts reuse it.
fn command_pre(rt: &RuntimeInner, prepared: &Prepared, name: &str) -> Result<CommandPre<Host<P2>>> {
    let compiled = prepared.wasmtime()?;
    if let Some(pre) = compiled.command_pre.get() {
        return Ok(pre.clone());
    }
    let Compiled::Component { component, .. } = &compiled.compiled else {
        return Err(RuntimeError::WorldMismatch {
            stated: World::Command,
            detail: "is not a component".into(),
        });
    };
    let instantiate = |e: wasmtime::Error| RuntimeError::Instantiate {
        name: name.to_string(),
        message: format!("{e:#}"),
    };
    let pre = rt
        .component_linker
        .instantiate_pre(component)
        .map_err(instantiate)?;
    let pre = CommandPre::new(pre).map_err(instantiate)?;
    Ok(compiled.command_pre.get_or_init(|| pre).clone())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::*;
    use super::super::*;

    /// A component exporting `wasi:cli/run` whose `run` is `body` (a core
    /// function returning the `result` discriminant: 0 = ok, 1 = err).
    fn run_component(body: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(component
                (core module $m (func (export "run") (result i32) {body}))
                (core instance $i (instantiate $m))
                (func $run (result (result)) (canon lift (core func $i "run")))
                (instance $cli (export "run" (func $run)))
                (export "wasi:cli/run@0.2.0" (instance $cli)))"#
        ))
        .unwrap()
    }

    async fn start(bytes: Vec<u8>) -> (Prepared, InstanceHandle) {
        let dir = tempfile::tempdir().unwrap();
        let rt = WasmtimeRuntime::new(config(dir.path())).unwrap();
        let p = rt.prepare("sha256:cmd", bytes).await.unwrap();
        let h = rt
            .start(&p, launch("default/cmd", Captured::default().sink()))
            .unwrap();
        (p, h)
    }

    #[tokio::test]
    async fn run_ok_completes_and_err_is_exit_1() {
        let (p, mut h) = start(run_component("i32.const 0")).await;
        assert_eq!((p.kind, p.world), (ModuleKind::Component, World::Command));
        assert_eq!(h.world(), World::Command);
        assert_eq!(h.wait().await, Exit::Code(0));

        let (_, mut h) = start(run_component("i32.const 1")).await;
        assert_eq!(h.wait().await, Exit::Code(1));
    }

    #[tokio::test]
    async fn a_trapping_component_traps() {
        let (_, mut h) = start(run_component("unreachable")).await;
        let exit = h.wait().await;
        assert!(
            matches!(&exit, Exit::Trap(m) if m.contains("unreachable")),
            "{exit:?}"
        );
    }

    #[tokio::test]
    async fn a_looping_component_hits_the_busy_timeout_and_can_be_stopped() {
        let looping = run_component("(loop $l (br $l)) i32.const 0");
        let (_, mut h) = start(looping.clone()).await;
        let exit = tokio::time::timeout(Duration::from_secs(3), h.wait())
            .await
            .unwrap();
        assert!(matches!(exit, Exit::CpuLimit(_)), "{exit:?}");

        let (_, mut h) = start(looping).await;
        h.stop();
        let exit = tokio::time::timeout(Duration::from_millis(300), h.wait())
            .await
            .unwrap();
        assert_eq!(exit, Exit::Stopped);
    }

    #[tokio::test]
    async fn world_detection_and_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let rt = WasmtimeRuntime::new(config(dir.path())).unwrap();
        // Exports only a (fake) incoming-handler: detected as http; its types
        // do not match wasi:http, so a request fails cleanly.
        let http = wat::parse_str(
            r#"(component
                (core module $m (func (export "handle")))
                (core instance $i (instantiate $m))
                (func $handle (canon lift (core func $i "handle")))
                (instance $h (export "handle" (func $handle)))
                (export "wasi:http/incoming-handler@0.2.0" (instance $h)))"#,
        )
        .unwrap();
        let p = rt.prepare("sha256:http", http).await.unwrap();
        assert_eq!((p.kind, p.world), (ModuleKind::Component, World::Http));
        match rt.start(&p, launch("default/fake-http", Captured::default().sink())) {
            Err(err) => assert!(matches!(err, RuntimeError::Instantiate { .. }), "{err}"),
            Ok(h) => {
                assert_eq!(h.world(), World::Http);
                let req = ::http::Request::get("/")
                    .body(crate::body::empty())
                    .unwrap();
                let err = h.serve_http(req).await.unwrap_err();
                assert!(matches!(err, RuntimeError::Handler(_)), "{err}");
            }
        }

        // A command component stated as http.
        let p = rt
            .prepare("sha256:cmd", run_component("i32.const 0"))
            .await
            .unwrap();
        let mut l = launch("default/cmd", Captured::default().sink());
        l.world = Some(World::Http);
        let err = rt.start(&p, l).unwrap_err();
        assert!(
            err.to_string()
                .contains("does not export wasi:http/incoming-handler"),
            "{err}"
        );

        // A component that exports neither.
        let none = wat::parse_str("(component)").unwrap();
        let err = rt.prepare("sha256:none", none).await.unwrap_err();
        assert!(matches!(err, RuntimeError::Unsupported(_)), "{err}");

        // serve_http on a command instance.
        let h = rt
            .start(&p, launch("default/cmd", Captured::default().sink()))
            .unwrap();
        let err = h
            .serve_http(::http::Request::new(crate::body::empty()))
            .await
            .unwrap_err();
        assert!(matches!(err, RuntimeError::NotHttp), "{err}");
    }
}
