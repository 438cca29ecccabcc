//! Partial aggregate states waiting for the watermark, the state of the window and session
//! aggregates: the committed ones (in memory, or spilled to files sorted by end), those of
//! batches not yet committed, those committed since the last snapshot, and the earliest end
//! among them, before which no watermark closes anything.

use arrow::array::{Array, BooleanArray};
use arrow::compute::{concat_batches, SortOptions};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use super::key_runs::Bloom;
use super::spill::{spill_batches, SpillFile, StateChunk};
use crate::error::Result;
use crate::runtime::event_time::{micros, END_OF_TIME};
use crate::runtime::memory::StateMemory;

/// Rows per spill file: a watermark loads back only the files whose earliest end it passed.
const SPILL_FILE_ROWS: usize = 65_536;

/// The keys of states (in Arrow's row format), for a filter of the keys spilled.
pub type KeysOf<'a> = &'a dyn Fn(&RecordBatch) -> Result<Vec<Box<[u8]>>>;

/// A file of spilled states, sorted by end.
struct Spilled {
    file: SpillFile,
    /// Its earliest end (rows without an end count as the end of time).
    earliest: i64,
    /// Its states' keys, when spilled with them.
    keys: Option<Bloom>,
}

/// Partial states keyed by an end (`window_end`) that the watermark closes.
pub struct OpenStates {
    /// Column of the end in the states.
    end: usize,
    /// Committed states in memory.
    open: Vec<RecordBatch>,
    rows: usize,
    open_bytes: usize,
    /// Committed states on disk.
    spilled: Vec<Spilled>,
    /// States of batches not yet committed.
    pending: Vec<RecordBatch>,
    /// States committed since the last snapshot.
    unsnapshotted: Vec<StateChunk>,
    /// Bytes of the unsnapshotted batches that are no longer among the open ones (merged or
    /// spilled since), so that they take memory of their own.
    detached_bytes: usize,
    /// The earliest end among the committed states in memory (`None` when unknown: a row has
    /// no end).
    earliest_end: Option<i64>,
}

impl OpenStates {
    /// No states, their end in column `end`.
    pub fn new(end: usize) -> Self {
        OpenStates {
            end,
            open: Vec::new(),
            rows: 0,
            open_bytes: 0,
            spilled: Vec::new(),
            pending: Vec::new(),
            unsnapshotted: Vec::new(),
            detached_bytes: 0,
            earliest_end: Some(i64::MAX),
        }
    }

    /// Holds the states of a batch until it is committed or aborted.
    pub fn stage(&mut self, states: Vec<RecordBatch>) {
        self.pending.extend(states);
    }

    /// Takes the staged states into the committed ones.
    pub fn commit(&mut self) {
        for states in std::mem::take(&mut self.pending) {
            self.unsnapshotted.push(StateChunk::Batch(states.clone()));
            self.add(states);
        }
    }

    /// Adds committed (or restored) states.
    pub fn add(&mut self, states: RecordBatch) {
        if states.num_rows() == 0 {
            return;
        }
        self.earliest_end = self
            .earliest_end
            .zip(self.earliest_end_of(&states))
            .map(|(a, b)| a.min(b));
        self.rows += states.num_rows();
        self.open_bytes += states.get_array_memory_size();
        self.open.push(states);
    }

    /// Drops the staged states.
    pub fn abort(&mut self) {
        self.pending.clear();
    }

    /// Whether `watermark` may close some state: ends only move later as states merge, so none
    /// closes before the earliest.
    pub fn may_close(&self, watermark: i64) -> bool {
        (!self.open.is_empty() && self.earliest_end.is_none_or(|e| watermark >= e))
            || self.spilled_due(watermark)
    }

    /// Loads back the spilled files with the earliest end, if it is at most `watermark`, and
    /// returns the watermark up to which the states in memory may now close: `watermark`, or
    /// just before the earliest end still on disk. Closing a watermark a step at a time this
    /// way holds only one step's spilled states in memory.
    pub fn load_next_due(&mut self, watermark: i64) -> Result<i64> {
        let next = self.spilled.iter().map(|s| s.earliest).min();
        if let Some(next) = next.filter(|e| *e <= watermark) {
            self.load_where(|s| s.earliest == next)?;
        }
        let still_on_disk = self.spilled.iter().map(|s| s.earliest).min();
        Ok(still_on_disk.map_or(watermark, |e| watermark.min(e.saturating_sub(1))))
    }

    /// Whether some spilled file holds a state `watermark` closes.
    pub fn spilled_due(&self, watermark: i64) -> bool {
        self.spilled.iter().any(|s| s.earliest <= watermark)
    }

    /// Whether states of `key` may be on disk (spilled with their keys).
    pub fn may_have_spilled(&self, key: &[u8]) -> bool {
        self.spilled
            .iter()
            .any(|s| s.keys.as_ref().is_some_and(|k| k.may_hold(key)))
    }

    /// Whether any state is on disk.
    pub fn has_spilled(&self) -> bool {
        !self.spilled.is_empty()
    }

    /// Loads back the spilled files that may hold states of any of `keys`; returns how many.
    pub fn load_holding(&mut self, keys: &[Box<[u8]>]) -> Result<usize> {
        self.load_where(|s| {
            s.keys
                .as_ref()
                .is_some_and(|f| keys.iter().any(|k| f.may_hold(k)))
        })
    }

    /// Loads back the spilled files `due` picks; returns how many.
    fn load_where(&mut self, due: impl Fn(&Spilled) -> bool) -> Result<usize> {
        let (due, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.spilled).into_iter().partition(due);
        self.spilled = kept;
        for s in &due {
            for b in s.file.batches()? {
                self.add(b?);
            }
        }
        Ok(due.len())
    }

    /// The committed states in memory.
    pub fn batches(&self) -> &[RecordBatch] {
        &self.open
    }

    /// Replaces the committed states in memory (after closing or merging some).
    pub fn set(&mut self, open: Vec<RecordBatch>) {
        self.rows = open.iter().map(RecordBatch::num_rows).sum();
        self.earliest_end = open.iter().try_fold(i64::MAX, |earliest, b| {
            Some(earliest.min(self.earliest_end_of(b)?))
        });
        self.open = open.into_iter().filter(|b| b.num_rows() > 0).collect();
        self.open_bytes = super::spill::distinct_memory_size(&self.open);
        self.detached_bytes = super::spill::chunks_memory(&self.unsnapshotted);
    }

    /// The earliest end among `states` (`i64::MAX` when there are none); `None` when a row has
    /// no end (no event time), so every watermark must look.
    fn earliest_end_of(&self, states: &RecordBatch) -> Option<i64> {
        let ends = micros(states.column(self.end)).ok()?;
        (ends.null_count() == 0).then(|| arrow::compute::min(&ends).unwrap_or(i64::MAX))
    }

    /// Rows of `states` whose end has passed by `watermark`. Rows without an end (no event
    /// time) close only at the end of input.
    pub fn closed(&self, states: &RecordBatch, watermark: i64) -> Result<BooleanArray> {
        let ends = micros(states.column(self.end))?;
        Ok(ends
            .iter()
            .map(|e| Some(e.map_or(watermark == END_OF_TIME, |e| e <= watermark)))
            .collect())
    }

    /// Moves committed states to disk: the later-ending half of those in memory when `all` is
    /// false, else all; and the unsnapshotted states, which the next snapshot reads from disk.
    /// With `keys`, each file keeps a filter of its states' keys.
    pub fn spill(
        &mut self,
        memory: &StateMemory,
        schema: &SchemaRef,
        all: bool,
        keys: Option<KeysOf>,
    ) -> Result<()> {
        if self.unsnapshotted.iter().any(|c| c.memory() > 0) {
            spill_batches(&mut self.unsnapshotted, memory, schema)?;
            self.detached_bytes = 0;
        }
        if self.open.is_empty() {
            return Ok(());
        }
        let all_rows = concat_batches(schema, &self.open)?;
        let order = arrow::compute::sort_to_indices(
            all_rows.column(self.end),
            Some(SortOptions {
                descending: false,
                nulls_first: false,
            }),
            None,
        )?;
        let keep = if all { 0 } else { order.len() / 2 };
        // Taken apart, so that the half kept does not hold the spilled half's buffers.
        let kept = arrow::compute::take_record_batch(&all_rows, &order.slice(0, keep))?;
        let sorted =
            arrow::compute::take_record_batch(&all_rows, &order.slice(keep, order.len() - keep))?;
        drop(all_rows);
        let mut from = 0;
        while from < sorted.num_rows() {
            let len = SPILL_FILE_ROWS.min(sorted.num_rows() - from);
            let part = sorted.slice(from, len);
            let earliest = self
                .earliest_end_of(&part.slice(0, 1))
                .unwrap_or(END_OF_TIME);
            let filter = match keys {
                Some(keys_of) => {
                    let keys = keys_of(&part)?;
                    let mut bloom = Bloom::new(keys.len());
                    keys.iter().for_each(|k| bloom.insert(k));
                    Some(bloom)
                }
                None => None,
            };
            if let Some(file) = SpillFile::write(memory, schema, [part])? {
                self.spilled.push(Spilled {
                    file,
                    earliest,
                    keys: filter,
                });
            }
            from += len;
        }
        self.set(vec![kept]);
        Ok(())
    }

    /// All committed states when `full`, else those committed since the last snapshot.
    pub fn snapshot(&mut self, full: bool) -> Vec<StateChunk> {
        let changed = std::mem::take(&mut self.unsnapshotted);
        self.detached_bytes = 0;
        if full {
            self.open
                .iter()
                .cloned()
                .map(StateChunk::Batch)
                .chain(
                    self.spilled
                        .iter()
                        .map(|s| StateChunk::Spilled(s.file.clone())),
                )
                .collect()
        } else {
            changed
        }
    }

    /// Rows of committed state, in memory and spilled.
    pub fn rows(&self) -> usize {
        self.rows + self.spilled.iter().map(|s| s.file.rows()).sum::<usize>()
    }

    /// Bytes of state in memory (with the filters of spilled keys).
    pub fn bytes(&self) -> usize {
        let filters: usize = self
            .spilled
            .iter()
            .filter_map(|s| s.keys.as_ref().map(Bloom::bytes))
            .sum();
        self.open_bytes + self.detached_bytes + filters
    }

    /// Bytes of state on disk.
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled.iter().map(|s| s.file.bytes()).sum()
    }
}
