//! Ingress: an HTTP/1.1 listener on every node. A request's Host header (and
//! path) picks the Service whose `spec.ingress` matches; the request goes to
//! one of its ready endpoints, on this node or through the tunnel. An unknown
//! host gets 404, a service with no ready endpoint 503, both at once. Bodies
//! stream both ways; the request's deadline starts here.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::{deadline, plain, Network};
use crate::body::{self, Body};
use crate::runtime::OutboundError;

/// Largest request body the ingress passes on (it streams, so this bounds
/// what one client can push at a guest, not what the node holds).
const MAX_BODY: usize = 1 << 30;

/// Binds `addr`; returns the bound address and the accept task.
pub async fn start(
    net: Arc<Network>,
    addr: &str,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let net = net.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let net = net.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(&net, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((local, task))
}

async fn handle(net: &Network, req: http::Request<hyper::body::Incoming>) -> http::Response<Body> {
    let deadline = deadline();
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("")
        .to_string();
    let host = host
        .rsplit_once(':')
        .map_or(host.as_str(), |(h, _)| h)
        .to_string();
    let path = req.uri().path().to_string();
    let route = net.tables().ingress_route(&host, &path);
    match route {
        None => plain(404, format!("no service is exposed for host \"{host}\"\n")),
        Some(svc) => {
            let request = req.map(|b| body::limited(body::from(b), MAX_BODY));
            match net.to_service(&svc, request, deadline).await {
                Ok(r) => r,
                Err(OutboundError::Timeout(m)) => plain(504, format!("{m}\n")),
                Err(e) => plain(502, format!("{}\n", e.message())),
            }
        }
    }
}
