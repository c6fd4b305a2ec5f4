//! The `flotilla` binary: parses arguments and runs one verb. Every daemon and
//! every client verb lives behind this one entry; no cluster logic lives here.

mod commands;

use std::process::ExitCode;

use clap::Parser;

/// The status a shell reports for a process ended by SIGPIPE (128 + 13).
const CLOSED_PIPE_STATUS: i32 = 141;

/// A reader that stops reading (`flotilla get inst -w | head -3`) is not an
/// error: end quietly, as a Unix tool ended by SIGPIPE does, instead of
/// panicking in `println!`. (Rust ignores SIGPIPE so that sockets get EPIPE;
/// restoring it would need unsafe code and would also end daemons whose
/// peers close a connection.)
fn end_quietly_on_a_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(CLOSED_PIPE_STATUS);
        }
        default_hook(info)
    }));
}

/// The error and its causes, each said once: a Flotilla error's message
/// already says its cause (so a log line with it alone is whole), a
/// library's may not.
fn describe(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

fn is_forbidden(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let api = cause
            .downcast_ref::<flotilla_client::wire::ApiError>()
            .or_else(
                || match cause.downcast_ref::<flotilla_client::ClientError>() {
                    Some(flotilla_client::ClientError::Api(api)) => Some(api),
                    _ => None,
                },
            );
        api.is_some_and(|a| a.code == flotilla_client::wire::ErrorCode::Forbidden)
    })
}

fn is_closed_stdout(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// glibc's allocator spent a tenth of a busy server's CPU consolidating and
/// splitting chunks (raft entries, QUIC frames and sled nodes are many small,
/// short-lived allocations); mimalloc's per-thread free lists avoid that.
/// Built without transparent huge pages (`no_thp`): with them every arena
/// grew in 2 MiB steps, a node sat at twice the resident memory and a
/// streamed body moved it by tens of MiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    end_quietly_on_a_closed_stdout();
    let cli = commands::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.execute()) {
        Ok(code) => code,
        // Output written with `write_all` (`logs -f | head`) meets the
        // closed pipe as an error rather than a panic: the same quiet end.
        Err(e) if is_closed_stdout(&e) => ExitCode::from(CLOSED_PIPE_STATUS as u8),
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            if is_forbidden(&e) {
                ExitCode::from(commands::FORBIDDEN_STATUS)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::describe;
    use flotilla_client::ClientError;

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::other("disk on fire");
        let says = anyhow::Error::new(ClientError::Config {
            path: "admin.config".into(),
            source: io().into(),
        })
        .context("applying");
        assert_eq!(
            describe(&says),
            "applying: client configuration admin.config: disk on fire"
        );
        let plain = anyhow::Error::new(io()).context("applying");
        assert_eq!(describe(&plain), "applying: disk on fire");
    }
}
