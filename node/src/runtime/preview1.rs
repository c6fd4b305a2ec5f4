//! WASI preview1 core modules: `_start` on a task, like a command component.

use wasmtime::{InstancePre, Store};
use wasmtime_wasi::p1::WasiP1Ctx;

use super::command::spawn_command;
use super::host::{Host, StoreParams};
use super::{Compiled, InstanceHandle, Launch, Prepared, Result, RuntimeError, RuntimeInner};

pub(crate) fn start(
    rt: &RuntimeInner,
    prepared: &Prepared,
    launch: Launch,
) -> Result<InstanceHandle> {
    let pre = instance_pre(rt, prepared, &launch.name)?;
    let (params, stop_signal) = StoreParams::new(rt, launch).with_stop_signal();
    let engine = rt.engine.clone();
    Ok(spawn_command(stop_signal, move |stop| async move {
        let mut store = params.store(&engine, params.p1());
        let result = tokio::select! {
            biased;
            () = stop => return super::Exit::Stopped,
            r = run(&pre, &mut store) => r,
        };
        match result {
            Ok(()) => super::Exit::Code(0),
            Err(e) => super::Exit::from_error(&e, store.data().memory.refused()),
        }
    }))
}

async fn run(
    pre: &InstancePre<Host<WasiP1Ctx>>,
    store: &mut Store<Host<WasiP1Ctx>>,
) -> wasmtime::Result<()> {
    let instance = pre.instantiate_async(&mut *store).await?;
    let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
    start.call_async(&mut *store, ()).await
}

/// Links once per prepared module; later starts reuse it.
fn instance_pre(
    rt: &RuntimeInner,
    prepared: &Prepared,
    name: &str,
) -> Result<InstancePre<Host<WasiP1Ctx>>> {
    let compiled = prepared.wasmtime()?;
    if let Some(pre) = compiled.core_pre.get() {
        return Ok(pre.clone());
    }
    let Compiled::Core(module) = &compiled.compiled else {
        return Err(RuntimeError::WorldMismatch {
            stated: super::World::Command,
            detail: "is not a core module".into(),
        });
    };
    let pre = rt
        .core_linker
        .instantiate_pre(module)
        .map_err(|e| RuntimeError::Instantiate {
            name: name.to_string(),
            message: format!("{e:#}"),
        })?;
    Ok(compiled.core_pre.get_or_init(|| pre).clone())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::test_support::*;
    use super::super::*;

    const PRELUDE: &str = r#"
        (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
        (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "args_sizes_get"
            (func $args_sizes_get (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "environ_sizes_get"
            (func $environ_sizes_get (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "environ_get"
            (func $environ_get (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "poll_oneoff"
            (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "fd_read"
            (func $fd_read (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        ;; write(1, ptr, len) through one iovec at 0
        (func $write (param $ptr i32) (param $len i32)
            (i32.store (i32.const 0) (local.get $ptr))
            (i32.store (i32.const 4) (local.get $len))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
    "#;

    /// A WASI command module: the prelude's imports and helpers plus `body`.
    fn module(body: &str) -> Vec<u8> {
        wat::parse_str(format!("(module {PRELUDE} {body})")).unwrap()
    }

    async fn run_with(
        body: &str,
        configure: impl FnOnce(&mut RuntimeConfig, &mut Launch),
    ) -> (Exit, Captured) {
        let dir = tempfile::tempdir().unwrap();
        let log = Captured::default();
        let mut cfg = config(dir.path());
        let mut l = launch("default/test", log.sink());
        configure(&mut cfg, &mut l);
        let rt = WasmtimeRuntime::new(cfg).unwrap();
        let p = rt.prepare("sha256:t", module(body)).await.unwrap();
        let mut h = rt.start(&p, l).unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(10), h.wait())
            .await
            .expect("instance did not end within 10 s");
        (exit, log)
    }

    /// `_start` sleeps 60 s in the host (poll_oneoff on one relative clock
    /// subscription), then exits 7.
    const SLEEP_60_S: &str = r#"
        (func (export "_start")
            (i64.store (i32.const 256) (i64.const 0))          ;; userdata
            (i32.store8 (i32.const 264) (i32.const 0))         ;; tag: clock
            (i32.store (i32.const 272) (i32.const 1))          ;; id: monotonic
            (i64.store (i32.const 280) (i64.const 60000000000));; timeout
            (i64.store (i32.const 288) (i64.const 0))          ;; precision
            (i32.store16 (i32.const 296) (i32.const 0))        ;; flags: relative
            (drop (call $poll_oneoff (i32.const 256) (i32.const 512) (i32.const 1) (i32.const 600)))
            (call $proc_exit (i32.const 7)))"#;

    async fn run(body: &str) -> (Exit, Captured) {
        run_with(body, |_, _| {}).await
    }

    #[tokio::test]
    async fn proc_exit_0_completes() {
        let (exit, _) = run(r#"(func (export "_start") (call $proc_exit (i32.const 0)))"#).await;
        assert_eq!(exit, Exit::Code(0));
        assert_eq!(exit.reason(), "Completed");
    }

    #[tokio::test]
    async fn returning_from_start_completes() {
        let (exit, _) = run(r#"(func (export "_start"))"#).await;
        assert_eq!(exit, Exit::Code(0));
    }

    #[tokio::test]
    async fn proc_exit_1_is_an_error() {
        let (exit, _) = run(r#"(func (export "_start") (call $proc_exit (i32.const 1)))"#).await;
        assert_eq!(exit, Exit::Code(1));
        assert_eq!(exit.reason(), "Error");
        assert_eq!(exit.message(), "exited with code 1");
    }

    #[tokio::test]
    async fn unreachable_traps_with_a_backtrace() {
        let (exit, _) = run(r#"(func $boom unreachable)
               (func (export "_start") (call $boom))"#)
        .await;
        let Exit::Trap(msg) = &exit else {
            panic!("expected a trap, got {exit:?}")
        };
        assert!(msg.contains("unreachable"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
        assert_eq!(exit.reason(), "Trapped");
    }

    #[tokio::test]
    async fn growing_past_the_memory_limit_is_oom() {
        let (exit, _) = run_with(
            r#"(func (export "_start")
                   (drop (memory.grow (i32.const 32)))
                   (call $proc_exit (i32.const 0)))"#,
            |_, l| l.memory_limit_bytes = 1 << 20,
        )
        .await;
        let Exit::MemoryLimit(msg) = &exit else {
            panic!("expected OOM, got {exit:?}")
        };
        assert!(
            msg.contains(
                "memory limit 1048576 bytes exceeded: memory.grow to 2162688 bytes refused"
            ),
            "{msg}"
        );
        assert_eq!(exit.reason(), "OOMKilled");
    }

    #[tokio::test]
    async fn growing_within_the_limit_is_fine() {
        let (exit, _) = run_with(
            r#"(func (export "_start")
                   (if (i32.lt_s (memory.grow (i32.const 8)) (i32.const 0)) (then unreachable)))"#,
            |_, l| l.memory_limit_bytes = 1 << 20,
        )
        .await;
        assert_eq!(exit, Exit::Code(0));
    }

    #[tokio::test]
    async fn an_endless_loop_hits_the_busy_timeout() {
        let t = Instant::now();
        let (exit, _) = run(r#"(func (export "_start") (loop $l (br $l)))"#).await;
        let Exit::CpuLimit(msg) = &exit else {
            panic!("expected CpuLimit, got {exit:?}")
        };
        assert!(msg.contains("busy timeout 500 ms"), "{msg}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(exit.reason(), "CPULimitExceeded");
    }

    #[tokio::test]
    async fn a_guest_that_calls_the_host_is_not_busy() {
        // 30 writes, 30 ms of spinning apart: far more than the busy timeout in
        // total, but never that long without a host call.
        let (exit, log) = run_with(
            r#"(data (i32.const 100) ".")
               (func $spin (local $i i32)
                   (local.set $i (i32.const 0))
                   (loop $l
                       (local.set $i (i32.add (local.get $i) (i32.const 1)))
                       (br_if $l (i32.lt_u (local.get $i) (i32.const 30000000)))))
               (func (export "_start") (local $n i32)
                   (loop $l
                       (call $spin)
                       (call $write (i32.const 100) (i32.const 1))
                       (local.set $n (i32.add (local.get $n) (i32.const 1)))
                       (br_if $l (i32.lt_u (local.get $n) (i32.const 30)))))"#,
            |c, _| c.busy_timeout = Duration::from_millis(300),
        )
        .await;
        assert_eq!(exit, Exit::Code(0), "{}", log.stdout());
        assert_eq!(log.stdout(), ".".repeat(30));
    }

    #[tokio::test]
    async fn stdout_reaches_the_log_sink() {
        let (exit, log) = run(r#"(data (i32.const 100) "hello\n")
               (func (export "_start") (call $write (i32.const 100) (i32.const 6)))"#)
        .await;
        assert_eq!(exit, Exit::Code(0));
        assert_eq!(log.stdout(), "hello\n");
        assert_eq!(log.stderr(), "");
    }

    #[tokio::test]
    async fn args_and_env_are_what_launch_gives() {
        // Writes the argv buffer, then the environ buffer (NUL-separated).
        let body = r#"
            (func (export "_start")
                (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
                (drop (call $args_get (i32.const 1024) (i32.const 2048)))
                (call $write (i32.const 2048) (i32.load (i32.const 20)))
                (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
                (drop (call $environ_get (i32.const 1024) (i32.const 4096)))
                (call $write (i32.const 4096) (i32.load (i32.const 20))))"#;
        let (exit, log) = run_with(body, |_, l| {
            l.args = vec!["--port".into(), "80".into()];
            l.env = vec![("GREETING".into(), "hi".into())];
        })
        .await;
        assert_eq!(exit, Exit::Code(0));
        // Nothing of the node's own environment leaks in; the stop signal is
        // announced.
        assert_eq!(
            log.stdout(),
            "test\0--port\080\0GREETING=hi\0FLOTILLA_STOP_SIGNAL=stdin\0"
        );
    }

    #[tokio::test]
    async fn stop_ends_a_looping_guest() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.busy_timeout = Duration::from_secs(60);
        let rt = WasmtimeRuntime::new(cfg).unwrap();
        let p = rt
            .prepare(
                "sha256:loop",
                module(r#"(func (export "_start") (loop $l (br $l)))"#),
            )
            .await
            .unwrap();
        let mut h = rt
            .start(&p, launch("default/loop", Captured::default().sink()))
            .unwrap();
        // Cancel-safe: a wait that times out leaves the handle usable.
        assert!(tokio::time::timeout(Duration::from_millis(200), h.wait())
            .await
            .is_err());
        let t = Instant::now();
        h.stop();
        let exit = tokio::time::timeout(Duration::from_secs(1), h.wait())
            .await
            .expect("stop was not prompt");
        assert_eq!(exit, Exit::Stopped);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(h.wait().await, Exit::Stopped);
    }

    #[tokio::test]
    async fn stop_ends_a_sleeping_guest() {
        let dir = tempfile::tempdir().unwrap();
        let rt = WasmtimeRuntime::new(config(dir.path())).unwrap();
        let p = rt
            .prepare("sha256:sleep", module(SLEEP_60_S))
            .await
            .unwrap();
        let mut h = rt
            .start(&p, launch("default/sleep", Captured::default().sink()))
            .unwrap();
        // Sleeping in the host is not busy: it outlives the 500 ms busy timeout.
        assert!(tokio::time::timeout(Duration::from_millis(800), h.wait())
            .await
            .is_err());
        h.stop();
        let exit = tokio::time::timeout(Duration::from_millis(500), h.wait())
            .await
            .expect("stop was not prompt");
        assert_eq!(exit, Exit::Stopped);
    }

    #[tokio::test]
    async fn asking_to_stop_closes_the_guests_stdin() {
        // Blocks in fd_read(0); exits 0 at end of input, 3 if it read bytes.
        let body = r#"
            (func (export "_start")
                (i32.store (i32.const 0) (i32.const 1024))
                (i32.store (i32.const 4) (i32.const 64))
                (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
                (call $proc_exit (select (i32.const 0) (i32.const 3)
                    (i32.eqz (i32.load (i32.const 16))))))"#;
        let dir = tempfile::tempdir().unwrap();
        let rt = WasmtimeRuntime::new(config(dir.path())).unwrap();
        let p = rt.prepare("sha256:stdin", module(body)).await.unwrap();
        let mut h = rt
            .start(&p, launch("default/stdin", Captured::default().sink()))
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(800), h.wait())
                .await
                .is_err(),
            "stdin stays open until the node asks"
        );
        assert!(h.request_stop(), "a command guest can be asked");
        let exit = tokio::time::timeout(Duration::from_secs(5), h.wait())
            .await
            .expect("the guest saw the end of stdin");
        assert_eq!(exit, Exit::Code(0));
        assert!(!h.request_stop(), "asked once");
    }

    #[tokio::test]
    async fn a_guest_that_ignores_the_request_runs_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let rt = WasmtimeRuntime::new(config(dir.path())).unwrap();
        let p = rt.prepare("sha256:deaf", module(SLEEP_60_S)).await.unwrap();
        let mut h = rt
            .start(&p, launch("default/deaf", Captured::default().sink()))
            .unwrap();
        assert!(h.request_stop());
        assert!(tokio::time::timeout(Duration::from_millis(800), h.wait())
            .await
            .is_err());
        h.stop();
        let exit = tokio::time::timeout(Duration::from_millis(500), h.wait())
            .await
            .expect("stop was not prompt");
        assert_eq!(exit, Exit::Stopped);
    }

    #[tokio::test]
    async fn a_cpu_limit_throttles_a_busy_guest() {
        // The same work takes several times longer at 200 millicores.
        let body = r#"
            (func (export "_start") (local $i i32)
                (loop $l
                    (local.set $i (i32.add (local.get $i) (i32.const 1)))
                    (br_if $l (i32.lt_u (local.get $i) (i32.const 150000000)))))"#;
        let t = Instant::now();
        let (exit, _) = run_with(body, |c, _| c.busy_timeout = Duration::from_secs(30)).await;
        assert_eq!(exit, Exit::Code(0));
        let unthrottled = t.elapsed();
        let t = Instant::now();
        let (exit, _) = run_with(body, |c, l| {
            c.busy_timeout = Duration::from_secs(30);
            l.cpu_limit_millis = 200;
        })
        .await;
        assert_eq!(exit, Exit::Code(0));
        let throttled = t.elapsed();
        assert!(
            throttled > unthrottled * 2,
            "throttled {throttled:?} vs unthrottled {unthrottled:?}"
        );
    }

    #[tokio::test]
    async fn a_component_world_is_refused_for_a_core_module() {
        let dir = tempfile::tempdir().unwrap();
        let rt = WasmtimeRuntime::new(config(dir.path())).unwrap();
        let p = rt
            .prepare("sha256:w", module(r#"(func (export "_start"))"#))
            .await
            .unwrap();
        let mut l = launch("default/w", Captured::default().sink());
        l.world = Some(World::Http);
        let err = rt.start(&p, l).unwrap_err();
        assert!(matches!(err, RuntimeError::WorldMismatch { .. }), "{err}");
        assert!(err.to_string().contains("core module"), "{err}");
    }
}
