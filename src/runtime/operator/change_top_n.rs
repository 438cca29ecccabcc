//! The first rows of each partition (`ROW_NUMBER() ... WHERE rn <= N`) over a table kept by
//! its changes (another GROUP BY's updates, a CDC source): every current row is kept by its
//! key, and at each checkpoint each partition a change touched is numbered again by DataFusion
//! over its current rows. Its first N rows are emitted as upserts keyed by the partition and
//! the row number, and the row numbers it no longer reaches (a row left it) as deletes.

use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_plan::ExecutionPlan;

use super::keyed_rows::{Changes, KeyedRows};
use super::row_groups::RowGroups;
use super::spill::StateChunk;
use super::stateless::OP;
use super::top_n::{number_rows, split_sort, TopNSpec, RANK_BEFORE};
use super::Operator;
use crate::error::{Error, Result};
use crate::runtime::memory::{Budget, StateMemory};

/// A batch of changes with each row's partition, waiting for its commit.
struct Prepared {
    changes: Changes,
    parts: Rows,
}

/// The first rows of each partition of a table kept by its changes.
pub struct ChangeTopN {
    plan: Arc<dyn ExecutionPlan>,
    order: LexOrdering,
    /// The numbering plan's input: the window's input columns, then [`RANK_BEFORE`].
    number_schema: SchemaRef,
    /// The window's input columns, the row number, `_op`.
    output_schema: SchemaRef,
    partition: Vec<usize>,
    /// The window's input columns lead each row; the table's key follows; `_op` is last.
    width: usize,
    limit: usize,
    partition_values: RowConverter,
    table: KeyedRows,
    /// The current rows of each partition, with how many row numbers were last emitted for
    /// it, and the partitions touched since the last emission.
    parts: RowGroups<usize>,
    pending: Vec<Prepared>,
    budget: Option<Budget>,
    task: Arc<TaskContext>,
}

impl ChangeTopN {
    /// The operator for a planned ROW_NUMBER kept to `limit` rows, over rows of `schema`: the
    /// window's input columns, the table's key columns, `_op`.
    pub fn new(spec: TopNSpec, limit: usize, schema: SchemaRef) -> Result<Self> {
        let (plan, order) = split_sort(&spec.plan)?;
        let width = spec.output.fields().len().saturating_sub(1);
        let number_schema = Arc::new(
            spec.plan
                .schema()
                .project(&(0..=width).collect::<Vec<_>>())?,
        );
        if number_schema.field(width).name() != RANK_BEFORE || schema.fields().len() < width + 2 {
            return Err(Error::Internal(
                "a ROW_NUMBER over changes needs its rows' key and _op after the window's columns"
                    .into(),
            ));
        }
        let table = KeyedRows::new(schema.clone(), width..schema.fields().len() - 1)?;
        let partition_values = RowConverter::new(
            spec.partition
                .iter()
                .map(|&p| SortField::new(schema.field(p).data_type().clone()))
                .collect(),
        )?;
        let mut out: Vec<Field> = spec
            .output
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        out.push(Field::new(OP, DataType::Utf8, true));
        Ok(ChangeTopN {
            plan,
            order,
            number_schema,
            output_schema: Arc::new(Schema::new(out)),
            partition: spec.partition,
            width,
            limit,
            partition_values,
            table,
            parts: RowGroups::default(),
            pending: Vec::new(),
            budget: None,
            task: Arc::new(TaskContext::default()),
        })
    }

    /// The same, its state accounted in `memory`.
    pub fn with_memory(mut self, memory: &Arc<StateMemory>) -> Self {
        self.budget = Some(Budget::new(memory, "change_top_n"));
        self
    }

    fn prepare(&self, batch: &RecordBatch) -> Result<Prepared> {
        let changes = self.table.prepare(batch)?;
        let values: Vec<ArrayRef> = self
            .partition
            .iter()
            .map(|&p| changes.batch.column(p).clone())
            .collect();
        let parts = self.partition_values.convert_columns(&values)?;
        Ok(Prepared { changes, parts })
    }

    /// Applies a batch of changes: the partitions of the rows replaced and of the new rows
    /// change.
    fn apply(&mut self, prepared: Prepared) {
        let Prepared { changes, parts } = prepared;
        let mut left = Vec::new();
        let all = &mut self.parts;
        self.table.apply(
            changes,
            |_, p| left.push(p),
            |i, id| all.add(parts.row(i).as_ref(), id),
        );
        for p in left {
            all.touch(p);
        }
    }

    /// Each changed partition's first rows (upserts) and the row numbers it no longer reaches
    /// (deletes, keyed by partition and number).
    fn emit_changed(&mut self) -> Result<Vec<RecordBatch>> {
        let table = &self.table;
        let changed = self.parts.take_changed(|id| table.is_live(id));
        let mut ids = Vec::new();
        // Partitions with fewer rows numbered than last emitted: (partition, now, before).
        let mut shrunk: Vec<(u32, usize, usize)> = Vec::new();
        for &p in &changed {
            let part = self.parts.get_mut(p);
            ids.extend(part.rows.iter().map(|&(b, i)| (b as usize, i as usize)));
            let now = part.rows.len().min(self.limit);
            if now < part.extra {
                shrunk.push((p, now, part.extra));
            }
            part.extra = now;
        }
        let mut out = Vec::new();
        if !ids.is_empty() {
            let mut columns = self.table.gather(0..self.width, &ids)?;
            columns.push(Arc::new(UInt64Array::from(vec![0u64; ids.len()])));
            let candidates = RecordBatch::try_new(self.number_schema.clone(), columns)?;
            for batch in number_rows(
                &self.plan,
                &self.order,
                &self.number_schema,
                &[candidates],
                &self.task,
            )? {
                let n = batch.num_rows();
                let mut columns = batch.columns()[..self.width].to_vec();
                columns.push(batch.column(self.width + 1).clone());
                columns.push(Arc::new(StringArray::from(vec!["upsert"; n])));
                out.push(RecordBatch::try_new(self.output_schema.clone(), columns)?);
            }
        }
        // Row numbers past a partition's rows now: deletes with the partition's key values.
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut numbers: Vec<u64> = Vec::new();
        for (p, now, before) in shrunk {
            for number in now + 1..=before {
                keys.push(self.parts.get(p).key.as_ref());
                numbers.push(number as u64);
            }
        }
        if !keys.is_empty() {
            let parser = self.partition_values.parser();
            let values = self
                .partition_values
                .convert_rows(keys.iter().map(|k| parser.parse(k)))?;
            let n = keys.len();
            let mut columns: Vec<ArrayRef> = self.output_schema.fields()[..self.width]
                .iter()
                .map(|f| new_null_array(f.data_type(), n))
                .collect();
            for (&p, v) in self.partition.iter().zip(values) {
                columns[p] = v;
            }
            columns.push(Arc::new(UInt64Array::from(numbers)));
            columns.push(Arc::new(StringArray::from(vec!["delete"; n])));
            out.push(RecordBatch::try_new(self.output_schema.clone(), columns)?);
        }
        // Partitions left without rows are forgotten.
        for p in changed {
            if self.parts.get(p).rows.is_empty() {
                self.parts.forget(p);
            }
        }
        Ok(out)
    }

    fn memory_bytes(&self) -> usize {
        self.table.memory_bytes() + self.parts.bytes()
    }
}

impl Operator for ChangeTopN {
    fn kind(&self) -> &'static str {
        "change_top_n"
    }

    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let prepared = self.prepare(&batch)?;
        self.pending.push(prepared);
        Ok(Vec::new())
    }

    fn commit_batch(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            self.apply(p);
        }
    }

    fn abort_batch(&mut self) {
        self.pending.clear();
    }

    fn on_checkpoint(&mut self) -> Result<Vec<RecordBatch>> {
        self.emit_changed()
    }

    fn state_schema(&self) -> Option<SchemaRef> {
        Some(self.table.schema().clone())
    }

    /// All of it: the current rows; the changes: the change rows applied since.
    fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
        self.table.snapshot(full)
    }

    fn restore(&mut self, state: Vec<StateChunk>, _watermark: Option<i64>) -> Result<()> {
        for chunk in &state {
            // A batch at a time: a spilled chunk may not fit in memory whole.
            for batch in chunk.batches()? {
                let batch = batch?;
                let prepared = self.prepare(&batch)?;
                self.apply(prepared);
                self.fit_memory()?;
            }
        }
        // What was restored was emitted before the checkpoint: each partition's first rows.
        let table = &self.table;
        for p in self.parts.take_changed(|id| table.is_live(id)) {
            let part = self.parts.get_mut(p);
            part.extra = part.rows.len().min(self.limit);
        }
        self.table.restored();
        Ok(())
    }

    fn fit_memory(&mut self) -> Result<()> {
        if let Some(moved) = self.table.compact_if_due()? {
            self.parts.remap(&moved);
        }
        let other = self.memory_bytes() - self.table.memory_bytes();
        self.table.fit(
            self.budget.as_mut(),
            other,
            "a ROW_NUMBER over changes (the keys of its table's current rows and its partitions)",
        )
    }

    fn spilled_bytes(&self) -> u64 {
        self.table.spilled_bytes()
    }

    fn state_rows(&self) -> usize {
        self.table.live_rows()
    }

    fn state_bytes(&self) -> usize {
        self.memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};

    use super::*;
    use crate::runtime::operator::tests::{row_number_spec, rows_as_text};

    fn window_input() -> Vec<Field> {
        vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]
    }

    /// Rows: k, v, then the key id and `_op`.
    fn change_schema() -> SchemaRef {
        let mut fields = window_input();
        fields.push(Field::new("id", DataType::Int64, true));
        fields.push(Field::new(OP, DataType::Utf8, true));
        Arc::new(Schema::new(fields))
    }

    /// The two highest `v` per `k`.
    async fn operator() -> ChangeTopN {
        let spec = row_number_spec(&window_input(), "SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY k ORDER BY v DESC) AS rn FROM r) WHERE rn <= 2").await;
        ChangeTopN::new(spec, 2, change_schema()).unwrap()
    }

    /// Changes (id, op, k, v); a delete carries only its key.
    fn changes(rows: &[(i64, &str, Option<&str>, Option<i64>)]) -> RecordBatch {
        RecordBatch::try_new(
            change_schema(),
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.3).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    /// Emitted rows as `k v rn op`, sorted.
    fn rows(batches: &[RecordBatch]) -> Vec<String> {
        rows_as_text(batches)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_fall_back_and_leave_and_row_numbers_follow() {
        tokio::spawn(async {
            let mut op = operator().await;
            op.process(
                0,
                changes(&[
                    (1, "upsert", Some("a"), Some(5)),
                    (2, "upsert", Some("a"), Some(7)),
                    (3, "upsert", Some("a"), Some(1)),
                    (4, "upsert", Some("b"), Some(3)),
                ]),
            )
            .unwrap();
            op.commit_batch();
            assert_eq!(
                rows(&op.on_checkpoint().unwrap()),
                ["a 5 2 upsert", "a 7 1 upsert", "b 3 1 upsert"]
            );
            let full = op.snapshot(true).unwrap();
            // Row 2 falls back, b's only row leaves: b's row number 1 is deleted.
            op.process(
                0,
                changes(&[(2, "upsert", Some("a"), Some(0)), (4, "delete", None, None)]),
            )
            .unwrap();
            op.commit_batch();
            // A batch a later operator failed on leaves nothing behind.
            op.process(0, changes(&[(9, "upsert", Some("a"), Some(100))]))
                .unwrap();
            op.abort_batch();
            assert_eq!(
                rows(&op.on_checkpoint().unwrap()),
                ["a 1 2 upsert", "a 5 1 upsert", "b  1 delete"]
            );
            assert!(op.on_checkpoint().unwrap().is_empty(), "nothing changed");
            let changes_since = op.snapshot(false).unwrap();
            let mut restored = operator().await;
            restored
                .restore([full, changes_since].concat(), None)
                .unwrap();
            assert_eq!(restored.state_rows(), 3);
            assert!(
                restored.on_checkpoint().unwrap().is_empty(),
                "emitted before"
            );
            // Row 1 leaves a: a keeps two rows, so nothing is deleted; both number it alike.
            for o in [&mut op, &mut restored] {
                o.process(0, changes(&[(1, "delete", None, None)])).unwrap();
                o.commit_batch();
                assert_eq!(
                    rows(&o.on_checkpoint().unwrap()),
                    ["a 0 2 upsert", "a 1 1 upsert"]
                );
            }
        })
        .await
        .unwrap();
    }
}
