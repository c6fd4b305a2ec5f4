//! The Endpoints kind: the addresses of the ready (and not-ready) instances
//! behind a service, kept by the endpoints controller under the service's name.

use serde::{Deserialize, Serialize};

use crate::meta::{ObjectMeta, ObjectReference};
use crate::service::Protocol;
use crate::validation::{check_node_name, is_ip, ValidationErrors};

/// Endpoints of a service (Kubernetes' `Endpoints`); named like the service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Endpoints {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// Groups of addresses sharing the same ports.
    pub subsets: Vec<EndpointSubset>,
}

/// Addresses that serve the same ports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSubset {
    /// Ready instances: traffic goes here.
    pub addresses: Vec<EndpointAddress>,
    /// Instances that are not Ready: no traffic.
    pub not_ready_addresses: Vec<EndpointAddress>,
    /// Ports on these addresses (service port names, resolved target ports).
    pub ports: Vec<EndpointPort>,
}

/// One instance address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointAddress {
    /// Instance IP.
    pub ip: String,
    /// Node running the instance (local endpoints are called in-process).
    pub node_name: String,
    /// The instance.
    pub target_ref: Option<ObjectReference>,
}

/// One port of an endpoint subset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointPort {
    /// Name of the service port this serves.
    pub name: String,
    /// Port number on the instance.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

impl Endpoints {
    /// Every ready address, with the subset's ports.
    pub fn ready_addresses(&self) -> impl Iterator<Item = (&EndpointAddress, &[EndpointPort])> {
        self.subsets
            .iter()
            .flat_map(|s| s.addresses.iter().map(move |a| (a, s.ports.as_slice())))
    }

    pub(crate) fn validate_into(&self, errs: &mut ValidationErrors) {
        for (i, s) in self.subsets.iter().enumerate() {
            for (list, addrs) in [
                ("addresses", &s.addresses),
                ("notReadyAddresses", &s.not_ready_addresses),
            ] {
                for (j, a) in addrs.iter().enumerate() {
                    let f = format!("subsets[{i}].{list}[{j}]");
                    if !is_ip(&a.ip) {
                        errs.push(
                            format!("{f}.ip"),
                            format!("{:?} is not an IP address", a.ip),
                        );
                    }
                    check_node_name(errs, &format!("{f}.nodeName"), &a.node_name);
                }
            }
            for (j, p) in s.ports.iter().enumerate() {
                if p.port == 0 {
                    errs.push(
                        format!("subsets[{i}].ports[{j}].port"),
                        "must be between 1 and 65535",
                    );
                }
            }
        }
    }
}
