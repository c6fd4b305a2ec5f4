//! `ticker`: a command-world program (`wasi:cli/run`) on the `flotilla-guest`
//! SDK.
//!
//! Prints `tick 1`, `tick 2`, ... to stdout, one line a second, until the node
//! asks it to stop (the instance is deleted); then it logs how many ticks it
//! made and returns from `main` (exit code 0) within its grace period.

use std::io::Write;
use std::time::Duration;

fn main() {
    flotilla_guest::info!("ticker starting");
    let mut n: u64 = 0;
    flotilla_guest::command::every(Duration::from_secs(1), || {
        n += 1;
        let mut out = std::io::stdout().lock();
        // A closed stdout is no reason to stop ticking.
        let _ = writeln!(out, "tick {n}");
        let _ = out.flush();
    });
    flotilla_guest::info!("stop requested: stopping after {n} ticks");
}
