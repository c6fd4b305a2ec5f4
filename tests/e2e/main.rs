//! End-to-end tests: real `flotilla` processes on 127.0.0.1, real QUIC, real disk.
//! One module per area, one test binary so it links once.

mod bad_input;
mod certs;
mod cli;
mod control_plane;
mod controllers;
mod doctor;
mod harness;
mod metrics;
mod network;
mod node;
mod reliability;
mod sdk;
mod security;
mod streaming;
mod trust;
mod watch;
mod workloads;
