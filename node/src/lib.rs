//! flotilla-node: what runs on every node. The runtime runs Wasm instances in
//! wasmtime sandboxes; the agent registers the node, keeps its lease, runs what is
//! bound to it and reports status.
//!
//! Must never: write to the store except through the apiserver, or run a module it
//! has not verified against its digest.

pub mod agent;
pub mod body;
pub mod net;
pub mod runtime;
