//! Log lines on stderr, one per call, in the shape `flotilla logs` shows:
//!
//! ```text
//! INFO  reading posted: 21.4 C
//! WARN  collector answered 503, retrying
//! ```
//!
//! The level word is padded to five characters so messages line up. The
//! threshold is the `FLOTILLA_LOG` environment variable (`error`, `warn`,
//! `info`, `debug`; default `info`), set like any other `env` entry of the
//! spec. Each line is written with one call, so lines from concurrent
//! requests of an http-world instance do not interleave.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

/// The environment variable holding the threshold.
pub const ENV_LOG: &str = "FLOTILLA_LOG";

/// How important a line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something failed.
    Error = 1,
    /// Something looks wrong.
    Warn = 2,
    /// Normal operation.
    Info = 3,
    /// Detail for finding a fault.
    Debug = 4,
}

impl Level {
    /// The word printed: `ERROR`, `WARN`, `INFO`, `DEBUG`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }

    fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" | "trace" => Some(Level::Debug),
            _ => None,
        }
    }
}

/// 0 = not read yet.
static THRESHOLD: AtomicU8 = AtomicU8::new(0);

/// True when lines of `level` are written.
pub fn enabled(level: Level) -> bool {
    let mut threshold = THRESHOLD.load(Ordering::Relaxed);
    if threshold == 0 {
        threshold = std::env::var(ENV_LOG)
            .ok()
            .and_then(|v| Level::parse(&v))
            .unwrap_or(Level::Info) as u8;
        THRESHOLD.store(threshold, Ordering::Relaxed);
    }
    level as u8 <= threshold
}

/// Writes one line at `level`; what the macros call.
pub fn write(level: Level, message: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let line = format_line(level, message);
    // Nowhere to report a closed stderr.
    let _ = std::io::stderr().write_all(line.as_bytes());
}

fn format_line(level: Level, message: fmt::Arguments<'_>) -> String {
    let mut line = format!("{:<5} {message}", level.as_str());
    // One record per line: embedded newlines would look like other records.
    if line.contains('\n') {
        line = line.replace('\n', "\\n");
    }
    line.push('\n');
    line
}

/// Logs at error level: `error!("reading {path}: {e}")`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($arg)*)) };
}

/// Logs at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*)) };
}

/// Logs at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($arg)*)) };
}

/// Logs at debug level (written only with `FLOTILLA_LOG=debug`).
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_a_padded_level_and_stay_one_line() {
        assert_eq!(
            format_line(Level::Info, format_args!("up {}", 1)),
            "INFO  up 1\n"
        );
        assert_eq!(
            format_line(Level::Error, format_args!("a\nb")),
            "ERROR a\\nb\n"
        );
        assert_eq!(Level::parse(" Warning "), Some(Level::Warn));
        assert_eq!(Level::parse("loud"), None);
        assert!(Level::Error < Level::Debug);
    }
}
