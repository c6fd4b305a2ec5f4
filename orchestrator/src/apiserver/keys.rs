//! The key layout: `/{kind plural}/{namespace}/{name}`, with an empty namespace
//! for cluster-scoped kinds. Keys under `/_` belong to the control plane itself
//! (join tokens) and are never served as objects.

use flotilla_api::object::Kind;

/// The key of one object.
pub fn key_for(kind: Kind, namespace: &str, name: &str) -> String {
    let ns = if kind.namespaced() { namespace } else { "" };
    format!("/{}/{}/{}", kind.plural(), ns, name)
}

/// The prefix of every object of a kind.
pub fn kind_prefix(kind: Kind) -> String {
    format!("/{}/", kind.plural())
}

/// The prefix of every object of a kind in one namespace.
pub fn namespace_prefix(kind: Kind, namespace: &str) -> String {
    format!("/{}/{}/", kind.plural(), namespace)
}

/// Whether a key is the control plane's own.
pub fn is_internal(key: &str) -> bool {
    key.starts_with("/_")
}

/// Where join tokens are kept.
pub const TOKENS_PREFIX: &str = "/_tokens/";

/// The key of a join token.
pub fn token_key(id: &str) -> String {
    format!("{TOKENS_PREFIX}{id}")
}

/// The next store peer id to hand out.
pub const PEER_ID_KEY: &str = "/_meta/next-peer-id";

/// The prefix of a module blob's chunks.
pub fn blob_prefix(hex: &str) -> String {
    format!("/_blobs/{hex}/")
}
