//! A GROUP BY without a window: DataFusion's two-stage aggregation kept per group. Each batch
//! goes through the Partial aggregate; at each checkpoint the groups that changed are merged by
//! the Final aggregate and emitted, whole, as upserts keyed by the GROUP BY columns. With a
//! state TTL, a group that has not changed for that long leaves the state (its row stays in the
//! sink; a later row for it starts the group afresh).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::BooleanArray;
use arrow::compute::{concat_batches, filter_record_batch, not};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::physical_plan::ExecutionPlan;

use super::parallel::Keying;
use super::two_stage::TwoStage;
use super::Operator;
use crate::error::Result;

/// Per-group aggregation emitting the changed groups at each checkpoint.
pub struct UpdatingAggregate {
    stages: TwoStage,
    /// The group columns come first in the state: this many.
    keys: usize,
    converter: RowConverter,
    /// One merged partial state per group, as of the last emission.
    base: Option<RecordBatch>,
    /// Partial states of batches committed since the last emission.
    changed: Vec<RecordBatch>,
    /// Partial states of batches not yet committed.
    pending: Vec<RecordBatch>,
    /// Partial states committed since the last snapshot.
    unsnapshotted: Vec<RecordBatch>,
    /// How long a group is kept without changing.
    ttl: Option<Duration>,
    /// When each group last changed (groups restored from a checkpoint: when restored).
    changed_at: HashMap<Box<[u8]>, Instant>,
    /// When groups were last expired.
    expired_at: Instant,
    /// Groups left the state since the last full snapshot: the next snapshot must be full, or a
    /// restore would merge their older change files back in.
    needs_full: bool,
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
        Ok(UpdatingAggregate {
            stages,
            keys,
            converter,
            base: None,
            changed: Vec::new(),
            pending: Vec::new(),
            unsnapshotted: Vec::new(),
            ttl,
            changed_at: HashMap::new(),
            expired_at: Instant::now(),
            needs_full: false,
        })
    }

    /// Emits the current aggregate of every group that changed since the last call, at `now`,
    /// and drops the groups unchanged for the TTL.
    fn emit_changed(&mut self, now: Instant) -> Result<Vec<RecordBatch>> {
        let out = self.merge_changed(now)?;
        if let Some(ttl) = self.ttl {
            // Expiring rewrites the state and forces a full snapshot: a few times per TTL.
            if now.saturating_duration_since(self.expired_at) >= ttl / 8 {
                self.expire(now, ttl)?;
                self.expired_at = now;
            }
        }
        Ok(out)
    }

    /// Merges the partial states that changed into their groups' and returns those groups'
    /// current aggregates, noting them changed at `now`.
    fn merge_changed(&mut self, now: Instant) -> Result<Vec<RecordBatch>> {
        if self.changed.is_empty() {
            return Ok(Vec::new());
        }
        let changed = std::mem::take(&mut self.changed);
        let mut groups = HashSet::new();
        for batch in &changed {
            let rows = self
                .converter
                .convert_columns(&batch.columns()[..self.keys])?;
            groups.extend(rows.iter().map(|r| Box::<[u8]>::from(r.as_ref())));
        }
        if self.ttl.is_some() {
            for g in &groups {
                self.changed_at.insert(g.clone(), now);
            }
        }
        let mut touched = changed;
        let mut unchanged = None;
        if let Some(base) = self.base.take() {
            let hit = self.in_groups(&base, &groups)?;
            touched.push(filter_record_batch(&base, &hit)?);
            unchanged = Some(filter_record_batch(&base, &not(&hit)?)?);
        }
        let merged = self.reduce(touched)?;
        let out = match &merged {
            Some(m) => self.stages.finish(vec![m.clone()])?,
            None => Vec::new(),
        };
        let parts: Vec<RecordBatch> = unchanged.into_iter().chain(merged).collect();
        self.base = if parts.is_empty() {
            None
        } else {
            Some(concat_batches(self.stages.state_schema(), &parts)?)
        };
        Ok(out)
    }

    /// Drops the groups that have not changed since `now - ttl`.
    fn expire(&mut self, now: Instant, ttl: Duration) -> Result<()> {
        let Some(base) = self.base.take() else {
            return Ok(());
        };
        let rows = self
            .converter
            .convert_columns(&base.columns()[..self.keys])?;
        let keep: BooleanArray = rows
            .iter()
            .map(|r| {
                let fresh = self
                    .changed_at
                    .get(r.as_ref())
                    .is_none_or(|t| now.saturating_duration_since(*t) < ttl);
                Some(fresh)
            })
            .collect();
        let expired = keep.false_count();
        if expired == 0 {
            self.base = Some(base);
            return Ok(());
        }
        self.changed_at
            .retain(|_, t| now.saturating_duration_since(*t) < ttl);
        let kept = filter_record_batch(&base, &keep)?;
        self.base = (kept.num_rows() > 0).then_some(kept);
        self.needs_full = true;
        tracing::debug!(expired, "Groups past the state TTL left the state.");
        Ok(())
    }

    /// Merges partial states into one row per group.
    fn reduce(&self, batches: Vec<RecordBatch>) -> Result<Option<RecordBatch>> {
        let merged = self.stages.reduce(batches)?;
        Ok(if merged.is_empty() {
            None
        } else {
            Some(concat_batches(self.stages.state_schema(), &merged)?)
        })
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
            self.unsnapshotted.push(states.clone());
            self.changed.push(states);
        }
    }

    fn abort_batch(&mut self) {
        self.pending.clear();
    }

    /// Emits the current aggregate of every group that changed since the last checkpoint.
    fn on_checkpoint(&mut self) -> Result<Vec<RecordBatch>> {
        self.emit_changed(Instant::now())
    }

    fn wants_full_snapshot(&self) -> bool {
        self.needs_full
    }

    fn state_schema(&self) -> Option<SchemaRef> {
        Some(self.stages.state_schema().clone())
    }

    fn snapshot(&mut self, full: bool) -> Result<Vec<RecordBatch>> {
        let changed = std::mem::take(&mut self.unsnapshotted);
        if !full {
            return Ok(changed);
        }
        self.needs_full = false;
        let mut all: Vec<RecordBatch> = self.base.iter().cloned().collect();
        all.extend(self.changed.iter().cloned());
        Ok(all)
    }

    fn restore(&mut self, state: &[RecordBatch], _watermark: Option<i64>) -> Result<()> {
        self.pending.clear();
        self.changed.clear();
        self.unsnapshotted.clear();
        self.base = if state.is_empty() {
            None
        } else {
            self.reduce(state.to_vec())?
        };
        // When each group last changed is not checkpointed: the TTL counts from the restore.
        self.changed_at.clear();
        if let (Some(base), Some(_)) = (&self.base, self.ttl) {
            let now = Instant::now();
            let rows = self
                .converter
                .convert_columns(&base.columns()[..self.keys])?;
            self.changed_at = rows.iter().map(|r| (r.as_ref().into(), now)).collect();
        }
        Ok(())
    }

    fn state_rows(&self) -> usize {
        self.base.as_ref().map_or(0, RecordBatch::num_rows)
            + self
                .changed
                .iter()
                .map(RecordBatch::num_rows)
                .sum::<usize>()
    }

    fn state_bytes(&self) -> usize {
        self.base
            .iter()
            .chain(&self.changed)
            .map(RecordBatch::get_array_memory_size)
            .sum()
    }
    fn keying(&self) -> Option<Keying> {
        Some(Keying {
            input: self.stages.group_exprs().to_vec(),
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

    #[tokio::test]
    async fn groups_unchanged_for_the_ttl_leave_the_state_and_start_afresh() {
        let ttl = Duration::from_secs(80);
        let mut op = operator_with_ttl(Some(ttl)).await;
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
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
        assert_eq!(full.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
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
        restored.restore(&[first, second].concat(), None).unwrap();
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
