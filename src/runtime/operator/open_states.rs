//! Partial aggregate states waiting for the watermark, the state of the window and session
//! aggregates: the committed ones, those of batches not yet committed, those committed since the
//! last snapshot, and the earliest end among them, before which no watermark closes anything.

use arrow::array::{Array, BooleanArray};
use arrow::record_batch::RecordBatch;

use crate::error::Result;
use crate::runtime::event_time::{micros, END_OF_TIME};

/// Partial states keyed by an end (`window_end`) that the watermark closes.
pub struct OpenStates {
    /// Column of the end in the states.
    end: usize,
    /// Committed states.
    open: Vec<RecordBatch>,
    rows: usize,
    /// States of batches not yet committed.
    pending: Vec<RecordBatch>,
    /// States committed since the last snapshot.
    unsnapshotted: Vec<RecordBatch>,
    /// The earliest end among the committed states (`None` when unknown: a row has no end).
    earliest_end: Option<i64>,
}

impl OpenStates {
    /// No states, their end in column `end`.
    pub fn new(end: usize) -> Self {
        OpenStates {
            end,
            open: Vec::new(),
            rows: 0,
            pending: Vec::new(),
            unsnapshotted: Vec::new(),
            earliest_end: None,
        }
    }

    /// Holds the states of a batch until it is committed or aborted.
    pub fn stage(&mut self, states: Vec<RecordBatch>) {
        self.pending.extend(states);
    }

    /// Takes the staged states into the committed ones.
    pub fn commit(&mut self) {
        for states in std::mem::take(&mut self.pending) {
            self.unsnapshotted.push(states.clone());
            self.earliest_end = self
                .earliest_end
                .zip(self.earliest_end_of(&states))
                .map(|(a, b)| a.min(b));
            self.rows += states.num_rows();
            self.open.push(states);
        }
    }

    /// Drops the staged states.
    pub fn abort(&mut self) {
        self.pending.clear();
    }

    /// Whether `watermark` may close some state: ends only move later as states merge, so none
    /// closes before the earliest.
    pub fn may_close(&self, watermark: i64) -> bool {
        !self.open.is_empty() && !self.earliest_end.is_some_and(|e| watermark < e)
    }

    /// The committed states.
    pub fn batches(&self) -> &[RecordBatch] {
        &self.open
    }

    /// Replaces the committed states (after closing or merging some).
    pub fn set(&mut self, open: Vec<RecordBatch>) {
        self.rows = open.iter().map(RecordBatch::num_rows).sum();
        self.earliest_end = open.iter().try_fold(i64::MAX, |earliest, b| {
            Some(earliest.min(self.earliest_end_of(b)?))
        });
        self.open = open.into_iter().filter(|b| b.num_rows() > 0).collect();
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

    /// All committed states when `full`, else those committed since the last snapshot.
    pub fn snapshot(&mut self, full: bool) -> Vec<RecordBatch> {
        let changed = std::mem::take(&mut self.unsnapshotted);
        if full {
            self.open.clone()
        } else {
            changed
        }
    }

    /// Forgets staged and unsnapshotted states, before a restore.
    pub fn clear_changes(&mut self) {
        self.pending.clear();
        self.unsnapshotted.clear();
    }

    /// Rows of committed state.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes of committed state.
    pub fn bytes(&self) -> usize {
        self.open.iter().map(|b| b.get_array_memory_size()).sum()
    }
}
