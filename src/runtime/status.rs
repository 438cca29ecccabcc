//! Live state of running pipelines and the bounded log of bad records, as the system tables show them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::durations::DurationHistogram;
use super::graph::OperatorStats;
use super::watermarks::SplitWatermark;
use crate::catalog::PipelineState;

/// Counters and lifecycle of one pipeline, updated by its task and read by `tributary.pipelines`.
#[derive(Debug)]
pub struct PipelineStatus {
    /// Pipeline name.
    pub name: String,
    /// batch or streaming.
    pub mode: String,
    /// Records read from the source (good and bad).
    pub rows_in: AtomicU64,
    /// Rows handed to the sink and committed or about to be.
    pub rows_out: AtomicU64,
    /// Records that could not be decoded or processed.
    pub rows_errored: AtomicU64,
    /// Last committed epoch.
    pub epoch: AtomicU64,
    /// Rows that arrived behind the watermark.
    pub rows_late: AtomicU64,
    /// What the four counters added in this process, across restores: `/metrics` serves these,
    /// since a Prometheus counter only grows until its process restarts.
    counted: Mutex<Counted>,
    /// Bytes of encoded input read by this process (where sources count them).
    pub bytes_in: AtomicU64,
    /// Sink commits that failed (each fails the pipeline's run).
    pub commit_failures: AtomicU64,
    /// How long each checkpoint took: the operators' checkpoint output, the sink's prepare and
    /// the state and checkpoint writes.
    pub checkpoint_durations: DurationHistogram,
    /// How long each sink commit took.
    pub commit_durations: DurationHistogram,
    /// The last commits, newest last.
    commits: Mutex<VecDeque<CommitRecord>>,
    /// The pipeline's watermark (UTC microseconds).
    watermark: Mutex<Option<i64>>,
    inner: Mutex<StatusInner>,
    lag: Mutex<Vec<(String, tributary_connectors::PartitionLag)>>,
    splits: Mutex<Vec<(String, SplitWatermark)>>,
    operators: Mutex<Vec<OperatorStats>>,
}

/// Commits kept per pipeline for `tributary.commits`.
pub const KEPT_COMMITS: usize = 100;

/// One epoch's checkpoint and sink commit, as `tributary.commits` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitRecord {
    /// The epoch.
    pub epoch: u64,
    /// When its checkpoint was taken.
    pub at: DateTime<Utc>,
    /// Milliseconds its checkpoint took (see [`PipelineStatus::checkpoint_durations`]).
    pub checkpoint_ms: u64,
    /// Milliseconds the sink's commit took.
    pub commit_ms: u64,
    /// Bytes of the checkpoint file.
    pub bytes: u64,
    /// Rows read and written by the end of the epoch (cumulative).
    pub rows_in: u64,
    pub rows_out: u64,
    /// What the sink says it made visible (a Delta version, files published).
    pub sink: Option<String>,
}

/// Rows in, out, rejected and late.
type Counters = [u64; 4];

/// What the counters added before their last restore, and what that restore set them to.
#[derive(Debug, Default, Clone, Copy)]
struct Counted {
    carried: Counters,
    base: Counters,
}

#[derive(Debug, Clone)]
struct StatusInner {
    state: PipelineState,
    error: Option<String>,
    started_at: Option<DateTime<Utc>>,
    last_checkpoint_at: Option<DateTime<Utc>>,
    phase: Option<String>,
    warning: Option<String>,
}

/// A copy of a pipeline's status at one moment.
#[derive(Debug, Clone)]
pub struct StatusSnapshot {
    /// Pipeline name.
    pub name: String,
    /// batch or streaming.
    pub mode: String,
    /// Lifecycle state.
    pub state: PipelineState,
    /// Records read.
    pub rows_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Bad records.
    pub rows_errored: u64,
    /// Rows behind the watermark.
    pub rows_late: u64,
    /// Bytes of encoded input read by this process.
    pub bytes_in: u64,
    /// Sink commits that failed.
    pub commit_failures: u64,
    /// Rows in, out, rejected and late counted by this process (see
    /// [`PipelineStatus::counted_since_start`]).
    pub counted_since_start: [u64; 4],
    /// The watermark (UTC microseconds).
    pub watermark: Option<i64>,
    /// Last committed epoch.
    pub epoch: u64,
    /// When the current or last run started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the last checkpoint was taken.
    pub last_checkpoint_at: Option<DateTime<Utc>>,
    /// Why it failed, or what a running pipeline is recovering from.
    pub error: Option<String>,
    /// What the source is doing (a snapshot's progress, streaming).
    pub phase: Option<String>,
    /// Something that looks wrong but does not stop the pipeline (a column never filled).
    pub warning: Option<String>,
}

impl PipelineStatus {
    /// A status for a pipeline in `state`.
    pub fn new(name: &str, mode: &str, state: PipelineState, error: Option<String>) -> Self {
        PipelineStatus {
            name: name.to_string(),
            mode: mode.to_string(),
            rows_in: AtomicU64::new(0),
            rows_out: AtomicU64::new(0),
            rows_errored: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            rows_late: AtomicU64::new(0),
            counted: Mutex::new(Counted::default()),
            bytes_in: AtomicU64::new(0),
            commit_failures: AtomicU64::new(0),
            checkpoint_durations: DurationHistogram::default(),
            commit_durations: DurationHistogram::default(),
            commits: Mutex::new(VecDeque::new()),
            watermark: Mutex::new(None),
            inner: Mutex::new(StatusInner {
                state,
                error,
                started_at: None,
                last_checkpoint_at: None,
                phase: None,
                warning: None,
            }),
            lag: Mutex::new(Vec::new()),
            splits: Mutex::new(Vec::new()),
            operators: Mutex::new(Vec::new()),
        }
    }

    /// Records the watermark.
    pub fn set_watermark(&self, watermark: Option<i64>) {
        *self.watermark.lock() = watermark;
    }

    /// Records the watermark of each split of source `source`.
    pub fn set_split_watermarks(&self, source: &str, splits: Vec<SplitWatermark>) {
        let mut all = self.splits.lock();
        all.retain(|(s, _)| s != source);
        all.extend(splits.into_iter().map(|w| (source.to_string(), w)));
    }

    /// The watermark of the split named `partition` of `source` (as in `tributary.source_lag`),
    /// or of the whole source when it is one split.
    pub fn split_watermark(&self, source: &str, partition: &str) -> Option<SplitWatermark> {
        let splits = self.splits.lock();
        let of_source = || splits.iter().filter(|(s, _)| s == source);
        of_source()
            .find(|(_, w)| w.split == partition)
            .or_else(|| of_source().find(|(_, w)| w.split.is_empty()))
            .map(|(_, w)| w.clone())
    }

    /// Records the operators' figures.
    pub fn set_operators(&self, operators: Vec<OperatorStats>) {
        *self.operators.lock() = operators;
    }

    /// The operators' figures, as last recorded.
    pub fn operators(&self) -> Vec<OperatorStats> {
        self.operators.lock().clone()
    }

    /// Records a source's per-partition progress.
    pub fn set_lag(&self, source: &str, lag: Vec<tributary_connectors::PartitionLag>) {
        let mut l = self.lag.lock();
        l.retain(|(s, _)| s != source);
        l.extend(lag.into_iter().map(|p| (source.to_string(), p)));
    }

    /// Every source's per-partition progress: (source, partition progress).
    pub fn lag(&self) -> Vec<(String, tributary_connectors::PartitionLag)> {
        self.lag.lock().clone()
    }

    /// Sets the lifecycle state (and error).
    pub fn set_state(&self, state: PipelineState, error: Option<String>) {
        let mut i = self.inner.lock();
        i.state = state;
        i.error = error;
        if state == PipelineState::Running {
            i.started_at = Some(Utc::now());
            i.warning = None;
        }
    }

    /// Records what the source is doing and what it is recovering from (`None` clears it).
    pub fn set_source_phase(&self, phase: Option<String>, transient_error: Option<String>) {
        let mut i = self.inner.lock();
        if phase.is_some() {
            i.phase = phase;
        }
        if i.state == PipelineState::Running {
            i.error = transient_error;
        }
    }

    /// Sets or clears the warning.
    pub fn set_warning(&self, warning: Option<String>) {
        self.inner.lock().warning = warning;
    }

    /// Current lifecycle state.
    pub fn state(&self) -> PipelineState {
        self.inner.lock().state
    }

    /// Records a checkpoint.
    pub fn checkpointed(&self, epoch: u64, at: DateTime<Utc>) {
        self.epoch.store(epoch, Ordering::Relaxed);
        self.inner.lock().last_checkpoint_at = Some(at);
    }

    /// Restores counters from a checkpoint: rows in, out, rejected and late.
    pub fn restore(&self, counters: [u64; 4], epoch: u64, at: DateTime<Utc>) {
        let mut counted = self.counted.lock();
        let now = self.counters();
        let base = counted.base;
        for (i, carried) in counted.carried.iter_mut().enumerate() {
            *carried += now[i].saturating_sub(base[i]);
        }
        counted.base = counters;
        let [rows_in, rows_out, rows_errored, rows_late] = counters;
        self.rows_in.store(rows_in, Ordering::Relaxed);
        self.rows_out.store(rows_out, Ordering::Relaxed);
        self.rows_errored.store(rows_errored, Ordering::Relaxed);
        self.rows_late.store(rows_late, Ordering::Relaxed);
        drop(counted);
        self.checkpointed(epoch, at);
    }

    /// Records a committed epoch, forgetting the oldest beyond [`KEPT_COMMITS`].
    pub fn committed(&self, record: CommitRecord) {
        let mut commits = self.commits.lock();
        if commits.len() == KEPT_COMMITS {
            commits.pop_front();
        }
        commits.push_back(record);
    }

    /// The last commits, oldest first.
    pub fn commits(&self) -> Vec<CommitRecord> {
        self.commits.lock().iter().cloned().collect()
    }

    fn counters(&self) -> Counters {
        [
            self.rows_in.load(Ordering::Relaxed),
            self.rows_out.load(Ordering::Relaxed),
            self.rows_errored.load(Ordering::Relaxed),
            self.rows_late.load(Ordering::Relaxed),
        ]
    }

    /// Rows in, out, rejected and late counted by this process: they only grow, where the
    /// pipeline's own totals go back to a checkpoint's after a failure or a crash (the rows read
    /// since are read again).
    pub fn counted_since_start(&self) -> Counters {
        let counted = self.counted.lock();
        let now = self.counters();
        std::array::from_fn(|i| counted.carried[i] + now[i].saturating_sub(counted.base[i]))
    }

    /// A consistent-enough copy for display.
    pub fn snapshot(&self) -> StatusSnapshot {
        let i = self.inner.lock().clone();
        StatusSnapshot {
            name: self.name.clone(),
            mode: self.mode.clone(),
            state: i.state,
            rows_in: self.rows_in.load(Ordering::Relaxed),
            rows_out: self.rows_out.load(Ordering::Relaxed),
            rows_errored: self.rows_errored.load(Ordering::Relaxed),
            epoch: self.epoch.load(Ordering::Relaxed),
            rows_late: self.rows_late.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            commit_failures: self.commit_failures.load(Ordering::Relaxed),
            counted_since_start: self.counted_since_start(),
            watermark: *self.watermark.lock(),
            started_at: i.started_at,
            last_checkpoint_at: i.last_checkpoint_at,
            error: i.error,
            phase: i.phase,
            warning: i.warning,
        }
    }
}

/// A record that could not be processed, as `tributary.errors` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorEntry {
    /// Pipeline name.
    pub pipeline: String,
    /// Source name.
    pub source: String,
    /// Epoch the record was read in.
    pub epoch: u64,
    /// file:line, partition/offset, LSN.
    pub position: String,
    /// Why.
    pub message: String,
    /// The raw record (truncated).
    pub raw: String,
    /// When it was seen.
    pub at: DateTime<Utc>,
}

/// The most recent bad records of all pipelines, bounded in size.
#[derive(Debug)]
pub struct ErrorLog {
    entries: Mutex<VecDeque<ErrorEntry>>,
    capacity: usize,
}

impl ErrorLog {
    /// A log keeping the last `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        ErrorLog {
            entries: Mutex::new(VecDeque::new()),
            capacity,
        }
    }

    /// Adds entries, dropping the oldest beyond capacity.
    pub fn extend(&self, new: impl IntoIterator<Item = ErrorEntry>) {
        let mut e = self.entries.lock();
        for entry in new {
            if e.len() == self.capacity {
                e.pop_front();
            }
            e.push_back(entry);
        }
    }

    /// Forgets a pipeline's entries (DROP PIPELINE).
    pub fn remove_pipeline(&self, pipeline: &str) {
        self.entries.lock().retain(|e| e.pipeline != pipeline);
    }

    /// A copy of all entries, oldest first.
    pub fn snapshot(&self) -> Vec<ErrorEntry> {
        self.entries.lock().iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_since_start_only_grow_across_restores() {
        let status = PipelineStatus::new("p", "streaming", PipelineState::Running, None);
        let at = Utc::now();
        // The engine opens: the last checkpoint's totals are shown; this process counted none.
        status.restore([100, 90, 1, 0], 5, at);
        assert_eq!(status.counted_since_start(), [0, 0, 0, 0]);
        // The run reads 50 more and writes 40, then fails before its next checkpoint.
        status.rows_in.fetch_add(50, Ordering::Relaxed);
        status.rows_out.fetch_add(40, Ordering::Relaxed);
        assert_eq!(status.counted_since_start(), [50, 40, 0, 0]);
        // START again: the totals go back to the checkpoint's; what this process counted stays.
        status.restore([100, 90, 1, 0], 5, at);
        assert_eq!(status.rows_in.load(Ordering::Relaxed), 100);
        assert_eq!(status.counted_since_start(), [50, 40, 0, 0]);
        status.rows_in.fetch_add(60, Ordering::Relaxed);
        status.rows_late.fetch_add(2, Ordering::Relaxed);
        assert_eq!(status.counted_since_start(), [110, 40, 0, 2]);
        assert_eq!(status.snapshot().counted_since_start, [110, 40, 0, 2]);
    }
}
