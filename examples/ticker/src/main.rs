//! `ticker`: a command-world program (`wasi:cli/run`).
//!
//! Prints `tick 1`, `tick 2`, ... to stdout, one line a second, forever,
//! flushing each line so logs show it at once. It never exits on its own;
//! stop it by deleting the instance.

use std::io::Write;
use std::thread::sleep;
use std::time::Duration;

fn main() {
    let mut n: u64 = 0;
    loop {
        n += 1;
        let mut out = std::io::stdout().lock();
        // A closed stdout is no reason to stop ticking.
        let _ = writeln!(out, "tick {n}");
        let _ = out.flush();
        drop(out);
        sleep(Duration::from_secs(1));
    }
}
