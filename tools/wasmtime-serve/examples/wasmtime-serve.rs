//! `wasmtime-serve ARGS`: the same as `wasmtime serve ARGS` of the wasmtime
//! 48 CLI.

fn main() -> std::process::ExitCode {
    flotilla_wasmtime_serve::serve()
}
