//! flotilla-orchestrator: the control plane. The replicated store (the single
//! source of truth), the apiserver (the only entry to it), and the server process
//! that wires them to one QUIC endpoint.
//!
//! Must never: run workloads, or let anything but the apiserver touch the store.

pub mod apiserver;
pub mod ca;
pub mod certs;
pub mod controllers;
pub mod events;
pub mod informer;
pub mod leader;
pub mod scheduler;
pub mod server;
pub mod store;
