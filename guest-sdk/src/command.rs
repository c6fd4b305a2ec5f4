//! Command-world programs (`world: command`): a main loop that ends when the
//! node asks the instance to stop.
//!
//! # How a node stops an instance
//!
//! When an instance is deleted (or its node drains), the node does not kill a
//! command-world instance at once. It **closes the instance's stdin** and
//! gives it `spec.terminationGracePeriodSeconds` (default 30) to return from
//! `main`; after that it kills it. The node sets [`ENV_STOP_SIGNAL`]`=stdin`
//! so a program knows stdin's end means "stop" and not "no input".
//!
//! [`every`] and [`sleep`] wake up at once when that happens;
//! [`stop_requested`] asks without waiting. Outside Flotilla (no
//! [`ENV_STOP_SIGNAL`]) a stop is never requested and they just wait.
//!
//! ```ignore
//! fn main() {
//!     let mut n = 0;
//!     flotilla_guest::command::every(Duration::from_secs(1), || {
//!         n += 1;
//!         println!("tick {n}");
//!     });
//!     println!("stopping after {n} ticks");
//! }
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasi::io::streams::StreamError;

use crate::context::ENV_STOP_SIGNAL;

static STOPPING: AtomicBool = AtomicBool::new(false);

/// True when the stop signal is on (the node set [`ENV_STOP_SIGNAL`]).
fn signalled_by_stdin() -> bool {
    std::env::var(ENV_STOP_SIGNAL).is_ok_and(|v| v == "stdin")
}

/// True once the node has asked this instance to stop. Does not wait.
pub fn stop_requested() -> bool {
    wait_for_stop(Duration::ZERO)
}

/// Sleeps for `duration`, or less if the node asks the instance to stop.
/// Returns true when it woke for a stop.
pub fn sleep(duration: Duration) -> bool {
    wait_for_stop(duration)
}

/// Calls `tick` now and then every `period` (measured from each call's
/// start) until the node asks the instance to stop; then returns, so the
/// program can finish its work and return from `main`.
pub fn every(period: Duration, mut tick: impl FnMut()) {
    loop {
        let started = wasi::clocks::monotonic_clock::now();
        if stop_requested() {
            return;
        }
        tick();
        let spent =
            Duration::from_nanos(wasi::clocks::monotonic_clock::now().saturating_sub(started));
        if sleep(period.saturating_sub(spent)) {
            return;
        }
    }
}

fn wait_for_stop(timeout: Duration) -> bool {
    if STOPPING.load(Ordering::Relaxed) {
        return true;
    }
    let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    if !signalled_by_stdin() {
        if nanos > 0 {
            wasi::clocks::monotonic_clock::subscribe_duration(nanos).block();
        }
        return false;
    }
    let stdin = wasi::cli::stdin::get_stdin();
    let readable = stdin.subscribe();
    let timer = wasi::clocks::monotonic_clock::subscribe_duration(nanos);
    loop {
        let ready = wasi::io::poll::poll(&[&readable, &timer]);
        if ready.contains(&0) {
            // Only the end of stdin means stop; bytes written to it are dropped.
            match stdin.read(4096) {
                Err(StreamError::Closed) | Err(StreamError::LastOperationFailed(_)) => {
                    STOPPING.store(true, Ordering::Relaxed);
                    return true;
                }
                Ok(_) => {
                    if ready.contains(&1) {
                        return false;
                    }
                    continue;
                }
            }
        }
        return false;
    }
}
