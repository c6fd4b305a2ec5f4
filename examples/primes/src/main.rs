//! `primes`: a command-world program (`wasi:cli/run`) for a Job, on the
//! `flotilla-guest` SDK.
//!
//! Counts the primes below `LIMIT` (an environment variable of the spec,
//! default 1000000) with a sieve, prints `primes below LIMIT: COUNT` to
//! stdout and exits 0. A `LIMIT` that is not a whole number from 2 to
//! 100000000 is logged as an error and exits 2, so the Job records a failure.

use std::process::ExitCode;

const DEFAULT_LIMIT: usize = 1_000_000;
const MAX_LIMIT: usize = 100_000_000;

fn main() -> ExitCode {
    let ctx = flotilla_guest::context();
    let limit = match ctx.env("LIMIT") {
        None => DEFAULT_LIMIT,
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if (2..=MAX_LIMIT).contains(&n) => n,
            _ => {
                flotilla_guest::error!(
                    "LIMIT={text:?}: expected a whole number from 2 to {MAX_LIMIT}"
                );
                return ExitCode::from(2);
            }
        },
    };
    flotilla_guest::info!(
        "counting primes below {limit} on {}",
        ctx.node_name().unwrap_or("this machine")
    );
    println!("primes below {limit}: {}", count_primes(limit));
    ExitCode::SUCCESS
}

/// The number of primes p with 2 <= p < limit.
fn count_primes(limit: usize) -> usize {
    let mut composite = vec![false; limit];
    let mut count = 0;
    for n in 2..limit {
        if composite[n] {
            continue;
        }
        count += 1;
        let mut multiple = n.saturating_mul(n);
        while multiple < limit {
            composite[multiple] = true;
            multiple += n;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_known_values() {
        assert_eq!(super::count_primes(2), 0);
        assert_eq!(super::count_primes(10), 4);
        assert_eq!(super::count_primes(1_000_000), 78_498);
    }
}
