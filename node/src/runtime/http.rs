//! The http world: the component is pre-instantiated once (`ProxyPre`); every
//! request gets a fresh store and instance, at most `http_concurrency` at once
//! (as `wasmtime serve` does). Bodies stream: the guest reads the request
//! body as it arrives and its response body leaves as it writes it.

use std::sync::Arc;

use tokio::sync::{oneshot, watch, Semaphore};
use wasmtime::component::Resource;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};
use wasmtime_wasi_http::WasiHttpView;

use super::host::{Host, StoreParams, P2};
use super::{
    stopped, Compiled, Exit, HttpBackend, InstanceHandle, Launch, Prepared, Result, RuntimeError,
    RuntimeInner, World,
};
use crate::body::{self, Body};

pub(crate) struct HttpServer {
    pre: ProxyPre<Host<P2>>,
    params: StoreParams,
    engine: Engine,
    /// In-flight requests of this instance. Stops a request flood from taking
    /// every instance slot of the node's pool.
    permits: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

pub(crate) fn start(
    rt: &RuntimeInner,
    prepared: &Prepared,
    launch: Launch,
) -> Result<InstanceHandle> {
    let pre = proxy_pre(rt, prepared, &launch.name)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = HttpServer {
        pre,
        params: StoreParams::new(rt, launch),
        engine: rt.engine.clone(),
        permits: Arc::new(Semaphore::new(rt.config.http_concurrency.max(1))),
        stop: stop_rx,
    };
    Ok(InstanceHandle {
        world: World::Http,
        stop: Arc::new(stop_tx),
        task: None,
        exit: None,
        http: Some(HttpBackend::Wasmtime(Arc::new(server))),
        stop_signal: std::sync::Mutex::new(None),
    })
}

impl HttpServer {
    pub(crate) async fn serve(&self, req: http::Request<Body>) -> Result<http::Response<Body>> {
        if *self.stop.borrow() {
            return Err(RuntimeError::Stopped);
        }
        tokio::select! {
            r = self.serve_inner(req) => r,
            () = stopped(self.stop.clone()) => Err(RuntimeError::Stopped),
        }
    }

    async fn serve_inner(&self, mut req: http::Request<Body>) -> Result<http::Response<Body>> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RuntimeError::Stopped)?;

        // wasi:http needs an authority; a bare path with no Host header gets one.
        if req.uri().authority().is_none() && !req.headers().contains_key(http::header::HOST) {
            req.headers_mut().insert(
                http::header::HOST,
                http::HeaderValue::from_static("localhost"),
            );
        }
        let path = req.uri().path().to_string();
        let handler = |e: wasmtime::Error| RuntimeError::Handler(format!("{e:#}"));
        let mut store = self.params.store(&self.engine, self.params.p2());
        let (tx, rx) = oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .map_err(handler)?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(tx)
            .map_err(handler)?;

        // The guest runs on its own task: it may keep writing the body (or
        // running) after it has set the response. The permit is held until
        // it ends.
        let pre = self.pre.clone();
        let stop = self.stop.clone();
        let timeout = self.params.request_timeout;
        let params = self.params.clone();
        let deadline_path = path.clone();
        let task = tokio::spawn(async move {
            let _permit = permit;
            let result = tokio::select! {
                biased;
                () = stopped(stop) => return Err(Exit::Stopped),
                () = tokio::time::sleep(timeout) => {
                    // Dropping the call drops the store: the guest, its
                    // memory and its slot go at once.
                    let message = format!(
                        "the request ran past its deadline of {timeout:?} and was ended"
                    );
                    params.node_line(&format!(
                        "request to {deadline_path} failed: DeadlineExceeded: {message}"
                    ));
                    return Err(Exit::Deadline(message));
                }
                r = handle(&pre, &mut store, incoming, out) => r,
            };
            result.map_err(|e| Exit::from_error(&e, store.data().memory.refused()))
        });

        match rx.await {
            // The body streams from the guest's task, which holds the permit
            // until the guest ends.
            Ok(Ok(resp)) => Ok(resp.map(body::from)),
            Ok(Err(code)) => Err(RuntimeError::Handler(format!(
                "guest answered with error code {code:?}"
            ))),
            // The response outparam was dropped unset: the guest ended (or
            // failed) without answering.
            Err(_) => {
                let message = match task.await {
                    Ok(Ok(())) => "guest returned without setting a response".to_string(),
                    Ok(Err(exit)) => format!("{}: {}", exit.reason(), exit.message()),
                    Err(e) => format!("request task failed: {e}"),
                };
                // The caller sees it in the answer; the instance's log keeps it
                // for whoever asks later why requests fail.
                self.params
                    .node_line(&format!("request to {path} failed: {message}"));
                Err(RuntimeError::Handler(message))
            }
        }
    }
}

async fn handle(
    pre: &ProxyPre<Host<P2>>,
    store: &mut Store<Host<P2>>,
    req: Resource<HostIncomingRequest>,
    out: Resource<HostResponseOutparam>,
) -> wasmtime::Result<()> {
    let proxy = pre.instantiate_async(&mut *store).await?;
    proxy
        .wasi_http_incoming_handler()
        .call_handle(&mut *store, req, out)
        .await
}

/// Links once per prepared component; later starts reuse it.
fn proxy_pre(rt: &RuntimeInner, prepared: &Prepared, name: &str) -> Result<ProxyPre<Host<P2>>> {
    let compiled = prepared.wasmtime()?;
    if let Some(pre) = compiled.proxy_pre.get() {
        return Ok(pre.clone());
    }
    let Compiled::Component { component, .. } = &compiled.compiled else {
        return Err(RuntimeError::NotHttp);
    };
    let instantiate = |e: wasmtime::Error| RuntimeError::Instantiate {
        name: name.to_string(),
        message: format!("{e:#}"),
    };
    let pre = rt
        .component_linker
        .instantiate_pre(component)
        .map_err(instantiate)?;
    let pre = ProxyPre::new(pre).map_err(instantiate)?;
    Ok(compiled.proxy_pre.get_or_init(|| pre).clone())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::*;
    use super::super::*;

    /// The `hello` example guest (http world), built by the examples workspace.
    fn hello_wasm() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/target/wasm32-wasip2/release/hello.wasm"
        );
        std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}; build the examples first"))
    }

    #[tokio::test]
    #[ignore = "needs the example guests: cd examples && cargo build --release"]
    async fn hello_example_answers_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let rt = WasmtimeRuntime::new(config(dir.path())).unwrap();
        let p = rt.prepare("sha256:hello", hello_wasm()).await.unwrap();
        assert_eq!((p.kind, p.world), (ModuleKind::Component, World::Http));
        let mut l = launch("default/hello", Captured::default().sink());
        l.env = vec![("FLOTILLA_INSTANCE_NAME".into(), "hello-1".into())];
        let handle = std::sync::Arc::new(rt.start(&p, l).unwrap());
        assert_eq!(handle.world(), World::Http);

        // More requests at once than the concurrency limit (4).
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..10 {
            let handle = handle.clone();
            requests.spawn(async move {
                let req = ::http::Request::get(format!("http://example.test/{i}"))
                    .body(crate::body::empty())
                    .unwrap();
                let resp = handle.serve_http(req).await?;
                let (parts, body) = resp.into_parts();
                let body = crate::body::collect(body, 1 << 20).await.unwrap();
                Ok::<_, RuntimeError>(::http::Response::from_parts(parts, body))
            });
        }
        while let Some(answer) = requests.join_next().await {
            let resp = answer.unwrap().unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.body().as_ref(), b"hello from hello-1\n");
        }
        // A path-only request (no authority, no Host header) works too, also
        // through a detached `HttpHandle`.
        let get = || {
            ::http::Request::get("/")
                .body(crate::body::empty())
                .unwrap()
        };
        assert_eq!(handle.serve_http(get()).await.unwrap().status(), 200);
        let detached = handle.http_handle().unwrap();
        assert_eq!(detached.serve(get()).await.unwrap().status(), 200);

        let mut handle = std::sync::Arc::into_inner(handle).unwrap();
        handle.stop();
        let exit = tokio::time::timeout(Duration::from_secs(1), handle.wait())
            .await
            .unwrap();
        assert_eq!(exit, Exit::Stopped);
        let err = handle.serve_http(get()).await.unwrap_err();
        assert!(matches!(err, RuntimeError::Stopped), "{err}");
        let err = detached.serve(get()).await.unwrap_err();
        assert!(matches!(err, RuntimeError::Stopped), "{err}");
    }
}
