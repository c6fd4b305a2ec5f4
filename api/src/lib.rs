//! flotilla-api: the data and its rules, nothing that runs a cluster. The object
//! model (one file per kind), validation, defaults, manifests, quantities,
//! durations, labels and fields.
//!
//! Must never: touch the store, spawn daemons, do I/O beyond reading manifest
//! files, or depend on networking, an async runtime or TLS (the wire protocol
//! and the client are `flotilla-client`'s; a test checks the dependency tree).
//! Presentation (table columns, ages) is the CLI's.

#![warn(missing_docs)]

pub mod cidr;
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
pub mod quota;
pub mod rbac;
pub mod service;
pub mod validation;
