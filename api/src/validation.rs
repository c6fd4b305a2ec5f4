//! Validation errors that name a field path and a rule, and the name rules
//! (DNS-1123 labels and subdomains, label keys and values) shared by every kind.
//!
//! Validation never panics and never stops at the first problem: checks push
//! [`FieldError`]s into a [`ValidationErrors`] so a user sees everything that is
//! wrong with an object at once.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

/// Rule text for DNS-1123 label names, quoted in error messages.
pub const LABEL_NAME_RULE: &str =
    "lowercase letters, digits and '-', at most 63 characters, starting and ending with a letter or digit";

/// Rule text for DNS-1123 subdomain names, quoted in error messages.
pub const SUBDOMAIN_NAME_RULE: &str = "lowercase letters, digits, '-' and '.', at most 253 characters, each dot-separated part starting and ending with a letter or digit";

/// Rule text for label and annotation keys.
pub const QUALIFIED_NAME_RULE: &str = "an optional DNS subdomain prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit";

/// Rule text for label values.
pub const LABEL_VALUE_RULE: &str = "empty, or at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit";

/// Rule text for named ports (IANA service names).
pub const PORT_NAME_RULE: &str =
    "lowercase letters, digits and '-', at most 15 characters, with at least one letter, not starting or ending with '-'";

/// One problem with one field of an object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `spec.template.spec.resources.limits.memory`;
    /// empty when the problem concerns the whole object.
    pub field: String,
    /// What is wrong, naming the rule that was broken.
    pub message: String,
}

impl FieldError {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for FieldError {}

/// Every problem found in one object; displayed joined with `"; "`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// No errors yet.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Records a problem with `field`.
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    /// Records that `field` is required but empty.
    pub fn required(&mut self, field: impl Into<String>) {
        self.push(field, "required");
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of problems recorded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `Ok(())` when nothing was recorded, else `Err(self)`.
    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

impl From<FieldError> for ValidationErrors {
    fn from(e: FieldError) -> Self {
        Self(vec![e])
    }
}

// === name rules ===

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// A DNS-1123 label: lowercase letters, digits and '-', 1 to 63 characters,
/// starting and ending with a letter or digit.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| is_lower_alnum(c) || c == '-')
        && s.starts_with(is_lower_alnum)
        && s.ends_with(is_lower_alnum)
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn is_name_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// A qualified name as used for label and annotation keys and finalizers:
/// `[prefix/]name` where the prefix is a DNS subdomain and the name is at most
/// 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric.
pub fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_name_part(name),
        None => is_name_part(s),
    }
}

/// A label value: empty, or a name part (see [`is_qualified_name`]).
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_name_part(s)
}

/// A port name in the IANA service-name syntax (like Kubernetes' named ports).
pub fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars().all(|c| is_lower_alnum(c) || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// An IPv4 CIDR such as `10.244.1.0/24`.
pub fn is_ipv4_cidr(s: &str) -> bool {
    match s.split_once('/') {
        Some((addr, bits)) => {
            addr.parse::<Ipv4Addr>().is_ok()
                && !bits.is_empty()
                && bits.chars().all(|c| c.is_ascii_digit())
                && bits.parse::<u8>().is_ok_and(|b| b <= 32)
        }
        None => false,
    }
}

/// An IPv4 or IPv6 address.
pub fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

/// An RFC 3339 timestamp.
pub fn is_timestamp(s: &str) -> bool {
    crate::meta::parse_timestamp(s).is_some()
}

// === helpers for kind validators ===

/// Checks a label map (`labels`, `nodeSelector`, `matchLabels`) at `field`.
pub(crate) fn check_labels(
    errs: &mut ValidationErrors,
    field: &str,
    labels: &std::collections::BTreeMap<String, String>,
) {
    for (k, v) in labels {
        if !is_qualified_name(k) {
            errs.push(
                field,
                format!("{k:?} is not a valid label key ({QUALIFIED_NAME_RULE})"),
            );
        }
        if !is_label_value(v) {
            errs.push(
                format!("{field}.{k}"),
                format!("{v:?} is not a valid label value ({LABEL_VALUE_RULE})"),
            );
        }
    }
}

/// Checks an optional node name reference.
pub(crate) fn check_node_name(errs: &mut ValidationErrors, field: &str, name: &str) {
    if !name.is_empty() && !is_dns1123_subdomain(name) {
        errs.push(
            field,
            format!("{name:?} is not a valid node name ({SUBDOMAIN_NAME_RULE})"),
        );
    }
}

/// Checks an optional timestamp field.
pub(crate) fn check_timestamp(errs: &mut ValidationErrors, field: &str, value: &str) {
    if !value.is_empty() && !is_timestamp(value) {
        errs.push(
            field,
            format!("{value:?} is not an RFC 3339 timestamp (e.g. 2024-05-01T12:00:00Z)"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        assert!(is_dns1123_label("web-1"));
        assert!(is_dns1123_label("a"));
        assert!(!is_dns1123_label("Web_1"));
        assert!(!is_dns1123_label("-web"));
        assert!(!is_dns1123_label("web-"));
        assert!(!is_dns1123_label(""));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_label(&"a".repeat(63)));
        assert!(is_dns1123_subdomain("edge-1.example.com"));
        assert!(!is_dns1123_subdomain("edge-1..example"));
        assert!(!is_dns1123_subdomain("edge.example."));
    }

    #[test]
    fn qualified_names_and_values() {
        assert!(is_qualified_name("app"));
        assert!(is_qualified_name("flotilla.dev/hostname"));
        assert!(is_qualified_name("App_Name.v2"));
        assert!(!is_qualified_name("/app"));
        assert!(!is_qualified_name("Flotilla.dev/app"));
        assert!(!is_qualified_name("a/b/c"));
        assert!(!is_qualified_name(""));
        assert!(is_label_value(""));
        assert!(is_label_value("v1.2_3-x"));
        assert!(!is_label_value("has space"));
        assert!(!is_label_value("-x"));
    }

    #[test]
    fn ports_and_addresses() {
        assert!(is_port_name("http"));
        assert!(is_port_name("h2c-8080"));
        assert!(!is_port_name("8080"));
        assert!(!is_port_name("HTTP"));
        assert!(!is_port_name("a--b"));
        assert!(is_ipv4_cidr("10.244.0.0/16"));
        assert!(!is_ipv4_cidr("10.244.0.0/33"));
        assert!(!is_ipv4_cidr("10.244.0.0"));
        assert!(is_ip("10.0.0.1"));
        assert!(is_ip("::1"));
    }

    #[test]
    fn display_joins_errors() {
        let mut errs = ValidationErrors::new();
        errs.required("spec.module");
        errs.push("spec.replicas", "must be >= 0");
        errs.push("", "object is broken");
        assert_eq!(
            errs.to_string(),
            "spec.module: required; spec.replicas: must be >= 0; object is broken"
        );
        assert!(errs.into_result().is_err());
        assert!(ValidationErrors::new().into_result().is_ok());
    }
}
