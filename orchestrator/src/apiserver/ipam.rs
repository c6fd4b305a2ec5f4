//! Address management: every Node gets an instance range (a slice of the
//! cluster CIDR) and every Service a cluster IP (from the service CIDR) when it
//! is created. An allocation is a key under `/_ipam/`, written in the same raft
//! entry as the object with an "absent" precondition, so two creates racing for
//! one range cannot both win; deleting the object releases it.

use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_api::cidr::Cidr;
use flotilla_api::object::Object;
use flotilla_client::wire::{ApiError, ErrorCode};

use super::errors::{internal, ApiResult};
use super::ApiServer;
use crate::store::{Action, Op, Precondition};

const NODE_RANGES: &str = "/_ipam/node-ranges/";
const SERVICE_IPS: &str = "/_ipam/service-ips/";

/// Where the next search for a free range or address starts.
#[derive(Default)]
pub(super) struct Hints {
    node: AtomicU64,
    service: AtomicU64,
}

/// The address ranges of the cluster.
#[derive(Clone, Debug)]
pub struct NetworkRanges {
    /// Range split into per-node instance ranges (default 10.244.0.0/16).
    pub cluster_cidr: Cidr,
    /// Prefix length of each node's range (default 24: 254 instances).
    pub node_prefix: u8,
    /// Range of service cluster IPs (default 10.96.0.0/16).
    pub service_cidr: Cidr,
}

impl Default for NetworkRanges {
    fn default() -> Self {
        Self {
            cluster_cidr: Cidr::new([10, 244, 0, 0].into(), 16).expect("valid"),
            node_prefix: 24,
            service_cidr: Cidr::new([10, 96, 0, 0].into(), 16).expect("valid"),
        }
    }
}

fn range_key(c: &Cidr) -> String {
    format!("{NODE_RANGES}{}-{}", c.network(), c.prefix_len())
}

fn invalid(field: &str, message: String) -> ApiError {
    ApiError::new(ErrorCode::Invalid, format!("{field}: {message}"))
}

impl ApiServer {
    /// The first free candidate (one whose key is absent), by point reads:
    /// from the hint, or after a lost race from a random place; the hint
    /// moves past what is found.
    fn first_free<T>(
        &self,
        hint: &AtomicU64,
        count: u64,
        retry: bool,
        candidate: impl Fn(u64) -> Option<(String, T)>,
    ) -> ApiResult<Option<T>> {
        if count == 0 {
            return Ok(None);
        }
        // Each create takes its own starting point, so creates running at once
        // look at different addresses instead of racing for the same one.
        let start = if retry {
            rand::random::<u64>() % count
        } else {
            hint.fetch_add(1, Ordering::Relaxed) % count
        };
        for k in (start..count).chain(0..start) {
            let Some((key, value)) = candidate(k) else {
                continue;
            };
            if self.store.reader().get(&key).map_err(internal)?.is_none() {
                hint.fetch_max(k + 1, Ordering::Relaxed);
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// Fills in a new Node's instance range or a new Service's cluster IP and
    /// returns the write that claims it. The lowest free one first; after a
    /// lost race (`retry`) a free one from a random place, so that many
    /// creates at once do not all fight over the same next address again.
    pub(super) fn allocate(&self, object: &mut Object, retry: bool) -> ApiResult<Option<Op>> {
        let ranges = &self.ranges;
        let owner = format!(
            "{}/{}/{}",
            object.kind().as_str(),
            object.meta().namespace,
            object.meta().name
        );
        let key = match object {
            Object::Node(n) => {
                let cidr = if n.spec.instance_cidr.is_empty() {
                    let count = ranges.cluster_cidr.subnets(ranges.node_prefix);
                    let free = self.first_free(&self.ipam_hints.node, count, retry, |k| {
                        ranges
                            .cluster_cidr
                            .subnet(ranges.node_prefix, k)
                            .map(|c| (range_key(&c), c))
                    })?;
                    let Some(cidr) = free else {
                        return Err(ApiError::new(
                            ErrorCode::Unavailable,
                            format!(
                                "no instance range left for node \"{}\": all {count} /{} ranges of the cluster CIDR {} are assigned; delete nodes that are gone or give the servers a larger --cluster-cidr",
                                n.metadata.name, ranges.node_prefix, ranges.cluster_cidr
                            ),
                        ));
                    };
                    n.spec.instance_cidr = cidr.to_string();
                    cidr
                } else {
                    let cidr: Cidr = n.spec.instance_cidr.parse().map_err(
                        |e: flotilla_api::cidr::CidrError| {
                            invalid("spec.instanceCIDR", e.to_string())
                        },
                    )?;
                    if !ranges.cluster_cidr.covers(&cidr) {
                        return Err(invalid(
                            "spec.instanceCIDR",
                            format!("{cidr} is outside the cluster CIDR {}", ranges.cluster_cidr),
                        ));
                    }
                    cidr
                };
                range_key(&cidr)
            }
            Object::Service(s) if s.spec.cluster_ip != "None" => {
                let ip = if s.spec.cluster_ip.is_empty() {
                    let cidr = ranges.service_cidr;
                    // Hosts: all but the network and broadcast addresses.
                    let (first, hosts) = if cidr.prefix_len() >= 31 {
                        (0, cidr.size())
                    } else {
                        (1, cidr.size() - 2)
                    };
                    let free = self.first_free(&self.ipam_hints.service, hosts, retry, |k| {
                        cidr.nth(first + k)
                            .map(|ip| (format!("{SERVICE_IPS}{ip}"), ip))
                    })?;
                    let Some(ip) = free else {
                        return Err(ApiError::new(
                            ErrorCode::Unavailable,
                            format!(
                                "no cluster IP left for service \"{}\": every address of the service CIDR {} is taken",
                                s.metadata.name, ranges.service_cidr
                            ),
                        ));
                    };
                    s.spec.cluster_ip = ip.to_string();
                    ip
                } else {
                    let ip: std::net::Ipv4Addr = s.spec.cluster_ip.parse().map_err(|_| {
                        invalid(
                            "spec.clusterIP",
                            format!("{:?} is not an IPv4 address", s.spec.cluster_ip),
                        )
                    })?;
                    if !ranges.service_cidr.contains(ip) {
                        return Err(invalid(
                            "spec.clusterIP",
                            format!("{ip} is outside the service CIDR {}", ranges.service_cidr),
                        ));
                    }
                    ip
                };
                format!("{SERVICE_IPS}{ip}")
            }
            _ => return Ok(None),
        };
        Ok(Some(Op {
            key,
            precondition: Precondition::Absent,
            action: Action::Put(owner.into_bytes()),
        }))
    }

    /// True when `key` is an allocation (a lost race there means: pick again).
    pub(super) fn is_allocation(key: &str) -> bool {
        key.starts_with(NODE_RANGES) || key.starts_with(SERVICE_IPS)
    }

    /// The write that releases what a deleted object held.
    pub(super) fn release(object: &Object) -> Option<Op> {
        let key = match object {
            Object::Node(n) => range_key(&n.spec.instance_cidr.parse().ok()?),
            Object::Service(s) => {
                let ip: std::net::Ipv4Addr = s.spec.cluster_ip.parse().ok()?;
                format!("{SERVICE_IPS}{ip}")
            }
            _ => return None,
        };
        Some(Op {
            key,
            precondition: Precondition::None,
            action: Action::Delete,
        })
    }
}

/// Keeps what was allocated when an update or apply leaves it out, and refuses
/// to change it.
pub(super) fn carry_allocations(current: &Object, desired: &mut Object) -> ApiResult<()> {
    match (current, desired) {
        (Object::Node(c), Object::Node(d)) => {
            if d.spec.instance_cidr.is_empty() {
                d.spec.instance_cidr = c.spec.instance_cidr.clone();
            } else if d.spec.instance_cidr != c.spec.instance_cidr
                && !c.spec.instance_cidr.is_empty()
            {
                return Err(invalid(
                    "spec.instanceCIDR",
                    format!(
                        "is immutable once assigned (it is {})",
                        c.spec.instance_cidr
                    ),
                ));
            }
        }
        (Object::Service(c), Object::Service(d)) => {
            if d.spec.cluster_ip.is_empty() {
                d.spec.cluster_ip = c.spec.cluster_ip.clone();
            } else if d.spec.cluster_ip != c.spec.cluster_ip && !c.spec.cluster_ip.is_empty() {
                return Err(invalid(
                    "spec.clusterIP",
                    format!("is immutable once assigned (it is {})", c.spec.cluster_ip),
                ));
            }
        }
        _ => {}
    }
    Ok(())
}
