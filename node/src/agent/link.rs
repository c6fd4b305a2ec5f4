//! The node's link to the apiserver: a [`Link`] whose certificate problems
//! tell the operator how to join the node again.

use std::path::PathBuf;
use std::time::Duration;

use flotilla_client::{ClientConfig, Link};

use super::identity::expired_message;

/// A link for node `name` that connects with `config` (kept at `path`),
/// retrying at most `max_delay` apart (a quarter of the lease interval keeps
/// the node's report after an apiserver restart well within one lease
/// period).
pub fn node_link(config: ClientConfig, name: &str, path: PathBuf, max_delay: Duration) -> Link {
    let name = name.to_string();
    let shown = path.clone();
    Link::new(config, max_delay)
        .with_origin(path, move |problem| expired_message(&name, &shown, problem))
}
