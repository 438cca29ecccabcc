//! A pipeline run's memory budget for operator state: DataFusion memory pools that account the
//! state operators hold and the work DataFusion does merging it, and the disk manager whose
//! temporary files take the state that does not fit.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryPool, MemoryReservation, TrackConsumersPool,
    UnboundedMemoryPool,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::TaskContext;

use crate::error::{Error, Result};

/// The budget when a pipeline sets none.
pub const DEFAULT_STATE_MEMORY: usize = 1 << 30;

/// The least budget a pipeline accepts: below it one batch's states may not fit.
pub const MIN_STATE_MEMORY: usize = 4 << 20;

/// Memory for one run's operator state, shared by every operator and instance of the run.
///
/// The budget bounds the state held between batches: each stateful operator keeps a reservation
/// the size of the state it holds in memory and, when the reservation cannot grow, moves state
/// to spill files (or, for state it cannot spill, fails the pipeline with a clear error).
///
/// State that cannot spill has the first claim on the budget: when an operator's does not fit
/// because others hold state that can spill, it is let in over the budget, and the others spill
/// at their next batch until the run fits again. A pipeline fails only when the state that
/// cannot spill, of all its operators together, is past the budget.
///
/// The work of DataFusion's aggregations is not in the budget: the Partial stage holds one
/// batch's groups, and the merges at a checkpoint or a window's close hold the groups they
/// merge. Their pool may be bounded ([`StateMemory::with_merge_memory`]), and they spill
/// through the disk manager past it; but a single group's state cannot spill (Nexmark q16's
/// per-day distinct bidders, one list per group, needed more than 1 GB to merge), so by default
/// they take what they need rather than fail a pipeline whose state fits.
#[derive(Debug)]
pub struct StateMemory {
    budget: usize,
    state_pool: Arc<dyn MemoryPool>,
    /// Bytes of state that cannot spill, last declared by each operator (see [`Budget::hold`]).
    pinned: AtomicUsize,
    task: Arc<TaskContext>,
}

impl StateMemory {
    /// A budget of `budget` bytes (the default when `None`).
    pub fn new(budget: Option<usize>) -> Result<Arc<Self>> {
        // Pipelines are held to MIN_STATE_MEMORY when their options are read; tests go lower.
        let budget = budget.unwrap_or(DEFAULT_STATE_MEMORY).max(1024);
        Self::with_merge_memory(budget, None)
    }

    /// A budget of `budget` bytes whose merges get `work` bytes, and spill past them, or as much
    /// as they need when `None`.
    pub fn with_merge_memory(budget: usize, work: Option<usize>) -> Result<Arc<Self>> {
        let top = NonZeroUsize::new(3).expect("three is not zero");
        let state_pool: Arc<dyn MemoryPool> =
            Arc::new(TrackConsumersPool::new(GreedyMemoryPool::new(budget), top));
        // The default disk manager spills into a directory under the OS's temporary one.
        let merges: Arc<dyn MemoryPool> = match work {
            Some(work) => Arc::new(TrackConsumersPool::new(GreedyMemoryPool::new(work), top)),
            None => Arc::new(UnboundedMemoryPool::default()),
        };
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(merges)
            .build_arc()?;
        let task = Arc::new(TaskContext::default().with_runtime(runtime));
        Ok(Arc::new(StateMemory {
            budget,
            state_pool,
            pinned: AtomicUsize::new(0),
            task,
        }))
    }

    /// The budget, in bytes.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Whether the state held in memory is within the budget.
    fn within_budget(&self) -> bool {
        self.state_pool.reserved() <= self.budget
    }

    /// An empty reservation for the state of the operator (instance) `name`.
    pub fn reservation(&self, name: &str) -> MemoryReservation {
        MemoryConsumer::new(name)
            .with_can_spill(true)
            .register(&self.state_pool)
    }

    /// The context DataFusion's merges of state run in, and spill through.
    pub fn task(&self) -> &Arc<TaskContext> {
        &self.task
    }

    /// A new temporary file, deleted when the last handle to it is dropped.
    pub fn temp_file(&self, what: &str) -> Result<Arc<dyn datafusion::execution::SpillFile>> {
        Ok(self.task.runtime_env().disk_manager.create_tmp_file(what)?)
    }
}

/// One operator instance's part of a [`StateMemory`]: a reservation the size of the state it
/// holds in memory.
#[derive(Debug)]
pub struct Budget {
    memory: Arc<StateMemory>,
    reservation: MemoryReservation,
    /// Bytes of its state that cannot spill, as last declared.
    pinned: usize,
}

impl Budget {
    /// An empty reservation of `memory` for operator `name`.
    pub fn new(memory: &Arc<StateMemory>, name: &str) -> Self {
        Budget {
            reservation: memory.reservation(name),
            memory: memory.clone(),
            pinned: 0,
        }
    }

    /// Sets the reservation to `bytes` when the run's state then fits the budget; false when it
    /// does not (a reservation that would grow is unchanged; one that shrinks shrinks, and the
    /// state of others let in over the budget may still not fit: spill).
    pub fn fits(&mut self, bytes: usize) -> bool {
        let fits = self.reservation.try_resize(bytes).is_ok() && self.memory.within_budget();
        if fits {
            self.pin(0);
        }
        fits
    }

    /// Holds `bytes` of `what`, which cannot spill. When the budget has no room only because
    /// others hold state that can spill, it is held over the budget and they spill at their
    /// next batch; fails with the error for it when the state that cannot spill, this
    /// operator's and all others', is past the budget.
    pub fn hold(&mut self, bytes: usize, what: &str) -> Result<()> {
        let fits = self.fits(bytes);
        self.pin(bytes);
        if fits {
            return Ok(());
        }
        if self.memory.pinned.load(Ordering::Relaxed) > self.memory.budget {
            return Err(self.exhausted(what, bytes));
        }
        self.reservation.resize(bytes);
        tracing::debug!(
            bytes,
            what,
            "State that cannot spill held over the budget; others spill."
        );
        Ok(())
    }

    /// Declares `bytes` of its state as state that cannot spill.
    fn pin(&mut self, bytes: usize) {
        if bytes >= self.pinned {
            self.memory
                .pinned
                .fetch_add(bytes - self.pinned, Ordering::Relaxed);
        } else {
            self.memory
                .pinned
                .fetch_sub(self.pinned - bytes, Ordering::Relaxed);
        }
        self.pinned = bytes;
    }

    /// Holds `state`, whose size in memory is `bytes(state)`: past the budget, `spill(state,
    /// memory, all)` moves part of it to disk (the older half, then `all`); fails naming `what`
    /// when what stays in memory still does not fit.
    pub fn fit_spilling<S: ?Sized>(
        &mut self,
        state: &mut S,
        bytes: impl Fn(&S) -> usize,
        mut spill: impl FnMut(&mut S, &Arc<StateMemory>, bool) -> Result<()>,
        what: &str,
    ) -> Result<()> {
        for all in [false, true] {
            if self.fits(bytes(state)) {
                return Ok(());
            }
            let memory = self.memory.clone();
            spill(state, &memory, all)?;
        }
        self.hold(bytes(state), what)
    }

    /// Holds `bytes` of `what` in `budget`, when the operator has one (see [`Budget::hold`]).
    pub fn hold_in(budget: Option<&mut Budget>, bytes: usize, what: &str) -> Result<()> {
        match budget {
            Some(budget) => budget.hold(bytes, what),
            None => Ok(()),
        }
    }

    /// The run's memory, for spill files and DataFusion plans.
    pub fn memory(&self) -> &Arc<StateMemory> {
        &self.memory
    }

    /// The error for state of `bytes` that cannot spill and does not fit.
    pub fn exhausted(&self, what: &str, bytes: usize) -> Error {
        Error::StateMemoryExhausted(format!(
            "{what} holds {} in memory and cannot spill to disk, beyond the pipeline's state memory of {}: raise it with WITH (state_memory = '...')",
            human_bytes(bytes as u64),
            human_bytes(self.memory.budget() as u64),
        ))
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.pin(0);
    }
}

/// `bytes` as a person reads it (`12.5 MB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print() {
        assert_eq!(human_bytes(1536), "1.5 kB");
        assert_eq!(human_bytes(12), "12 bytes");
    }

    #[test]
    fn a_budget_refuses_what_does_not_fit() {
        let memory = StateMemory::new(Some(8 << 20)).unwrap();
        let mut a = Budget::new(&memory, "a");
        let mut b = Budget::new(&memory, "b");
        assert!(a.fits(7 << 20));
        assert!(!b.fits(2 << 20), "7 of 8 MB are taken");
        assert!(a.fits(1 << 20));
        assert!(b.fits(2 << 20));
        let e = b.exhausted("DISTINCT", 9 << 20).to_string();
        assert!(e.contains("9.0 MB") && e.contains("8.0 MB"), "{e}");
    }

    #[test]
    fn state_that_cannot_spill_goes_first_and_the_rest_spills() {
        let memory = StateMemory::new(Some(8 << 20)).unwrap();
        let mut spills = Budget::new(&memory, "join");
        let mut pinned = Budget::new(&memory, "top_n");
        assert!(
            spills.fits(7 << 20),
            "state that can spill takes most of it"
        );
        // Keys that cannot spill are let in over the budget rather than failing the run...
        pinned.hold(3 << 20, "keys").unwrap();
        // ...and the state that can spill no longer fits where it is, even shrinking: it spills.
        assert!(!spills.fits(6 << 20));
        assert!(spills.fits(5 << 20));
        // Pinned state past the budget, all of it together, fails with the error for it.
        let mut more = Budget::new(&memory, "distinct");
        let e = more
            .hold(6 << 20, "DISTINCT's set")
            .unwrap_err()
            .to_string();
        assert!(e.contains("DISTINCT's set holds 6.0 MB"), "{e}");
        drop(pinned);
        more.hold(6 << 20, "DISTINCT's set").unwrap();
    }
}
