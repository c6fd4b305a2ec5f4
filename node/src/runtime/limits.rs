//! Per-store limits: memory (a `ResourceLimiter` over all memories and tables)
//! and CPU (an epoch-deadline callback that throttles to the instance's share
//! of a core and kills a guest that never returns to the host).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::UpdateDeadline;

use super::engine::EPOCH_TICK;

/// The guest asked for more memory than its limit; becomes a trap.
#[derive(Debug, thiserror::Error)]
#[error("memory limit {limit} bytes exceeded: {what} to {total} bytes refused")]
pub(crate) struct MemoryLimitExceeded {
    limit: u64,
    total: u64,
    what: &'static str,
}

/// The guest ran too long without returning to the host; becomes a trap.
#[derive(Debug, thiserror::Error)]
#[error("cpu limit exceeded: ran {ran_ms} ms without returning to the host (busy timeout {timeout_ms} ms)")]
pub(crate) struct CpuLimitExceeded {
    ran_ms: u128,
    timeout_ms: u128,
}

/// Bytes a table element costs (wasmtime stores one pointer per element).
const TABLE_ELEMENT_BYTES: u64 = std::mem::size_of::<usize>() as u64;

/// Caps one store's memories and tables together.
pub(crate) struct MemoryLimiter {
    /// Bytes of all memories plus tables. Stops one instance from taking the
    /// node's memory from its neighbours.
    limit: u64,
    /// Bytes currently granted.
    used: u64,
    /// The last growth granted, taken back if wasmtime then fails it.
    last_grant: u64,
    /// The first growth refused, kept to classify a later trap as OOM.
    refused: Option<String>,
}

/// Memories, tables and core instances one store may create. Stops a module
/// from exhausting the pool's slots (or the limiter's accounting) by declaring
/// thousands of them.
const MAX_PER_STORE: usize = 100;

impl MemoryLimiter {
    pub(crate) fn new(limit: u64) -> Self {
        MemoryLimiter {
            limit,
            used: 0,
            last_grant: 0,
            refused: None,
        }
    }

    /// The refusal message, if this store was ever refused memory.
    pub(crate) fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    fn grow(&mut self, current: u64, desired: u64, what: &'static str) -> wasmtime::Result<bool> {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.limit {
            let err = MemoryLimitExceeded {
                limit: self.limit,
                total,
                what,
            };
            self.refused.get_or_insert_with(|| err.to_string());
            // A trap rather than `memory.grow` returning -1: the instance is
            // OOM-killed, as a container over its limit would be.
            return Err(wasmtime::Error::new(err));
        }
        self.used = total;
        self.last_grant = desired - current.min(desired);
        Ok(true)
    }

    fn grow_failed(&mut self) {
        self.used = self.used.saturating_sub(self.last_grant);
        self.last_grant = 0;
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(current as u64, desired as u64, "memory.grow")
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(
            current as u64 * TABLE_ELEMENT_BYTES,
            desired as u64 * TABLE_ELEMENT_BYTES,
            "table.grow",
        )
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn instances(&self) -> usize {
        MAX_PER_STORE
    }

    fn tables(&self) -> usize {
        MAX_PER_STORE
    }

    fn memories(&self) -> usize {
        MAX_PER_STORE
    }
}

/// The window over which an instance's CPU share is measured.
const THROTTLE_WINDOW: Duration = Duration::from_millis(100);

/// An instance's CPU share, shared by all of its stores (one per http request).
/// Stops one instance from starving its neighbours of CPU.
pub(crate) struct Throttle {
    /// Millicores: 1000 = one full core.
    millis: u64,
    window: Mutex<Window>,
}

struct Window {
    start: Instant,
    used: Duration,
}

impl Throttle {
    /// `None` when unlimited (0).
    pub(crate) fn new(millis: u64) -> Option<Arc<Self>> {
        (millis > 0).then(|| {
            Arc::new(Throttle {
                millis,
                window: Mutex::new(Window {
                    start: Instant::now(),
                    used: Duration::ZERO,
                }),
            })
        })
    }

    /// Charges `ran` of CPU; returns how long to sleep if the window's budget
    /// is used up.
    fn charge(&self, now: Instant, ran: Duration) -> Option<Duration> {
        let budget = THROTTLE_WINDOW * self.millis.min(u64::from(u32::MAX)) as u32 / 1000;
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(window.start) >= THROTTLE_WINDOW {
            window.start = now;
            window.used = Duration::ZERO;
        }
        window.used += ran;
        if window.used < budget {
            return None;
        }
        // Sleep out the rest of this window; the next one starts fresh.
        let end = window.start + THROTTLE_WINDOW;
        window.start = end;
        window.used = Duration::ZERO;
        Some(end.saturating_duration_since(now))
    }
}

/// One store's CPU accounting, driven by the epoch-deadline callback (every
/// epoch tick while the guest runs Wasm).
pub(crate) struct CpuMeter {
    /// A guest that runs this long without a host call is killed. Stops an
    /// infinite loop from holding a core (and a pool slot) forever.
    busy_timeout: Duration,
    throttle: Option<Arc<Throttle>>,
    /// Bumped by every WASI host call (through the store's views).
    host_calls: u64,
    seen_host_calls: u64,
    busy_since: Instant,
    last_tick: Instant,
}

impl CpuMeter {
    pub(crate) fn new(busy_timeout: Duration, throttle: Option<Arc<Throttle>>) -> Self {
        let now = Instant::now();
        CpuMeter {
            busy_timeout,
            throttle,
            host_calls: 0,
            seen_host_calls: 0,
            busy_since: now,
            last_tick: now,
        }
    }

    /// The guest called into the host: it is making progress.
    #[inline]
    pub(crate) fn host_call(&mut self) {
        self.host_calls = self.host_calls.wrapping_add(1);
    }

    /// The epoch deadline was reached while the guest was running Wasm.
    pub(crate) fn on_epoch(&mut self) -> wasmtime::Result<UpdateDeadline> {
        let now = Instant::now();
        // At most one tick ran since the previous callback; anything longer was
        // spent waiting in the host or sleeping, not running.
        let ran = now.duration_since(self.last_tick).min(EPOCH_TICK);
        self.last_tick = now;
        if self.host_calls != self.seen_host_calls {
            self.seen_host_calls = self.host_calls;
            self.busy_since = now;
        }
        let busy = now.duration_since(self.busy_since);
        if busy >= self.busy_timeout {
            return Err(wasmtime::Error::new(CpuLimitExceeded {
                ran_ms: busy.as_millis(),
                timeout_ms: self.busy_timeout.as_millis(),
            }));
        }
        if let Some(sleep) = self.throttle.as_ref().and_then(|t| t.charge(now, ran)) {
            return Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::time::sleep(sleep)),
            ));
        }
        // Yield every tick so a busy guest shares its worker thread and a stop
        // (task abort) takes effect within a tick.
        Ok(UpdateDeadline::Yield(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn limiter_counts_memories_and_tables_together() {
        let mut l = MemoryLimiter::new(1 << 20);
        assert!(l.memory_growing(0, 512 << 10, None).unwrap());
        assert!(l.table_growing(0, 1000, None).unwrap());
        let err = l.memory_growing(0, 512 << 10, None).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("memory limit 1048576 bytes exceeded"),
            "{msg}"
        );
        assert!(l.refused().is_some());
        // A failed growth gives its bytes back.
        assert!(l.memory_growing(512 << 10, 768 << 10, None).unwrap());
        l.memory_grow_failed(wasmtime::Error::msg("os said no"))
            .unwrap();
        assert!(l.memory_growing(512 << 10, 1000 << 10, None).unwrap());
    }

    #[test]
    fn throttle_sleeps_when_the_window_budget_is_spent() {
        let t = Throttle::new(100).unwrap();
        let now = Instant::now();
        assert_eq!(t.charge(now, Duration::from_millis(5)), None);
        let sleep = t.charge(now, Duration::from_millis(5)).unwrap();
        assert!(sleep > Duration::from_millis(50), "{sleep:?}");
        assert!(Throttle::new(0).is_none());
    }
}
