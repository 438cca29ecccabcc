//! A GROUP BY without a window: DataFusion's two-stage aggregation kept per group. Each batch
//! goes through the Partial aggregate; at each checkpoint the groups that changed are merged by
//! the Final aggregate and emitted, whole, as upserts keyed by the GROUP BY columns. With a
//! state TTL, a group that has not changed for that long leaves the state (its row stays in the
//! sink; a later row for it starts the group afresh); when each group last changed (wall clock)
//! is part of the checkpointed state, so a restart does not restart its TTL.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{BooleanArray, Int64Array};
use arrow::compute::{concat_batches, filter_record_batch, not};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::physical_plan::ExecutionPlan;

use super::change_times;
use super::parallel::Keying;
use super::spill::{map_chunks, merge_files, spill_batches, SpillFile, SpillWriter, StateChunk};
use super::two_stage::TwoStage;
use super::{now_micros, Operator};
use crate::error::{Error, Result};
use crate::runtime::memory::{Budget, StateMemory};

/// The in-memory states are concatenated when they span more batches than this.
const BASE_BATCHES: usize = 64;
/// Spill files are merged into one when there are more than this many.
const SPILL_FILES: usize = 8;
/// The partial states of batches since the last emission are merged, one row per group, once
/// they are this many rows and twice as many as the last such merge left.
const COMPACT_ROWS: usize = 131_072;
/// The column after the partial states, with a TTL, holding when a group last changed: set on
/// a group's time rows (whose states are NULL), NULL on its state rows.
const CHANGED_AT: &str = "_changed_at";

/// Per-group aggregation emitting the changed groups at each checkpoint.
///
/// A group's state is the merge of its partial states in `base`, `spilled` and `changed`: each
/// emission merges the changed groups' states from all three into one row per group.
pub struct UpdatingAggregate {
    stages: TwoStage,
    /// The group columns come first in the state: this many.
    keys: usize,
    converter: RowConverter,
    /// Partial states as of the last emission, in memory.
    base: Vec<RecordBatch>,
    base_bytes: usize,
    /// Partial states as of the last emission, spilled to disk.
    spilled: Vec<SpillFile>,
    /// Partial states of batches committed since the last emission.
    changed: Vec<StateChunk>,
    /// Partial states of batches not yet committed.
    pending: Vec<RecordBatch>,
    /// Partial states committed since the last snapshot.
    unsnapshotted: Vec<StateChunk>,
    /// Rows the last merge of `changed` left (one per group changed by then).
    compacted_rows: usize,
    /// How long a group is kept without changing.
    ttl: Option<Duration>,
    /// With a TTL, the state as checkpointed: the partial states and [`CHANGED_AT`].
    timed_schema: Option<SchemaRef>,
    /// When each group last changed (UTC microseconds of the wall clock).
    changed_at: HashMap<Box<[u8]>, i64>,
    /// Groups whose change time is not yet snapshotted.
    retimed: Vec<Box<[u8]>>,
    /// When groups were last expired.
    expired_at: i64,
    /// Groups left the state since the last full snapshot: the next snapshot must be full, or a
    /// restore would merge their older change files back in.
    needs_full: bool,
    /// Its share of the run's state memory (none: unaccounted, nothing spills).
    budget: Option<Budget>,
}

impl UpdatingAggregate {
    /// An operator from the Final aggregate of a planned GROUP BY (whose input is the Partial
    /// one) with `keys` group columns.
    pub fn new(final_: Arc<dyn ExecutionPlan>, keys: usize, ttl: Option<Duration>) -> Result<Self> {
        let stages = TwoStage::new(final_)?;
        let converter = RowConverter::new(
            stages.state_schema().fields()[..keys]
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let timed_schema =
            ttl.map(|_| change_times::timed_schema(stages.state_schema(), CHANGED_AT));
        Ok(UpdatingAggregate {
            stages,
            keys,
            converter,
            base: Vec::new(),
            base_bytes: 0,
            spilled: Vec::new(),
            changed: Vec::new(),
            pending: Vec::new(),
            unsnapshotted: Vec::new(),
            compacted_rows: 0,
            ttl,
            timed_schema,
            changed_at: HashMap::new(),
            retimed: Vec::new(),
            expired_at: now_micros(),
            needs_full: false,
            budget: None,
        })
    }

    /// The same, its state accounted in `memory` and spilled there past its share.
    pub fn with_memory(mut self, memory: &Arc<StateMemory>) -> Self {
        self.budget = Some(Budget::new(memory, "updating_aggregate"));
        self.stages.use_memory(memory);
        self
    }

    fn memory(&self) -> Result<&Arc<StateMemory>> {
        self.budget
            .as_ref()
            .map(Budget::memory)
            .ok_or_else(|| Error::Internal("spilling without a state memory".into()))
    }

    /// Emits the current aggregate of every group that changed since the last call, at `now`
    /// (UTC microseconds), and drops the groups unchanged for the TTL.
    fn emit_changed(&mut self, now: i64) -> Result<Vec<RecordBatch>> {
        let out = self.merge_changed(now)?;
        if let Some(ttl) = self.ttl {
            // Expiring rewrites the state and forces a full snapshot: a few times per TTL.
            if now.saturating_sub(self.expired_at) >= change_times::micros(ttl) / 8 {
                self.expire(now, ttl)?;
                self.expired_at = now;
            }
        }
        Ok(out)
    }

    /// Merges the partial states that changed into their groups' and returns those groups'
    /// current aggregates, noting them changed at `now`.
    fn merge_changed(&mut self, now: i64) -> Result<Vec<RecordBatch>> {
        if self.changed.is_empty() {
            return Ok(Vec::new());
        }
        let changed = std::mem::take(&mut self.changed);
        self.compacted_rows = 0;
        let mut groups = HashSet::new();
        for chunk in &changed {
            for batch in chunk.batches()? {
                let batch = batch?;
                let rows = self
                    .converter
                    .convert_columns(&batch.columns()[..self.keys])?;
                groups.extend(rows.iter().map(|r| Box::<[u8]>::from(r.as_ref())));
            }
        }
        if self.ttl.is_some() {
            for g in &groups {
                self.changed_at.insert(g.clone(), now);
                self.retimed.push(g.clone());
            }
        }
        // The changed groups' states leave memory and disk; the merge brings them back whole.
        let mut touched = changed;
        self.take_rows(
            |op, batch| op.in_groups(batch, &groups),
            |rows| touched.push(StateChunk::Batch(rows)),
        )?;
        let mut kept = std::mem::take(&mut self.base);
        let mut out = Vec::new();
        for merged in self.stages.reduce_chunks(touched)? {
            let merged = merged?;
            // Each group comes once out of the merge, so each batch finishes on its own.
            out.extend(self.stages.finish_merged(vec![merged.clone()])?);
            kept.push(merged);
        }
        self.set_base(kept)?;
        Ok(out)
    }

    /// Replaces the states in memory, concatenating them when they are many batches.
    fn set_base(&mut self, base: Vec<RecordBatch>) -> Result<()> {
        let mut base: Vec<RecordBatch> = base.into_iter().filter(|b| b.num_rows() > 0).collect();
        if base.len() > BASE_BATCHES {
            base = vec![concat_batches(self.stages.state_schema(), &base)?];
        }
        self.base_bytes = super::spill::distinct_memory_size(&base);
        self.base = base;
        Ok(())
    }

    /// Drops the groups that have not changed since `now - ttl`.
    fn expire(&mut self, now: i64, ttl: Duration) -> Result<()> {
        let since = now.saturating_sub(change_times::micros(ttl));
        let fresh = |op: &Self, batch: &RecordBatch| -> Result<BooleanArray> {
            let rows = op.converter.convert_columns(&batch.columns()[..op.keys])?;
            Ok(rows
                .iter()
                .map(|r| {
                    let fresh = op.changed_at.get(r.as_ref()).is_none_or(|t| *t > since);
                    Some(fresh)
                })
                .collect())
        };
        let mut expired = 0;
        self.take_rows(
            |op, batch| Ok(not(&fresh(op, batch)?)?),
            |rows| expired += rows.num_rows(),
        )?;
        if expired == 0 {
            return Ok(());
        }
        self.changed_at.retain(|_, t| *t > since);
        self.needs_full = true;
        tracing::debug!(expired, "Groups past the state TTL left the state.");
        Ok(())
    }

    /// Takes the rows `select` picks out of the states as of the last emission, in memory and
    /// on disk, handing them to `taken`; a spill file is written again only when some of its
    /// rows were taken.
    fn take_rows(
        &mut self,
        mut select: impl FnMut(&Self, &RecordBatch) -> Result<BooleanArray>,
        mut taken: impl FnMut(RecordBatch),
    ) -> Result<()> {
        let mut kept = Vec::with_capacity(self.base.len());
        for batch in std::mem::take(&mut self.base) {
            let hit = select(self, &batch)?;
            if hit.true_count() == 0 {
                kept.push(batch);
                continue;
            }
            taken(filter_record_batch(&batch, &hit)?);
            kept.push(filter_record_batch(&batch, &not(&hit)?)?);
        }
        self.set_base(kept)?;
        let mut files = Vec::with_capacity(self.spilled.len());
        for file in std::mem::take(&mut self.spilled) {
            let mut hits = Vec::new();
            for batch in file.batches()? {
                let batch = batch?;
                let hit = select(self, &batch)?;
                if hit.true_count() > 0 {
                    taken(filter_record_batch(&batch, &hit)?);
                }
                hits.push(hit);
            }
            if hits.iter().all(|h| h.true_count() == 0) {
                files.push(file);
                continue;
            }
            let mut rest = SpillWriter::new(self.memory()?, self.stages.state_schema())?;
            for (batch, hit) in file.batches()?.zip(&hits) {
                rest.write(&filter_record_batch(&batch?, &not(hit)?)?)?;
            }
            files.extend(rest.finish()?);
        }
        self.spilled = files;
        Ok(())
    }

    /// The time rows of `groups`: their keys, NULL states and when they last changed.
    fn time_rows<'a>(
        &self,
        groups: impl Iterator<Item = &'a Box<[u8]>>,
    ) -> Result<Option<RecordBatch>> {
        let Some(schema) = &self.timed_schema else {
            return Ok(None);
        };
        let groups: Vec<&Box<[u8]>> = groups.collect();
        if groups.is_empty() {
            return Ok(None);
        }
        let parser = self.converter.parser();
        let keys = self
            .converter
            .convert_rows(groups.iter().map(|g| parser.parse(g)))?;
        let times: Int64Array = groups
            .iter()
            .map(|g| self.changed_at.get(*g).copied())
            .collect();
        Ok(Some(change_times::time_rows(schema, 0, keys, times)?))
    }

    /// With a TTL, takes the groups' change times out of restored state, leaving the partial
    /// states; a later time row of a group replaces an earlier one.
    fn restore_times(&mut self, state: Vec<StateChunk>) -> Result<Vec<StateChunk>> {
        if self.timed_schema.is_none() {
            return Ok(state);
        }
        let partial = self.stages.state_schema().clone();
        let memory = self.budget.as_ref().map(|b| b.memory().clone());
        let mut times = Vec::new();
        let states = map_chunks(state, &partial, memory.as_deref(), |batch| {
            let (states, timed) = change_times::split(batch, &partial)?;
            times.push(timed);
            Ok(states)
        })?;
        for batch in times {
            let rows = self
                .converter
                .convert_columns(&batch.columns()[..self.keys])?;
            for (r, t) in rows.iter().zip(change_times::times(&batch)) {
                self.changed_at.insert(r.as_ref().into(), t);
            }
        }
        Ok(states)
    }

    /// Which rows of `batch` belong to the groups in `groups`.
    fn in_groups(&self, batch: &RecordBatch, groups: &HashSet<Box<[u8]>>) -> Result<BooleanArray> {
        let rows = self
            .converter
            .convert_columns(&batch.columns()[..self.keys])?;
        Ok(rows
            .iter()
            .map(|r| Some(groups.contains(r.as_ref())))
            .collect())
    }

    /// Merges the partial states committed since the last emission into one row per group once
    /// they are many more rows than that (a batch's states hold each of its groups: with many
    /// groups, an epoch's batches would otherwise hold them many times over until the
    /// checkpoint). The states not yet snapshotted are the same batches, and are replaced by
    /// the same merge.
    fn compact_changed(&mut self) -> Result<()> {
        let rows: usize = self.changed.iter().map(StateChunk::rows).sum();
        if rows < COMPACT_ROWS.max(2 * self.compacted_rows) {
            return Ok(());
        }
        let same = self.changed.len() == self.unsnapshotted.len()
            && rows
                == self
                    .unsnapshotted
                    .iter()
                    .map(StateChunk::rows)
                    .sum::<usize>();
        let merged = self
            .stages
            .reduce_chunks(std::mem::take(&mut self.changed))?
            .collect::<Result<Vec<_>>>()?;
        self.compacted_rows = merged.iter().map(RecordBatch::num_rows).sum();
        self.changed = super::spill::in_memory(merged);
        if same {
            self.unsnapshotted = self.changed.clone();
        } else {
            let unsnapshotted = std::mem::take(&mut self.unsnapshotted);
            self.unsnapshotted = super::spill::in_memory(
                self.stages
                    .reduce_chunks(unsnapshotted)?
                    .collect::<Result<Vec<_>>>()?,
            );
        }
        Ok(())
    }

    /// Bytes of state in memory: the states as of the last emission, and the changes since
    /// (those not yet emitted and those not yet snapshotted are mostly the same batches).
    fn memory_bytes(&self) -> usize {
        let of = super::spill::chunks_memory;
        self.base_bytes + of(&self.changed).max(of(&self.unsnapshotted))
    }

    /// Moves every state in memory to disk.
    fn spill(&mut self) -> Result<()> {
        let memory = self.memory()?.clone();
        let schema = self.stages.state_schema().clone();
        self.spilled.extend(SpillFile::write(
            &memory,
            &schema,
            std::mem::take(&mut self.base),
        )?);
        self.base_bytes = 0;
        for chunks in [&mut self.changed, &mut self.unsnapshotted] {
            spill_batches(chunks, &memory, &schema)?;
            if chunks.len() > SPILL_FILES {
                *chunks = merge_files(&memory, &schema, chunks)?
                    .map(StateChunk::Spilled)
                    .into_iter()
                    .collect();
            }
        }
        if self.spilled.len() > SPILL_FILES {
            let files: Vec<StateChunk> = self.spilled.drain(..).map(StateChunk::Spilled).collect();
            self.spilled = merge_files(&memory, &schema, &files)?.into_iter().collect();
        }
        tracing::debug!(
            files = self.spilled.len(),
            bytes = self.spilled_bytes(),
            "Group states spilled to disk."
        );
        Ok(())
    }
}

impl Operator for UpdatingAggregate {
    fn kind(&self) -> &'static str {
        "updating_aggregate"
    }

    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let states = self.stages.partial(batch)?;
        self.pending.extend(states);
        Ok(Vec::new())
    }

    fn commit_batch(&mut self) {
        for states in std::mem::take(&mut self.pending) {
            self.unsnapshotted.push(StateChunk::Batch(states.clone()));
            self.changed.push(StateChunk::Batch(states));
        }
    }

    fn abort_batch(&mut self) {
        self.pending.clear();
    }

    /// Emits the current aggregate of every group that changed since the last checkpoint.
    fn on_checkpoint(&mut self) -> Result<Vec<RecordBatch>> {
        self.emit_changed(now_micros())
    }

    fn wants_full_snapshot(&self) -> bool {
        self.needs_full
    }

    fn state_schema(&self) -> Option<SchemaRef> {
        Some(
            self.timed_schema
                .clone()
                .unwrap_or_else(|| self.stages.state_schema().clone()),
        )
    }

    /// With a TTL, the states get a NULL [`CHANGED_AT`] as they are written, and the groups'
    /// change times follow as rows of their own.
    fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
        let changed = std::mem::take(&mut self.unsnapshotted);
        let retimed = std::mem::take(&mut self.retimed);
        let chunks: Vec<StateChunk> = if full {
            self.needs_full = false;
            self.base
                .iter()
                .cloned()
                .map(StateChunk::Batch)
                .chain(self.spilled.iter().cloned().map(StateChunk::Spilled))
                .chain(self.changed.iter().cloned())
                .collect()
        } else {
            changed
        };
        let Some(schema) = &self.timed_schema else {
            return Ok(chunks);
        };
        let mut out = change_times::untimed(chunks, schema);
        let times = if full {
            self.time_rows(self.changed_at.keys())?
        } else {
            self.time_rows(retimed.iter())?
        };
        out.extend(times.map(StateChunk::Batch));
        Ok(out)
    }

    /// Restored states are merged in memory while they fit; the rest stay in their files.
    fn restore(&mut self, state: Vec<StateChunk>, _watermark: Option<i64>) -> Result<()> {
        let state = self.restore_times(state)?;
        let mut in_memory = Vec::new();
        let mut bytes = 0usize;
        for chunk in state {
            // Files are compressed: room for a few times their size.
            let need = match &chunk {
                StateChunk::Spilled(f) => 4 * f.bytes() as usize,
                chunk => chunk.memory(),
            };
            let fits = match (&mut self.budget, &chunk) {
                (Some(budget), StateChunk::Spilled(_)) => budget.fits(bytes + need),
                _ => true,
            };
            match chunk {
                StateChunk::Spilled(f) if !fits => self.spilled.push(f),
                chunk => {
                    bytes += need;
                    in_memory.push(chunk);
                }
            }
        }
        let merged = self
            .stages
            .reduce_chunks(in_memory)?
            .collect::<Result<Vec<_>>>()?;
        self.set_base(merged)?;
        if self.ttl.is_some() {
            // A group without a change time (none was checkpointed) counts from the restore.
            let now = now_micros();
            let restored = std::mem::take(&mut self.changed_at);
            let mut all: Vec<StateChunk> =
                self.base.iter().cloned().map(StateChunk::Batch).collect();
            all.extend(self.spilled.iter().cloned().map(StateChunk::Spilled));
            for chunk in &all {
                for batch in chunk.batches()? {
                    let batch = batch?;
                    let rows = self
                        .converter
                        .convert_columns(&batch.columns()[..self.keys])?;
                    for r in rows.iter() {
                        let at = restored.get(r.as_ref()).copied().unwrap_or(now);
                        self.changed_at.insert(r.as_ref().into(), at);
                    }
                }
            }
        }
        self.fit_memory()
    }

    /// Spills every state in memory when they do not fit: they are read back group by group
    /// at each emission.
    fn fit_memory(&mut self) -> Result<()> {
        self.compact_changed()?;
        let bytes = self.memory_bytes();
        if self.budget.as_mut().is_none_or(|b| b.fits(bytes)) {
            return Ok(());
        }
        self.spill()?;
        let bytes = self.memory_bytes();
        Budget::hold_in(self.budget.as_mut(), bytes, "the GROUP BY's state")
    }

    fn state_rows(&self) -> usize {
        let chunks: usize = self.changed.iter().map(StateChunk::rows).sum();
        self.base.iter().map(RecordBatch::num_rows).sum::<usize>()
            + self.spilled.iter().map(SpillFile::rows).sum::<usize>()
            + chunks
    }

    fn state_bytes(&self) -> usize {
        self.memory_bytes()
    }

    fn spilled_bytes(&self) -> u64 {
        self.spilled.iter().map(SpillFile::bytes).sum()
    }

    fn keying(&self) -> Option<Keying> {
        Some(Keying {
            inputs: vec![self.stages.group_exprs().to_vec()],
            state: (0..self.stages.groups()).collect(),
        })
    }
}

#[cfg(test)]
mod tests;
