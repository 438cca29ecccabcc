//! One side of a join of two streams: its kept rows, found by key, with the rows the other
//! side matched when the side is an outer join's preserved side.

use std::collections::HashMap;

use arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use arrow::row::Rows;

use crate::error::Result;
use crate::runtime::memory::StateMemory;
use crate::runtime::operator::spill::{spill_oldest, StoredBatch};

/// A batch of one side's rows, kept until its last row expires.
pub(super) struct Kept {
    pub columns: StoredBatch,
    /// Each row's id, unique across instances and restarts (marks name rows by it).
    pub rids: UInt64Array,
    /// Which rows a row of the other side matched: for the preserved side of an outer join
    /// (its unmatched rows are emitted with NULLs when they leave), empty otherwise.
    pub matched: Vec<bool>,
    /// The latest expiry of its rows (event time).
    pub expires: i64,
    /// When it was kept (UTC microseconds of the wall clock), for `state_ttl`.
    pub kept_at: i64,
    /// Bytes its index entries, ids and marks hold (its columns' are theirs).
    pub overhead: usize,
}

impl Kept {
    /// Bytes it holds in memory, with its index entries.
    pub fn bytes(&self) -> usize {
        self.columns.memory_bytes() + self.overhead
    }
}

/// A batch processed and not yet committed, with what it matched meanwhile.
pub(super) struct Pending {
    pub batch: RecordBatch,
    /// Its key columns, as evaluated when it was processed.
    pub keys: Vec<ArrayRef>,
    pub rids: UInt64Array,
    pub matched: Vec<bool>,
}

/// One side's kept rows, found by key.
#[derive(Default)]
pub(super) struct Side {
    pub kept: HashMap<u64, Kept>,
    /// Rows by key: (batch id, row). Entries of dropped batches go at the next rebuild.
    pub index: HashMap<Box<[u8]>, Vec<(u64, u32)>, ahash::RandomState>,
    index_rows: usize,
    dropped_rows: usize,
    /// Batches processed, not yet committed.
    pub pending: Vec<Pending>,
    /// Kept rows a batch being processed matched: (batch id, row), marked at its commit.
    pub pending_marks: Vec<(u64, u32)>,
    /// Batches kept since the last snapshot.
    pub unsnapshotted: Vec<u64>,
    /// Kept rows marked since the last snapshot: (batch id, row).
    pub marked: Vec<(u64, u32)>,
    pub rows: usize,
    pub bytes: usize,
    /// Bytes of the kept batches' columns in memory (the part that can spill).
    columns_in_memory: usize,
    /// Bytes on disk of the kept batches spilled.
    pub spilled: u64,
}

impl Side {
    /// Keeps `kept` as batch `id`, its rows found by `keys`.
    pub fn keep(&mut self, id: u64, mut kept: Kept, keys: &Rows) {
        for (r, key) in keys.iter().enumerate() {
            self.index
                .entry(key.as_ref().into())
                .or_default()
                .push((id, r as u32));
        }
        let n = kept.columns.num_rows();
        self.index_rows += n;
        self.rows += n;
        let columns = kept.columns.memory_bytes();
        self.columns_in_memory += columns;
        kept.overhead = keys.size() + 24 * n + kept.matched.len();
        self.bytes += kept.bytes();
        self.kept.insert(id, kept);
        self.unsnapshotted.push(id);
    }

    /// Marks row `row` of kept batch `batch` as matched.
    pub fn mark(&mut self, batch: u64, row: u32) {
        if let Some(k) = self.kept.get_mut(&batch) {
            if let Some(m) = k.matched.get_mut(row as usize) {
                if !*m {
                    *m = true;
                    self.marked.push((batch, row));
                }
            }
        }
    }

    /// Drops and returns the batches whose every row expired by `watermark`, or was kept
    /// before `kept_before`.
    pub fn expire(&mut self, watermark: i64, kept_before: i64) -> Vec<Kept> {
        let dropped: Vec<Kept> = self
            .kept
            .extract_if(|_, k| k.expires < watermark || k.kept_at < kept_before)
            .map(|(_, k)| k)
            .collect();
        if dropped.is_empty() {
            return dropped;
        }
        let rows: usize = dropped.iter().map(|k| k.columns.num_rows()).sum();
        self.rows -= rows;
        self.bytes -= dropped.iter().map(Kept::bytes).sum::<usize>();
        for k in &dropped {
            self.columns_in_memory -= k.columns.memory_bytes();
            self.spilled -= k.columns.spilled_bytes();
        }
        self.dropped_rows += rows;
        if self.dropped_rows * 2 > self.index_rows {
            let kept = &self.kept;
            self.index.retain(|_, ids| {
                ids.retain(|(b, _)| kept.contains_key(b));
                !ids.is_empty()
            });
            self.index_rows -= self.dropped_rows;
            self.dropped_rows = 0;
        }
        dropped
    }

    /// Moves the columns of the oldest batches kept in memory to one spill file, until at most
    /// `keep` bytes of columns stay in memory.
    pub fn spill(&mut self, memory: &StateMemory, keep: usize) -> Result<()> {
        let mut in_memory: Vec<(u64, &mut StoredBatch)> = self
            .kept
            .iter_mut()
            .map(|(id, k)| (*id, &mut k.columns))
            .collect();
        in_memory.sort_unstable_by_key(|(id, _)| *id);
        let oldest = in_memory.into_iter().map(|(_, c)| c);
        let (freed, on_disk) = spill_oldest(oldest, self.columns_in_memory, keep, memory)?;
        self.columns_in_memory -= freed;
        self.bytes -= freed;
        self.spilled += on_disk;
        Ok(())
    }

    /// Bytes of kept columns in memory.
    pub fn columns_in_memory(&self) -> usize {
        self.columns_in_memory
    }
}
