//! `wasmtime-serve ARGS`: the same as `wasmtime serve ARGS` of the wasmtime
//! 48 CLI. Test support: the end-to-end tests run guest examples under it to
//! show they are standard `wasi:http/proxy` components.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match wasmtime_cli::commands::ServeCommand::parse().execute() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}
