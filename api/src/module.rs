//! The Module kind: a content-addressed Wasm artifact (component or core module)
//! known by its sha256 digest, and the digest helpers the CLI, store and nodes share.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::meta::ObjectMeta;
use crate::validation::ValidationErrors;

/// Prefix of every module digest.
pub const DIGEST_PREFIX: &str = "sha256:";

/// A module (cluster-scoped): the metadata of a stored Wasm blob.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Module {
    /// Standard metadata; by convention the name is [`Module::name_for_digest`].
    pub metadata: ObjectMeta,
    /// What the blob is.
    pub spec: ModuleSpec,
}

/// Whether a module is a component or a core module.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleType {
    /// A Wasm component (wasi:cli/run or wasi:http/proxy).
    #[default]
    Component,
    /// A WASI preview1 core module with `_start`.
    Core,
}

impl ModuleType {
    /// `component` or `core`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Component => "component",
            Self::Core => "core",
        }
    }
}

impl fmt::Display for ModuleType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Description of a stored module blob.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ModuleSpec {
    /// `sha256:` and 64 lowercase hex digits of the binary Wasm bytes.
    pub digest: String,
    /// Size of the binary in bytes.
    pub size: u64,
    /// Component or core module.
    pub module_type: ModuleType,
    /// Where it came from, e.g. the file name given to `flotilla apply`.
    pub source: String,
}

/// True for `sha256:` followed by exactly 64 lowercase hex digits.
pub fn is_valid_digest(s: &str) -> bool {
    s.strip_prefix(DIGEST_PREFIX).is_some_and(|hex| {
        hex.len() == 64
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

/// True for a valid Module name: a DNS subdomain, or `sha256-<64 hex>` as
/// [`Module::name_for_digest`] makes (whose single part is longer than 63).
pub fn is_valid_module_name(name: &str) -> bool {
    crate::validation::is_dns1123_subdomain(name)
        || name
            .strip_prefix("sha256-")
            .is_some_and(|hex| is_valid_digest(&format!("{DIGEST_PREFIX}{hex}")))
}

/// The digest of `bytes`: `sha256:<64 hex>`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("{DIGEST_PREFIX}{}", hex::encode(Sha256::digest(bytes)))
}

impl Module {
    /// The conventional object name for a digest: `sha256-<64 hex>` (a valid
    /// module name, unlike the digest itself with its colon).
    pub fn name_for_digest(digest: &str) -> String {
        digest.replacen(':', "-", 1)
    }

    pub(crate) fn validate_into(&self, errs: &mut ValidationErrors) {
        if self.spec.digest.is_empty() {
            errs.required("spec.digest");
        } else if !is_valid_digest(&self.spec.digest) {
            errs.push(
                "spec.digest",
                format!(
                    "{:?} is not a valid digest (expected sha256: and 64 lowercase hex digits)",
                    self.spec.digest
                ),
            );
        }
        if self.spec.size == 0 {
            errs.push("spec.size", "must be > 0");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let d = digest_of(b"");
        assert_eq!(
            d,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(is_valid_digest(&d));
        assert!(!is_valid_digest("sha256:E3B0"));
        assert!(!is_valid_digest(&d.to_uppercase()));
        assert!(!is_valid_digest("./app.wasm"));
        let name = Module::name_for_digest(&d);
        assert!(is_valid_module_name(&name), "{name}");
        assert!(is_valid_module_name("hello"));
        assert!(!is_valid_module_name(&format!("sha256-{}", "a".repeat(63))));
        assert!(!is_valid_module_name("sha256:abc"));
    }
}
