//! How an instance ended, and how a wasmtime error is classified into that.

use wasmtime::{Trap, WasmBacktrace};
use wasmtime_wasi::I32Exit;

use super::limits::{CpuLimitExceeded, MemoryLimitExceeded};

/// How an instance ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The guest exited; 0 = success.
    Code(i32),
    /// The guest trapped; the trap message with a short wasm backtrace.
    Trap(String),
    /// The guest needed more memory than its limit.
    MemoryLimit(String),
    /// The guest ran longer than the busy timeout without returning to the host.
    CpuLimit(String),
    /// An http request's guest still ran at its deadline.
    Deadline(String),
    /// `stop()` was called.
    Stopped,
}

impl Exit {
    /// The reason as status shows it.
    pub fn reason(&self) -> &'static str {
        match self {
            Exit::Code(0) => "Completed",
            Exit::Code(_) => "Error",
            Exit::Trap(_) => "Trapped",
            Exit::MemoryLimit(_) => "OOMKilled",
            Exit::CpuLimit(_) => "CPULimitExceeded",
            Exit::Deadline(_) => "DeadlineExceeded",
            Exit::Stopped => "Stopped",
        }
    }

    /// A human-readable message for status.
    pub fn message(&self) -> String {
        match self {
            Exit::Code(code) => format!("exited with code {code}"),
            Exit::Trap(msg)
            | Exit::MemoryLimit(msg)
            | Exit::CpuLimit(msg)
            | Exit::Deadline(msg) => msg.clone(),
            Exit::Stopped => "stopped".to_string(),
        }
    }

    /// Whether the guest completed successfully.
    pub fn success(&self) -> bool {
        matches!(self, Exit::Code(0))
    }

    /// The exit for a guest call that failed. `refused` is the memory limiter's
    /// record of a growth it refused in this store, if any: a guest that traps
    /// after being refused memory ran out of memory.
    pub(crate) fn from_error(err: &wasmtime::Error, refused: Option<&str>) -> Exit {
        if let Some(exit) = err.downcast_ref::<I32Exit>() {
            return Exit::Code(exit.0);
        }
        if let Some(e) = err.downcast_ref::<MemoryLimitExceeded>() {
            return Exit::MemoryLimit(e.to_string());
        }
        if let Some(e) = err.downcast_ref::<CpuLimitExceeded>() {
            return Exit::CpuLimit(e.to_string());
        }
        let message = trap_message(err);
        match refused {
            Some(refused) => Exit::MemoryLimit(format!("{refused}; then: {message}")),
            None => Exit::Trap(message),
        }
    }
}

/// Frames of the wasm backtrace kept in a trap message.
const BACKTRACE_FRAMES: usize = 8;

/// "wasm trap: wasm `unreachable` instruction executed (at boom <- <func 1>)".
fn trap_message(err: &wasmtime::Error) -> String {
    let mut message = match err.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => err.root_cause().to_string(),
    };
    if let Some(bt) = err.downcast_ref::<WasmBacktrace>() {
        let frames: Vec<String> = bt
            .frames()
            .iter()
            .take(BACKTRACE_FRAMES)
            .map(|frame| {
                let func = match frame.func_name() {
                    Some(func) => func.to_string(),
                    None => format!("<func {}>", frame.func_index()),
                };
                match frame.module().name() {
                    Some(module) => format!("{module}!{func}"),
                    None => func,
                }
            })
            .collect();
        if !frames.is_empty() {
            let more = if bt.frames().len() > BACKTRACE_FRAMES {
                " <- ..."
            } else {
                ""
            };
            message.push_str(&format!(" (at {}{more})", frames.join(" <- ")));
        }
    }
    message
}
