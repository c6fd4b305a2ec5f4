//! The node's network: the network layer (an address for every instance from
//! this node's range, routes to every other node's range through the QUIC
//! tunnel) and the service layer (names and cluster IPs to ready endpoints,
//! picked by outstanding requests then round robin). Guests' outgoing HTTP
//! and the ingress both go through [`Network`]; nothing uses the host's
//! resolver or network except egress a spec allows.
//!
//! The two layers are apart on purpose, as in Kubernetes: with the service
//! layer off or stale, names and cluster IPs fail and instance IPs still route.
//! Tables live in memory and keep their last state while the control plane is
//! unreachable.

mod addresses;
mod coalesce;
pub mod ingress;
mod metrics;
mod tables;
pub mod tunnel;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::time::Instant as Deadline;

use flotilla_api::cidr::Cidr;
use flotilla_api::instance::{outbound_address_allowed, outbound_host_allows};

use crate::body::{self, Body};
use crate::runtime::{BoxFuture, HttpHandle, Outbound, OutboundError};

pub use addresses::Addresses;
pub use metrics::ForwarderMetrics;
pub use tables::{ServiceKey, Tables};

/// How long a request may wait for its response head, from where it enters
/// the node (the ingress, a guest) to the instance that answers, tunnel hops
/// included: one deadline, carried along.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The deadline of a request entering now.
pub fn deadline() -> Deadline {
    Deadline::now() + REQUEST_TIMEOUT
}

/// Where a local instance's current http handle is kept (the supervisor
/// swaps it on every restart).
pub type HttpSlot = Arc<Mutex<Option<HttpHandle>>>;

/// Called when egress is denied: (namespace, instance, message), for an Event.
pub type DenialSink = Arc<dyn Fn(&str, &str, &str) + Send + Sync>;

/// The node's network state and the way out for every request.
pub struct Network {
    node: String,
    tables: RwLock<Tables>,
    addresses: Mutex<Addresses>,
    local: Mutex<HashMap<(String, String), HttpSlot>>,
    tunnel: tunnel::TunnelClient,
    services_on: AtomicBool,
    outstanding: Mutex<HashMap<Ipv4Addr, usize>>,
    turn: AtomicUsize,
    denials: Option<DenialSink>,
    metrics: ForwarderMetrics,
}

/// Where a request goes.
#[derive(Debug, PartialEq)]
enum Target {
    Service(ServiceKey),
    Instance(Ipv4Addr),
    Outside,
}

/// A synthesized answer for a service without a ready endpoint: fast, plain,
/// 503.
pub fn no_endpoint_response(service: &ServiceKey) -> http::Response<Body> {
    plain(
        503,
        format!(
            "service {}/{} has no ready endpoint\n",
            service.0, service.1
        ),
    )
}

/// A plain-text response.
pub fn plain(status: u16, text: String) -> http::Response<Body> {
    let mut r = http::Response::new(body::full(text));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl Network {
    /// A network for `node`, keeping its address assignments in `dir`,
    /// counting requests to services in `metrics`.
    pub fn new(
        node: &str,
        dir: &Path,
        tunnel: tunnel::TunnelClient,
        denials: Option<DenialSink>,
        metrics: ForwarderMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            node: node.to_string(),
            tables: RwLock::new(Tables::default()),
            addresses: Mutex::new(Addresses::load(dir)),
            local: Mutex::new(HashMap::new()),
            tunnel,
            services_on: AtomicBool::new(true),
            outstanding: Mutex::new(HashMap::new()),
            turn: AtomicUsize::new(0),
            denials,
            metrics,
        })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Turns the service layer (names, cluster IPs) on or off; instance IPs
    /// route either way.
    pub fn set_services(&self, on: bool) {
        self.services_on.store(on, Ordering::SeqCst);
    }

    /// Drops the forwarder's metrics of a deleted Service.
    pub fn forget_service_metrics(&self, svc: &ServiceKey) {
        self.metrics.forget(svc);
    }

    /// Replaces the tables (from the API).
    pub fn update_tables(&self, f: impl FnOnce(&mut Tables)) {
        let mut t = self.tables.write().unwrap_or_else(|p| p.into_inner());
        f(&mut t);
        if let Some(cidr) = t.node_cidr(&self.node) {
            self.addresses
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_range(cidr);
        }
    }

    /// A read view of the tables.
    pub fn tables(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The address of a local instance, assigned on first ask from this node's
    /// range (none while the range is unknown).
    pub fn address_of(&self, key: &(String, String)) -> Option<Ipv4Addr> {
        self.addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .assign(key)
    }

    /// Frees a local instance's address and forgets its handle.
    pub fn release(&self, key: &(String, String)) {
        self.addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(key);
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Makes a local instance reachable at its address.
    pub fn register(&self, key: &(String, String), slot: HttpSlot) {
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), slot);
    }

    fn local_handle(&self, key: &(String, String)) -> Option<HttpHandle> {
        let slot = self
            .local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()?;
        let handle = slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
        handle
    }

    /// Probes the tunnel to the node at `addr` (see [`tunnel::TunnelClient::probe`]).
    pub async fn probe_tunnel(
        &self,
        node: &str,
        addr: &str,
    ) -> Result<tunnel::TunnelProbe, OutboundError> {
        self.tunnel.probe(node, addr).await
    }

    /// This node's range, once known.
    pub fn own_range(&self) -> Option<Cidr> {
        self.tables().node_cidr(&self.node)
    }

    fn classify(&self, host: &str, caller_namespace: &str) -> Result<Target, OutboundError> {
        let services_on = self.services_on.load(Ordering::SeqCst);
        let tables = self.tables();
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            if let Some(svc) = tables.service_by_ip(ip) {
                if !services_on {
                    return Err(OutboundError::Unavailable(format!(
                        "{ip} is a cluster IP and this node's service forwarder is off"
                    )));
                }
                return Ok(Target::Service(svc));
            }
            if tables.node_for_ip(ip).is_some() {
                return Ok(Target::Instance(ip));
            }
            return Ok(Target::Outside);
        }
        let name = host
            .trim_end_matches('.')
            .trim_end_matches(".cluster.local");
        let (name, svc_suffix) = match name.strip_suffix(".svc") {
            Some(n) => (n, true),
            None => (name, false),
        };
        let parts: Vec<&str> = name.split('.').collect();
        let key = match parts.as_slice() {
            [service] => Some((caller_namespace.to_string(), service.to_string())),
            [service, namespace] => Some((namespace.to_string(), service.to_string())),
            _ => None,
        };
        if let Some(key) = key {
            let known = tables.service(&key).is_some();
            if known || svc_suffix || parts.len() == 1 {
                if !services_on {
                    return Err(OutboundError::Unavailable(format!(
                        "{host}: this node's service forwarder is off"
                    )));
                }
                if !known {
                    return Err(OutboundError::NotFound(format!(
                        "no service \"{}\" in namespace \"{}\"",
                        key.1, key.0
                    )));
                }
                return Ok(Target::Service(key));
            }
        }
        Ok(Target::Outside)
    }

    /// Ready endpoints of a service, the least busy first (ties in turn).
    fn pick(&self, svc: &ServiceKey) -> Vec<Ipv4Addr> {
        let mut ready = self.tables().ready_endpoints(svc);
        if ready.is_empty() {
            return ready;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) % ready.len();
        ready.rotate_left(turn);
        let busy = self.outstanding.lock().unwrap_or_else(|p| p.into_inner());
        ready.sort_by_key(|ip| busy.get(ip).copied().unwrap_or(0));
        ready
    }

    /// Sends a request to a service: a ready endpoint, another one after a
    /// connect failure for idempotent methods, a 503 when there is none.
    pub async fn to_service(
        &self,
        svc: &ServiceKey,
        req: http::Request<Body>,
        deadline: Deadline,
    ) -> Result<http::Response<Body>, OutboundError> {
        let started = Instant::now();
        let candidates = self.pick(svc);
        if candidates.is_empty() {
            self.metrics.observe(svc, "no_endpoint", started);
            return Ok(no_endpoint_response(svc));
        }
        let result = self.to_endpoints(svc, candidates, req, deadline).await;
        self.metrics
            .observe(svc, metrics::result_of(&result), started);
        result
    }

    /// Tries `candidates` in order: more than one only for an idempotent
    /// request without a body (a streamed body cannot be sent twice), after
    /// a failure that happened before anything was sent.
    async fn to_endpoints(
        &self,
        svc: &ServiceKey,
        candidates: Vec<Ipv4Addr>,
        req: http::Request<Body>,
        deadline: Deadline,
    ) -> Result<http::Response<Body>, OutboundError> {
        use http_body::Body as _;
        let idempotent = matches!(
            *req.method(),
            http::Method::GET
                | http::Method::HEAD
                | http::Method::OPTIONS
                | http::Method::PUT
                | http::Method::DELETE
        );
        let attempts = if idempotent && req.body().is_end_stream() {
            candidates.len().min(3)
        } else {
            1
        };
        let (parts, body) = req.into_parts();
        let mut body = Some(body);
        let mut last = None;
        for ip in candidates.into_iter().take(attempts) {
            let body = body.take().unwrap_or_else(body::empty);
            let attempt = http::Request::from_parts(clone_parts(&parts), body);
            match self.to_instance(ip, attempt, deadline).await {
                Ok(r) => return Ok(r),
                Err(e @ (OutboundError::Unavailable(_) | OutboundError::Refused(_))) => {
                    last = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            OutboundError::Unavailable(format!("service {}/{}: no endpoint answered", svc.0, svc.1))
        }))
    }

    /// Sends a request to an instance address: in-process when it is on this
    /// node, through the tunnel to its node otherwise.
    pub async fn to_instance(
        &self,
        ip: Ipv4Addr,
        req: http::Request<Body>,
        deadline: Deadline,
    ) -> Result<http::Response<Body>, OutboundError> {
        let _busy = Busy::new(&self.outstanding, ip);
        let route = self.tables().node_for_ip(ip);
        match route {
            Some(route) if route.name == self.node => self.serve_local(ip, req, deadline).await,
            Some(route) => {
                if route.tunnel.is_empty() {
                    return Err(OutboundError::Unavailable(format!(
                        "node {} has no tunnel address yet",
                        route.name
                    )));
                }
                self.tunnel
                    .send(&route.name, &route.tunnel, ip, req, deadline)
                    .await
            }
            None => Err(OutboundError::NotFound(format!(
                "{ip} is in no node's instance range"
            ))),
        }
    }

    /// Serves a request for an address of this node (from the tunnel or from
    /// a local caller).
    pub async fn serve_local(
        &self,
        ip: Ipv4Addr,
        req: http::Request<Body>,
        deadline: Deadline,
    ) -> Result<http::Response<Body>, OutboundError> {
        let key = self
            .addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .key_of(ip);
        let Some(key) = key else {
            return Err(OutboundError::Refused(format!(
                "no instance has address {ip} on node {}",
                self.node
            )));
        };
        let Some(handle) = self.local_handle(&key) else {
            return Err(OutboundError::Refused(format!(
                "instance {}/{} at {ip} is not serving http",
                key.0, key.1
            )));
        };
        match tokio::time::timeout_at(deadline, handle.serve(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Ok(plain(
                502,
                format!("instance {}/{} failed: {e}\n", key.0, key.1),
            )),
            Err(_) => Err(OutboundError::Timeout(format!(
                "instance {}/{} did not answer in time",
                key.0, key.1
            ))),
        }
    }

    /// The way out for one instance's guest.
    pub fn outbound_for(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
        allowed: Vec<String>,
    ) -> Arc<dyn Outbound> {
        Arc::new(InstanceOutbound {
            net: self.clone(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            allowed,
        })
    }

    async fn egress(
        &self,
        caller: &InstanceOutbound,
        req: http::Request<Body>,
        deadline: Deadline,
    ) -> Result<http::Response<Body>, OutboundError> {
        let uri = req.uri().clone();
        let scheme = uri.scheme_str().unwrap_or("http").to_string();
        let host = uri.host().unwrap_or("").to_string();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let allowed = caller
            .allowed
            .iter()
            .any(|p| outbound_host_allows(p, &scheme, &host, port));
        if !allowed {
            let message = format!(
                "outgoing HTTP to {scheme}://{host}:{port} is denied: not in spec.allowedOutboundHosts"
            );
            if let Some(sink) = &self.denials {
                sink(&caller.namespace, &caller.name, &message);
            }
            return Err(OutboundError::Denied(message));
        }
        if scheme != "http" {
            return Err(OutboundError::Invalid(format!(
                "{scheme}://{host}: only plain http egress is supported so far"
            )));
        }
        let addr = self
            .vetted_address(caller, &scheme, &host, port, deadline)
            .await?;
        egress_http(&host, addr, req, deadline).await
    }

    /// Where `host` resolves, if the guest may go there: an internal address
    /// (loopback, link-local, private) only when its allowlist names it, so a
    /// name that resolves to one (the cloud's metadata service, the node's
    /// own ports) is refused. The address is resolved once and connected to
    /// as it was checked.
    async fn vetted_address(
        &self,
        caller: &InstanceOutbound,
        scheme: &str,
        host: &str,
        port: u16,
        deadline: Deadline,
    ) -> Result<std::net::SocketAddr, OutboundError> {
        let target = format!("{host}:{port}");
        let resolve_by = deadline.min(Deadline::now() + Duration::from_secs(5));
        let resolved =
            match tokio::time::timeout_at(resolve_by, tokio::net::lookup_host(&target)).await {
                Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
                Ok(Err(e)) => return Err(OutboundError::NotFound(format!("{host}: {e}"))),
                Err(_) => {
                    return Err(OutboundError::Timeout(format!(
                        "{host}: resolving timed out"
                    )))
                }
            };
        let Some(first) = resolved.first().copied() else {
            return Err(OutboundError::NotFound(format!(
                "{host} resolves to no address"
            )));
        };
        match resolved
            .iter()
            .find(|a| outbound_address_allowed(&caller.allowed, scheme, a.ip(), port))
        {
            Some(addr) => Ok(*addr),
            None => {
                let message = format!(
                    "outgoing HTTP to {scheme}://{host}:{port} is denied: {host} resolves to {}, an internal address; name that address or its range in spec.allowedOutboundHosts to allow it",
                    first.ip()
                );
                if let Some(sink) = &self.denials {
                    sink(&caller.namespace, &caller.name, &message);
                }
                Err(OutboundError::Denied(message))
            }
        }
    }
}

/// Counts a request against an endpoint while it is in flight.
struct Busy<'a> {
    map: &'a Mutex<HashMap<Ipv4Addr, usize>>,
    ip: Ipv4Addr,
}

impl<'a> Busy<'a> {
    fn new(map: &'a Mutex<HashMap<Ipv4Addr, usize>>, ip: Ipv4Addr) -> Self {
        *map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(ip)
            .or_default() += 1;
        Self { map, ip }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut r = http::Request::new(());
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = parts.version;
    *r.headers_mut() = parts.headers.clone();
    r.into_parts().0
}

/// One HTTP/1.1 request to an allowed outside host at the address it was
/// vetted at; both bodies stream.
async fn egress_http(
    host: &str,
    to: std::net::SocketAddr,
    req: http::Request<Body>,
    deadline: Deadline,
) -> Result<http::Response<Body>, OutboundError> {
    let addr = format!("{host}:{}", to.port());
    let connect_by = deadline.min(Deadline::now() + Duration::from_secs(10));
    let stream = match tokio::time::timeout_at(connect_by, tokio::net::TcpStream::connect(to)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(OutboundError::Refused(format!("{addr}: {e}"))),
        Err(_) => return Err(OutboundError::Timeout(format!("{addr}: connect timed out"))),
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| OutboundError::Refused(format!("{addr}: {e}")))?;
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    parts.uri = path
        .parse()
        .map_err(|e| OutboundError::Invalid(format!("{e}")))?;
    if !parts.headers.contains_key(http::header::HOST) {
        if let Ok(v) = http::HeaderValue::from_str(&addr) {
            parts.headers.insert(http::header::HOST, v);
        }
    }
    let response = tokio::time::timeout_at(
        deadline,
        sender.send_request(http::Request::from_parts(parts, body)),
    )
    .await
    .map_err(|_| OutboundError::Timeout(format!("{addr}: no response")))?
    .map_err(|e| OutboundError::Refused(format!("{addr}: {e}")))?;
    Ok(response.map(body::from))
}

/// One instance's view of the network: its namespace for short names, and
/// the outside hosts its spec allows.
struct InstanceOutbound {
    net: Arc<Network>,
    namespace: String,
    name: String,
    allowed: Vec<String>,
}

impl Outbound for InstanceOutbound {
    fn send(
        &self,
        req: http::Request<Body>,
        deadline: Deadline,
    ) -> BoxFuture<'static, Result<http::Response<Body>, OutboundError>> {
        let net = self.net.clone();
        let me = InstanceOutbound {
            net: self.net.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            allowed: self.allowed.clone(),
        };
        Box::pin(async move {
            let host = req.uri().host().unwrap_or("").to_string();
            if host.is_empty() {
                return Err(OutboundError::Invalid("the request has no host".into()));
            }
            match net.classify(&host, &me.namespace)? {
                Target::Service(svc) => net.to_service(&svc, req, deadline).await,
                Target::Instance(ip) => net.to_instance(ip, req, deadline).await,
                Target::Outside => net.egress(&me, req, deadline).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Arc<Network> {
        let dir = tempfile::tempdir().unwrap();
        let n = Network::new(
            "a",
            dir.path(),
            tunnel::TunnelClient::disabled(),
            None,
            ForwarderMetrics::default(),
        );
        n.update_tables(|t| {
            t.set_node("a", "10.244.0.0/24".parse().unwrap(), "");
            t.set_node("b", "10.244.1.0/24".parse().unwrap(), "127.0.0.1:1");
            t.set_service(
                ("default".into(), "backend".into()),
                "10.96.0.9".parse().ok(),
                None,
            );
        });
        n
    }

    #[tokio::test]
    async fn requests_to_a_service_are_counted_by_service_and_result() {
        let registry = flotilla_telemetry::Registry::new();
        let dir = tempfile::tempdir().unwrap();
        let n = Network::new(
            "a",
            dir.path(),
            tunnel::TunnelClient::disabled(),
            None,
            ForwarderMetrics::register(&registry),
        );
        n.update_tables(|t| {
            t.set_node("a", "10.244.0.0/24".parse().unwrap(), "");
            t.set_service(("default".into(), "backend".into()), None, None);
        });
        let svc = ("default".to_string(), "backend".to_string());
        for _ in 0..2 {
            let r = n
                .to_service(&svc, http::Request::new(body::empty()), deadline())
                .await
                .unwrap();
            assert_eq!(r.status(), 503);
        }
        let text = registry.render();
        assert!(
            text.contains("flotilla_forwarder_requests_total{namespace=\"default\",service=\"backend\",result=\"no_endpoint\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_forwarder_request_duration_seconds_count{namespace=\"default\",service=\"backend\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn names_cluster_ips_instance_ips_and_the_outside() {
        let n = net();
        let svc = Target::Service(("default".into(), "backend".into()));
        assert_eq!(n.classify("backend", "default").unwrap(), svc);
        assert_eq!(n.classify("backend.default", "other").unwrap(), svc);
        assert_eq!(n.classify("backend.default.svc", "other").unwrap(), svc);
        assert_eq!(
            n.classify("backend.default.svc.cluster.local", "x")
                .unwrap(),
            svc
        );
        assert_eq!(n.classify("10.96.0.9", "x").unwrap(), svc);
        assert_eq!(
            n.classify("10.244.1.7", "x").unwrap(),
            Target::Instance("10.244.1.7".parse().unwrap())
        );
        assert_eq!(
            n.classify("example.com", "default").unwrap(),
            Target::Outside
        );
        assert_eq!(n.classify("127.0.0.1", "default").unwrap(), Target::Outside);
        assert!(matches!(
            n.classify("nothere", "default"),
            Err(OutboundError::NotFound(_))
        ));
        n.set_services(false);
        assert!(n.classify("backend", "default").is_err());
        assert_eq!(
            n.classify("10.244.1.7", "x").unwrap(),
            Target::Instance("10.244.1.7".parse().unwrap())
        );
    }
}
