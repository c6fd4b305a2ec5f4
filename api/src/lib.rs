//! flotilla-api: the data and its rules, nothing that runs a cluster. The object
//! model (one file per kind), validation, manifests, quantities and durations, the
//! wire protocol, the client every component uses, and TLS identities.
//!
//! Must never: touch the store, spawn daemons, or depend on the orchestrator or node
//! crates.

#![warn(missing_docs)]

pub mod cidr;
pub mod client;
pub mod daemonset;
pub mod deployment;
pub mod duration;
pub mod endpoints;
pub mod event;
pub mod fields;
pub mod instance;
pub mod job;
pub mod labels;
pub mod lease;
pub mod manifest;
pub mod meta;
pub mod module;
pub mod namespace;
pub mod node;
pub mod object;
pub mod quantity;
pub mod service;
pub mod tls;
pub mod token;
pub mod validation;
pub mod wire;
