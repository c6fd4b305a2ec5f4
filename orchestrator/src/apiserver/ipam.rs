//! Address management: every Node gets an instance range (a slice of the
//! cluster CIDR) and every Service a cluster IP (from the service CIDR) when it
//! is created. An allocation is a key under `/_ipam/`, written in the same raft
//! entry as the object with an "absent" precondition, so two creates racing for
//! one range cannot both win; deleting the object releases it.

use flotilla_api::cidr::Cidr;
use flotilla_api::object::Object;
use flotilla_api::wire::ErrorCode;

use super::{internal, ApiError, ApiResult, ApiServer};
use crate::store::{Action, Op, Precondition};

const NODE_RANGES: &str = "/_ipam/node-ranges/";
const SERVICE_IPS: &str = "/_ipam/service-ips/";

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
    fn allocated(&self, prefix: &str) -> ApiResult<std::collections::HashSet<String>> {
        Ok(self
            .store
            .reader()
            .scan(prefix)
            .map_err(internal)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Fills in a new Node's instance range or a new Service's cluster IP and
    /// returns the write that claims it.
    pub(super) fn allocate(&self, object: &mut Object) -> ApiResult<Option<Op>> {
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
                    let used = self.allocated(NODE_RANGES)?;
                    let count = ranges.cluster_cidr.subnets(ranges.node_prefix);
                    let free = (0..count)
                        .filter_map(|k| ranges.cluster_cidr.subnet(ranges.node_prefix, k))
                        .find(|c| !used.contains(&range_key(c)));
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
                    let used = self.allocated(SERVICE_IPS)?;
                    let free = ranges
                        .service_cidr
                        .hosts()
                        .find(|ip| !used.contains(&format!("{SERVICE_IPS}{ip}")));
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
