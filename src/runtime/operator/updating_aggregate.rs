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
        self.base_bytes = base.iter().map(RecordBatch::get_array_memory_size).sum();
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
        let of = |chunks: &[StateChunk]| chunks.iter().map(StateChunk::memory).sum::<usize>();
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
mod tests {
    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::*;
    use crate::runtime::operator::tests::aggregate_plan;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]))
    }

    fn batch(rows: &[(&str, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    async fn operator() -> UpdatingAggregate {
        operator_with_ttl(None).await
    }

    async fn operator_with_ttl(ttl: Option<Duration>) -> UpdatingAggregate {
        let plan = aggregate_plan(
            schema(),
            "SELECT k, count(*) AS n, sum(v) AS total, count(DISTINCT v) AS values FROM t GROUP BY k",
        )
        .await;
        UpdatingAggregate::new(plan, 1, ttl).unwrap()
    }

    /// (k, n, total, distinct values) of emitted rows, sorted.
    fn rows(batches: &[RecordBatch]) -> Vec<(String, i64, i64, i64)> {
        let mut out = Vec::new();
        for b in batches {
            for i in 0..b.num_rows() {
                out.push((
                    b.column(0).as_string::<i32>().value(i).to_string(),
                    b.column(1).as_primitive::<Int64Type>().value(i),
                    b.column(2).as_primitive::<Int64Type>().value(i),
                    b.column(3).as_primitive::<Int64Type>().value(i),
                ));
            }
        }
        out.sort();
        out
    }

    fn row(k: &str, n: i64, total: i64, values: i64) -> (String, i64, i64, i64) {
        (k.to_string(), n, total, values)
    }

    #[tokio::test]
    async fn each_checkpoint_emits_the_groups_that_changed_whole() {
        let mut op = operator().await;
        op.process(0, batch(&[("a", 1), ("b", 2), ("a", 3)]))
            .unwrap();
        op.commit_batch();
        assert_eq!(
            rows(&op.on_checkpoint().unwrap()),
            vec![row("a", 2, 4, 2), row("b", 1, 2, 1)]
        );
        assert!(op.on_checkpoint().unwrap().is_empty(), "nothing changed");
        op.process(0, batch(&[("a", 1), ("c", 5)])).unwrap();
        op.commit_batch();
        // A batch a later operator failed on leaves nothing behind.
        op.process(0, batch(&[("b", 100)])).unwrap();
        op.abort_batch();
        // Only a and c changed; a's row is its whole aggregate.
        assert_eq!(
            rows(&op.on_checkpoint().unwrap()),
            vec![row("a", 3, 5, 2), row("c", 1, 5, 1)]
        );
        assert_eq!(op.state_rows(), 3);
    }

    /// Many groups in every batch of a long epoch: the batches' partial states are merged as
    /// they come, so the state holds about one row per group, not one per group and batch;
    /// the emission, an incremental snapshot and a restore from it are unchanged by it.
    #[tokio::test]
    async fn an_epochs_partial_states_merge_as_they_come() {
        let mut op = operator().await;
        let groups = 20_000;
        let keys: Vec<String> = (0..groups).map(|g| format!("g{g}")).collect();
        let mut most = 0;
        let mut snapshots = op.snapshot(true).unwrap();
        for epoch in 0..2 {
            for b in 0..40 {
                let rows: Vec<(&str, i64)> = keys
                    .iter()
                    .enumerate()
                    .map(|(g, k)| (k.as_str(), ((g + b) % 3) as i64))
                    .collect();
                op.process(0, batch(&rows)).unwrap();
                op.commit_batch();
                op.fit_memory().unwrap();
                most = most.max(op.state_rows());
            }
            let out = rows(&op.on_checkpoint().unwrap());
            assert_eq!(out.len(), groups);
            let n = 40 * (epoch + 1);
            for (k, got_n, total, values) in &out {
                let g: usize = k[1..].parse().unwrap();
                let total_want: i64 = (0..n).map(|b| ((g + b % 40) % 3) as i64).sum();
                assert_eq!((*got_n, *total, *values), (n as i64, total_want, 3), "{k}");
            }
            snapshots.extend(op.snapshot(false).unwrap());
        }
        // Without merging, an epoch would hold 40 rows per group.
        assert!(most <= 5 * groups + 2 * 131_072, "{most} state rows");
        let mut restored = operator().await;
        restored.restore(snapshots, None).unwrap();
        assert_eq!(restored.state_rows(), groups);
        restored.process(0, batch(&[("g7", 10)])).unwrap();
        restored.commit_batch();
        let total: i64 = (0..80).map(|b| ((7 + b % 40) % 3) as i64).sum::<i64>() + 10;
        assert_eq!(
            rows(&restored.on_checkpoint().unwrap()),
            vec![row("g7", 81, total, 4)]
        );
    }

    #[tokio::test]
    async fn groups_unchanged_for_the_ttl_leave_the_state_and_start_afresh() {
        let ttl = Duration::from_secs(80);
        let mut op = operator_with_ttl(Some(ttl)).await;
        let t0 = now_micros();
        let at = |s: i64| t0 + s * 1_000_000;
        op.process(0, batch(&[("a", 1), ("b", 2)])).unwrap();
        op.commit_batch();
        op.emit_changed(at(0)).unwrap();
        op.snapshot(true).unwrap();
        op.process(0, batch(&[("a", 3)])).unwrap();
        op.commit_batch();
        op.emit_changed(at(50)).unwrap();
        let changes = op.snapshot(false).unwrap();
        assert!(!op.wants_full_snapshot());
        // At 85 s, b (last changed at 0) is past the TTL; a (at 50) is not.
        assert!(op.emit_changed(at(85)).unwrap().is_empty());
        assert_eq!(op.state_rows(), 1);
        // Older change files still hold b: the next snapshot must be the whole state.
        assert!(op.wants_full_snapshot());
        let full = op.snapshot(true).unwrap();
        assert!(!op.wants_full_snapshot());
        // a's state and a's change time.
        assert_eq!(full.iter().map(|c| c.rows()).sum::<usize>(), 2);
        assert!(!changes.is_empty());
        // b again: a group of its own, from this row alone; a keeps its totals.
        op.process(0, batch(&[("b", 5), ("a", 1)])).unwrap();
        op.commit_batch();
        assert_eq!(
            rows(&op.emit_changed(at(90)).unwrap()),
            vec![row("a", 3, 5, 2), row("b", 1, 5, 1)]
        );
        // Without a TTL nothing leaves.
        let mut kept = operator().await;
        kept.process(0, batch(&[("a", 1)])).unwrap();
        kept.commit_batch();
        kept.emit_changed(at(0)).unwrap();
        kept.emit_changed(at(1_000_000)).unwrap();
        assert_eq!(kept.state_rows(), 1);
    }

    #[tokio::test]
    async fn a_restored_group_keeps_its_change_time() {
        let ttl = Duration::from_secs(80);
        let mut op = operator_with_ttl(Some(ttl)).await;
        let t0 = now_micros();
        let at = |s: i64| t0 + s * 1_000_000;
        op.process(0, batch(&[("a", 1), ("b", 2)])).unwrap();
        op.commit_batch();
        op.emit_changed(at(0)).unwrap();
        let mut state = op.snapshot(true).unwrap();
        op.process(0, batch(&[("a", 3)])).unwrap();
        op.commit_batch();
        op.emit_changed(at(50)).unwrap();
        state.extend(op.snapshot(false).unwrap());
        // Through state files, and into a state memory that spills files back.
        let memory = StateMemory::new(Some(1 << 20)).unwrap();
        let state = crate::runtime::operator::tests::through_files(&memory, &op, state);
        let mut restored = operator_with_ttl(Some(ttl)).await.with_memory(&memory);
        restored.restore(state, None).unwrap();
        assert_eq!(restored.state_rows(), 2);
        // At 85 s, b (changed at 0) leaves and a (at 50) stays, as they would have without
        // the restart; the restore's own time does not count.
        restored.emit_changed(at(85)).unwrap();
        assert_eq!(restored.state_rows(), 1);
        restored.process(0, batch(&[("a", 1), ("b", 7)])).unwrap();
        restored.commit_batch();
        assert_eq!(
            rows(&restored.emit_changed(at(90)).unwrap()),
            vec![row("a", 3, 5, 2), row("b", 1, 7, 1)]
        );
        // Restored again, both (changed at 90) are there at 169 s and gone at 180 s.
        let mut again = operator_with_ttl(Some(ttl)).await;
        again
            .restore(restored.snapshot(true).unwrap(), None)
            .unwrap();
        again.emit_changed(at(169)).unwrap();
        assert_eq!(again.state_rows(), 2);
        again.emit_changed(at(180)).unwrap();
        assert_eq!(again.state_rows(), 0);
    }

    #[tokio::test]
    async fn groups_beyond_the_budget_spill_and_emit_the_same() {
        // 40 000 groups, far beyond 256 kB of state; each checkpoint changes a fifth of them.
        let memory = StateMemory::new(Some(256 << 10)).unwrap();
        let mut spilling = operator().await.with_memory(&memory);
        let mut unbounded = operator().await;
        let key = |i: i64| format!("customer-{:06}", (i * 7919) % 40_000);
        let mut spilled = 0;
        for epoch in 0..12i64 {
            let keys: Vec<String> = (0..8_000).map(|i| key(epoch * 8_000 + i)).collect();
            let rows: Vec<(&str, i64)> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k.as_str(), (i as i64 + epoch) % 13))
                .collect();
            for op in [&mut spilling, &mut unbounded] {
                for part in rows.chunks(1_000) {
                    op.process(0, batch(part)).unwrap();
                    op.commit_batch();
                    op.fit_memory().unwrap();
                }
            }
            assert_eq!(
                rows_of(&spilling.on_checkpoint().unwrap()),
                rows_of(&unbounded.on_checkpoint().unwrap()),
                "epoch {epoch}"
            );
            spilling.fit_memory().unwrap();
            assert!(spilling.state_bytes() <= 256 << 10);
            spilled = spilled.max(spilling.spilled_bytes());
            if epoch == 5 {
                // Restored from a full snapshot (spill files and all), it goes on the same.
                let full = spilling.snapshot(true).unwrap();
                assert!(full.iter().any(|c| matches!(c, StateChunk::Spilled(_))));
                let mut restored = operator().await.with_memory(&memory);
                restored.restore(full, None).unwrap();
                spilling = restored;
            }
        }
        assert!(spilled > 0, "the state was spilled");
        assert_eq!(unbounded.state_rows(), 40_000);
    }

    /// When DataFusion's merge of the changed groups runs out of its memory it spills, and
    /// reads the spill back through tokio tasks: on a worker of the multi-threaded runtime
    /// (as pipelines run), waiting for the merge must not keep those tasks from running.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn merges_that_spill_inside_datafusion_finish_on_a_runtime_worker() {
        let memory = StateMemory::with_merge_memory(1 << 30, Some(2 << 20)).unwrap();
        let mut spilling = operator().await.with_memory(&memory);
        let mut unbounded = operator().await;
        // 200 000 groups, each with a distinct-values state: far beyond 2 MB to merge.
        let keys: Vec<String> = (0..200_000).map(|i| format!("k{i:07}")).collect();
        for op in [&mut spilling, &mut unbounded] {
            for part in keys.chunks(8_192) {
                let rows: Vec<(&str, i64)> = part.iter().map(|k| (k.as_str(), 7)).collect();
                op.process(0, batch(&rows)).unwrap();
                op.commit_batch();
            }
        }
        // In a task, as a pipeline runs: tasks it spawns queue on the same worker.
        let merge = tokio::spawn(async move { rows_of(&spilling.on_checkpoint().unwrap()) });
        let spilled = tokio::time::timeout(std::time::Duration::from_secs(120), merge)
            .await
            .expect("the merge finishes (it hung when its spill tasks queued behind it)")
            .unwrap();
        assert_eq!(spilled.len(), 200_000);
        assert_eq!(spilled, rows_of(&unbounded.on_checkpoint().unwrap()));
    }

    /// Emitted rows, sorted.
    fn rows_of(batches: &[RecordBatch]) -> Vec<(String, i64, i64, i64)> {
        rows(batches)
    }

    #[tokio::test]
    async fn restore_merges_the_snapshots_of_every_epoch() {
        let mut op = operator().await;
        op.process(0, batch(&[("a", 1), ("b", 2)])).unwrap();
        op.commit_batch();
        op.on_checkpoint().unwrap();
        let first = op.snapshot(true).unwrap();
        op.process(0, batch(&[("a", 7)])).unwrap();
        op.commit_batch();
        op.on_checkpoint().unwrap();
        let second = op.snapshot(false).unwrap();
        let mut restored = operator().await;
        restored.restore([first, second].concat(), None).unwrap();
        assert_eq!(restored.state_rows(), 2);
        restored.process(0, batch(&[("b", 2)])).unwrap();
        restored.commit_batch();
        restored.process(0, batch(&[("a", 1)])).unwrap();
        restored.commit_batch();
        assert_eq!(
            rows(&restored.on_checkpoint().unwrap()),
            vec![row("a", 3, 9, 2), row("b", 2, 4, 1)]
        );
    }
}
