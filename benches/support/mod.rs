//! What the bench binaries share: a child process that is killed when dropped,
//! and starting a `flotilla` process that reports where it listens.

#![allow(dead_code)] // each bench binary uses its own part of it

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The `flotilla` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

/// A child process, killed and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with stdout piped and waits (60 s at most) for a line
/// containing `" listening on "`; returns the process and the address after it.
pub fn spawn_listening(mut cmd: Command) -> (Proc, String) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn flotilla");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(rest) = line.split(" listening on ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let proc = Proc(child);
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the process did not say where it listens within 60 s");
    (proc, addr)
}

/// `flotilla ARGS` with stderr discarded, ready for [`spawn_listening`].
pub fn flotilla(args: &[&str]) -> Command {
    flotilla_bin(BIN, args)
}

/// `flotilla server` of `bin` on a free loopback port, with the store and
/// the API alone (no scheduler, no controllers), plus `extra`.
pub fn bare_server(bin: &str, extra: &[&str]) -> Command {
    let mut cmd = flotilla_bin(
        bin,
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--no-scheduler",
            "--no-controllers",
        ],
    );
    cmd.args(extra);
    cmd
}

/// Which builds take turns: with FLOTILLA_BENCH_COMPARE_BIN=PATH, that binary
/// and this build, A B B A, so that drift over the run falls on both alike;
/// else this build alone.
pub fn turns() -> Vec<(&'static str, String)> {
    match std::env::var("FLOTILLA_BENCH_COMPARE_BIN") {
        Ok(other) => vec![
            ("baseline", other.clone()),
            ("this build", BIN.to_string()),
            ("this build", BIN.to_string()),
            ("baseline", other),
        ],
        Err(_) => vec![("this build", BIN.to_string())],
    }
}

/// [`flotilla`] of another build of the binary.
pub fn flotilla_bin(bin: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args).stderr(Stdio::null());
    cmd
}

/// The number in environment variable `name`, else `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The median of `v` (NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
