//! `wasmtime serve` of the wasmtime 48 CLI, for the end-to-end tests and the
//! benchmarks: they run guest examples under it to show they are standard
//! `wasi:http/proxy` components, and measure Flotilla's ingress beside it.
//! The `wasmtime-serve` example is the program; `cargo test --workspace`
//! builds examples, so it lands beside the test binaries.

use std::process::ExitCode;

use clap::Parser;

/// Parses `serve`'s arguments from the command line and runs it.
pub fn serve() -> ExitCode {
    match wasmtime_cli::commands::ServeCommand::parse().execute() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}
