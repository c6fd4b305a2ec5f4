//! The node's one wasmtime `Engine`: pooling allocator sized from the runtime
//! config, epoch interruption driven by one ticker thread.

use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::{RuntimeConfig, RuntimeError};

/// The wasmtime version, as the Node object reports it.
pub(crate) const WASMTIME_VERSION: &str = "48.0.8";

/// How often the engine's epoch advances: the granularity of CPU throttling,
/// busy-timeout checks and stopping a running guest.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Core instances a component may bring (its main module, adapters and shims):
/// the pool holds this many per component instance slot.
const CORE_INSTANCES_PER_COMPONENT: u32 = 4;
/// Memories and tables per component instance slot.
const MEMORIES_PER_COMPONENT: u32 = 2;

/// Guard region after each linear memory. Memories are bounds-checked
/// explicitly (the reservation is small), so this only has to cover static
/// offsets; kept small so a pool of thousands of slots stays modest in
/// virtual memory.
const MEMORY_GUARD: u64 = 64 << 10;

/// Most bytes of a linear memory, and of a table, that a freed slot resets
/// by copying back what its guest wrote instead of handing the pages to
/// `madvise`. An `madvise` in a process whose threads run on several CPUs
/// sends each of them an interrupt to flush its TLB, which on a virtual
/// machine costs tens of microseconds per instance; a guest that writes less
/// than this per instance (a request handler, typically) frees its slot
/// without a system call. Used only where the kernel can say which pages
/// were written (`PAGEMAP_SCAN`, Linux 6.7), else keeping pages resident
/// would mean zeroing all of them every time.
const KEEP_RESIDENT: usize = 1 << 20;
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

pub(crate) fn build(config: &RuntimeConfig) -> Result<Engine, RuntimeError> {
    let RuntimeConfig {
        cache_dir: _,
        max_instances,
        max_memory_per_instance,
        busy_timeout: _,
        request_timeout: _,
        http_concurrency: _,
    } = config;

    let mut base = Config::new();
    base.wasm_component_model(true)
        .epoch_interruption(true)
        // Each memory slot reserves only the largest memory an instance may
        // have, not wasmtime's default 4 GiB.
        .memory_reservation(round_to_page(*max_memory_per_instance))
        .memory_reservation_for_growth(0)
        .memory_guard_size(MEMORY_GUARD)
        .guard_before_linear_memory(false);

    let mut pooled = base.clone();
    let mut pool = PoolingAllocationConfig::default();
    let slots = (*max_instances).max(1);
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .total_memories(slots.saturating_mul(MEMORIES_PER_COMPONENT))
        .total_tables(slots.saturating_mul(MEMORIES_PER_COMPONENT))
        .total_stacks(slots)
        .total_gc_heaps(slots)
        .max_memory_size(
            usize::try_from(round_to_page(*max_memory_per_instance)).unwrap_or(usize::MAX),
        );
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(wasmtime::Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(TABLE_KEEP_RESIDENT);
    }
    pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));

    let engine = match Engine::new(&pooled) {
        Ok(engine) => engine,
        Err(e) => {
            tracing::warn!(
                error = %e,
                max_instances,
                "cannot create the pooling allocator; falling back to on-demand allocation"
            );
            Engine::new(&base).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?
        }
    };
    spawn_ticker(&engine)?;
    Ok(engine)
}

fn round_to_page(bytes: u64) -> u64 {
    const PAGE: u64 = 64 << 10;
    bytes.max(PAGE).div_ceil(PAGE) * PAGE
}

/// One thread per engine advances the epoch every tick; it ends once the
/// engine (every store and module of it) is gone.
fn spawn_ticker(engine: &Engine) -> Result<(), RuntimeError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("flotilla-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })?;
    Ok(())
}
