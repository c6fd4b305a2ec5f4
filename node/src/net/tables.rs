//! What the network knows of the cluster: every node's instance range and
//! tunnel address (network layer), every service's cluster IP, ingress rule
//! and ready endpoints (service layer).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use flotilla_api::cidr::Cidr;

/// A service: (namespace, name).
pub type ServiceKey = (String, String);

/// A route to a node's range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRoute {
    /// Node name.
    pub name: String,
    /// Its instance range.
    pub cidr: Cidr,
    /// Its tunnel address (`host:port`), empty when not yet known.
    pub tunnel: String,
}

#[derive(Clone, Debug, Default)]
struct ServiceEntry {
    cluster_ip: Option<Ipv4Addr>,
    /// Ingress host (lowercase) and path prefix.
    ingress: Option<(String, String)>,
}

/// The tables.
#[derive(Default, Debug)]
pub struct Tables {
    nodes: BTreeMap<String, NodeRoute>,
    services: HashMap<ServiceKey, ServiceEntry>,
    by_ip: HashMap<Ipv4Addr, ServiceKey>,
    endpoints: HashMap<ServiceKey, Vec<Ipv4Addr>>,
}

impl Tables {
    /// Adds or replaces a node's route.
    pub fn set_node(&mut self, name: &str, cidr: Cidr, tunnel: &str) {
        self.nodes.insert(
            name.to_string(),
            NodeRoute {
                name: name.to_string(),
                cidr,
                tunnel: tunnel.to_string(),
            },
        );
    }

    /// Drops a node's route.
    pub fn remove_node(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    /// Drops every node's route (before a fresh list of nodes).
    pub fn clear_nodes(&mut self) {
        self.nodes.clear();
    }

    /// Drops every service (before a fresh list of services); their
    /// endpoints stay until the endpoints are listed again.
    pub fn clear_services(&mut self) {
        self.services.clear();
        self.by_ip.clear();
    }

    /// Drops every service's endpoints (before a fresh list of them).
    pub fn clear_endpoints(&mut self) {
        self.endpoints.clear();
    }

    /// A node's range.
    pub fn node_cidr(&self, name: &str) -> Option<Cidr> {
        self.nodes.get(name).map(|n| n.cidr)
    }

    /// The node whose range holds `ip`.
    pub fn node_for_ip(&self, ip: Ipv4Addr) -> Option<NodeRoute> {
        self.nodes.values().find(|n| n.cidr.contains(ip)).cloned()
    }

    /// Adds or replaces a service.
    pub fn set_service(
        &mut self,
        key: ServiceKey,
        cluster_ip: Option<Ipv4Addr>,
        ingress: Option<(String, String)>,
    ) {
        self.remove_service(&key, false);
        if let Some(ip) = cluster_ip {
            self.by_ip.insert(ip, key.clone());
        }
        let ingress = ingress.map(|(h, p)| (h.to_ascii_lowercase(), p));
        self.services.insert(
            key,
            ServiceEntry {
                cluster_ip,
                ingress,
            },
        );
    }

    /// Drops a service (and, with `endpoints`, its endpoints).
    pub fn remove_service(&mut self, key: &ServiceKey, endpoints: bool) {
        if let Some(old) = self.services.remove(key) {
            if let Some(ip) = old.cluster_ip {
                self.by_ip.remove(&ip);
            }
        }
        if endpoints {
            self.endpoints.remove(key);
        }
    }

    /// True when the service is known.
    pub fn service(&self, key: &ServiceKey) -> Option<()> {
        self.services.get(key).map(|_| ())
    }

    /// The service with this cluster IP.
    pub fn service_by_ip(&self, ip: Ipv4Addr) -> Option<ServiceKey> {
        self.by_ip.get(&ip).cloned()
    }

    /// Replaces a service's ready endpoint addresses.
    pub fn set_endpoints(&mut self, key: ServiceKey, ready: Vec<Ipv4Addr>) {
        self.endpoints.insert(key, ready);
    }

    /// Drops a service's endpoints.
    pub fn remove_endpoints(&mut self, key: &ServiceKey) {
        self.endpoints.remove(key);
    }

    /// A service's ready endpoint addresses.
    pub fn ready_endpoints(&self, key: &ServiceKey) -> Vec<Ipv4Addr> {
        self.endpoints.get(key).cloned().unwrap_or_default()
    }

    /// The service an ingress request for `host` and `path` goes to: the one
    /// with that host and the longest matching path prefix.
    pub fn ingress_route(&self, host: &str, path: &str) -> Option<ServiceKey> {
        let host = host.to_ascii_lowercase();
        self.services
            .iter()
            .filter_map(|(key, s)| {
                let (h, prefix) = s.ingress.as_ref()?;
                let prefix_ok = prefix.is_empty()
                    || path == prefix
                    || path.starts_with(&format!("{}/", prefix.trim_end_matches('/')))
                    || prefix == "/";
                (*h == host && prefix_ok).then_some((prefix.len(), key))
            })
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
            .map(|(_, k)| k.clone())
    }
}
