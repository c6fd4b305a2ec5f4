//! The Service kind: a stable name and cluster IP in front of the ready
//! instances its selector matches, optionally exposed through node ingress.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::meta::{Condition, ObjectMeta};
use crate::validation::{
    check_labels, is_dns1123_subdomain, is_port_name, ValidationErrors, PORT_NAME_RULE,
};

/// A service (Kubernetes' `Service`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Service {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// Selector, ports, cluster IP and ingress.
    pub spec: ServiceSpec,
    /// Observed state.
    pub status: ServiceStatus,
}

/// Desired state of a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// Instances with all these labels back the service.
    pub selector: BTreeMap<String, String>,
    /// Ports the service exposes.
    pub ports: Vec<ServicePort>,
    /// Virtual IP, assigned from the service CIDR at creation when empty;
    /// `None` for a headless service.
    #[serde(rename = "clusterIP")]
    pub cluster_ip: String,
    /// Exposure through every node's HTTP ingress; empty host means none.
    pub ingress: ServiceIngress,
}

/// Transport protocol of a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP (HTTP rides on it).
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    /// `TCP` or `UDP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One port of a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port name; required when there is more than one port.
    pub name: String,
    /// Port on the cluster IP.
    pub port: u16,
    /// Port on the instances, by number or by the instance port's name;
    /// defaults to `port`.
    pub target_port: Option<TargetPort>,
    /// Protocol.
    pub protocol: Protocol,
}

/// A target port given by number (`8080`) or by name (`http`).
///
/// YAML and JSON accept either a number or a string; a string of digits is a
/// number.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// The name of a port in the instance spec.
    Name(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(s) => f.write_str(s),
        }
    }
}

/// The binary (postcard) shape of [`TargetPort`].
#[derive(Serialize, Deserialize)]
enum TargetPortRepr {
    Number(u16),
    Name(String),
}

impl Serialize for TargetPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (s.is_human_readable(), self) {
            (true, Self::Number(n)) => s.serialize_u16(*n),
            (true, Self::Name(name)) => s.serialize_str(name),
            (false, Self::Number(n)) => TargetPortRepr::Number(*n).serialize(s),
            (false, Self::Name(name)) => TargetPortRepr::Name(name.clone()).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for TargetPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TargetPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (1-65535) or a port name")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TargetPort, E> {
                match u16::try_from(v) {
                    Ok(n) if n > 0 => Ok(TargetPort::Number(n)),
                    _ => Err(E::custom(format!("{v} is not a port number (1-65535)"))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TargetPort, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("{v} is not a port number (1-65535)"))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TargetPort, E> {
                if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) {
                    match v.parse::<u64>() {
                        Ok(n) => self.visit_u64(n),
                        Err(_) => Err(E::custom(format!("{v} is not a port number (1-65535)"))),
                    }
                } else {
                    Ok(TargetPort::Name(v.to_owned()))
                }
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(V)
        } else {
            Ok(match TargetPortRepr::deserialize(d)? {
                TargetPortRepr::Number(n) => TargetPort::Number(n),
                TargetPortRepr::Name(s) => TargetPort::Name(s),
            })
        }
    }
}

/// HTTP ingress for a service: requests to any node's ingress listener with this
/// Host header (and path prefix) go to the service's first port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceIngress {
    /// Host header to match, e.g. `hello.local`; empty for no ingress.
    pub host: String,
    /// Path prefix to match, starting with `/`; empty for every path.
    pub path: String,
}

/// Observed state of a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceStatus {
    /// Conditions reported by the controllers.
    pub conditions: Vec<Condition>,
}

impl ServicePort {
    /// The target port, defaulting to the service port.
    pub fn target(&self) -> TargetPort {
        self.target_port
            .clone()
            .unwrap_or(TargetPort::Number(self.port))
    }
}

impl Service {
    /// True when the service is exposed through ingress.
    pub fn has_ingress(&self) -> bool {
        !self.spec.ingress.host.is_empty()
    }

    pub(crate) fn apply_defaults(&mut self) {
        for p in &mut self.spec.ports {
            if p.target_port.is_none() {
                p.target_port = Some(TargetPort::Number(p.port));
            }
        }
    }

    pub(crate) fn validate_into(&self, errs: &mut ValidationErrors) {
        let spec = &self.spec;
        check_labels(errs, "spec.selector", &spec.selector);
        if spec.ports.is_empty() {
            errs.push("spec.ports", "at least one port is required");
        }
        let mut names = Vec::new();
        for (i, p) in spec.ports.iter().enumerate() {
            let f = format!("spec.ports[{i}]");
            if p.port == 0 {
                errs.push(format!("{f}.port"), "must be between 1 and 65535");
            }
            if p.name.is_empty() {
                if spec.ports.len() > 1 {
                    errs.push(
                        format!("{f}.name"),
                        "required when there is more than one port",
                    );
                }
            } else if !is_port_name(&p.name) {
                errs.push(
                    format!("{f}.name"),
                    format!("{:?} is not a valid port name ({PORT_NAME_RULE})", p.name),
                );
            } else if names.contains(&&p.name) {
                errs.push(
                    format!("{f}.name"),
                    format!("duplicate port name {:?}", p.name),
                );
            }
            names.push(&p.name);
            match &p.target_port {
                Some(TargetPort::Number(0)) => {
                    errs.push(format!("{f}.targetPort"), "must be between 1 and 65535")
                }
                Some(TargetPort::Name(n)) if !is_port_name(n) => errs.push(
                    format!("{f}.targetPort"),
                    format!("{n:?} is not a port number or a valid port name ({PORT_NAME_RULE})"),
                ),
                _ => {}
            }
        }
        let ip = &spec.cluster_ip;
        if !ip.is_empty() && ip != "None" && ip.parse::<std::net::Ipv4Addr>().is_err() {
            errs.push(
                "spec.clusterIP",
                format!("{ip:?} is not an IPv4 address (or None for a headless service)"),
            );
        }
        let ing = &spec.ingress;
        if ing.host.is_empty() {
            if !ing.path.is_empty() {
                errs.push(
                    "spec.ingress.host",
                    "required when spec.ingress.path is set",
                );
            }
        } else {
            let host = ing.host.strip_prefix("*.").unwrap_or(&ing.host);
            if !is_dns1123_subdomain(host) {
                errs.push(
                    "spec.ingress.host",
                    format!(
                        "{:?} is not a valid host name (lowercase DNS name, optionally starting with '*.')",
                        ing.host
                    ),
                );
            }
        }
        if !ing.path.is_empty() && !ing.path.starts_with('/') {
            errs.push(
                "spec.ingress.path",
                format!("{:?} must start with '/'", ing.path),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_port_forms() {
        let p: ServicePort = serde_json::from_str(r#"{"port":80,"targetPort":8080}"#).expect("n");
        assert_eq!(p.target_port, Some(TargetPort::Number(8080)));
        let p: ServicePort =
            serde_json::from_str(r#"{"port":80,"targetPort":"http"}"#).expect("name");
        assert_eq!(p.target_port, Some(TargetPort::Name("http".into())));
        let p: ServicePort =
            serde_json::from_str(r#"{"port":80,"targetPort":"8080"}"#).expect("digits");
        assert_eq!(p.target_port, Some(TargetPort::Number(8080)));
        assert!(serde_json::from_str::<ServicePort>(r#"{"port":80,"targetPort":70000}"#).is_err());
        let p: ServicePort = serde_yaml_ng::from_str("port: 80\ntargetPort: web\n").expect("yaml");
        assert_eq!(p.target(), TargetPort::Name("web".into()));
        let p: ServicePort = serde_json::from_str(r#"{"port":80}"#).expect("default");
        assert_eq!(p.target(), TargetPort::Number(80));
        for t in [TargetPort::Number(8080), TargetPort::Name("http".into())] {
            let json = serde_json::to_string(&t).expect("json");
            assert_eq!(serde_json::from_str::<TargetPort>(&json).expect("back"), t);
            let bytes = postcard::to_stdvec(&t).expect("encode");
            assert_eq!(
                postcard::from_bytes::<TargetPort>(&bytes).expect("decode"),
                t
            );
        }
    }

    #[test]
    fn validation() {
        let mut svc = Service::default();
        svc.spec.ports = vec![
            ServicePort {
                port: 80,
                target_port: Some(TargetPort::Name("Bad_Name".into())),
                ..ServicePort::default()
            },
            ServicePort {
                port: 0,
                ..ServicePort::default()
            },
        ];
        svc.spec.cluster_ip = "10.96.0.300".into();
        svc.spec.ingress.path = "api".into();
        let mut errs = ValidationErrors::new();
        svc.validate_into(&mut errs);
        let text = errs.to_string();
        for want in [
            "spec.ports[0].name: required",
            "spec.ports[0].targetPort:",
            "spec.ports[1].port: must be between 1 and 65535",
            "spec.clusterIP:",
            "spec.ingress.host: required",
            "spec.ingress.path:",
        ] {
            assert!(text.contains(want), "missing {want:?} in {text}");
        }
    }
}
