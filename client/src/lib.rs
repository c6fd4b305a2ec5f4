//! flotilla-client: how a program talks to a Flotilla cluster. The wire
//! protocol (length-prefixed postcard frames on QUIC streams), the [`Client`]
//! every component uses (the CLI, nodes, the scheduler, the controllers), the
//! client configuration file, dialling, TLS identities as their holders see
//! them, join tokens, the self-healing [`Link`], the one list-then-watch
//! loop, [`watcher`], and the event [`events::Recorder`].
//!
//! Must never: sign certificates (only the orchestrator holds the CA), touch
//! the store, or decide anything about objects beyond carrying them.

mod client;
mod config;
mod dial;
mod error;
pub mod events;
pub mod files;
pub mod link;
pub mod tls;
pub mod token;
pub mod watcher;
pub mod wire;

pub use client::{Client, ListPage, ListQuery, WatchStream, LIST_PAGE};
pub use config::{ClientConfig, SharedClientConfig};
pub use dial::{
    client_bind_addr, dial, listening_endpoint_config, resolve, transport_config, CONNECT_TIMEOUT,
};
pub use error::{Cause, ClientError, While};
pub use link::Link;
