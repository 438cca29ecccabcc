//! A GROUP BY over a change stream (a CDC source seen as a table): the table's current rows
//! are the state, kept by primary key, and at each checkpoint every group a change touched is
//! aggregated again by DataFusion over its current rows and emitted whole (an upsert), or as a
//! delete when its last row left it. Nothing is retracted from an accumulator, so every
//! aggregate works (min, max and count(DISTINCT ...) included).

use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, StringArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_plan::ExecutionPlan;

use super::keyed_rows::{Changes, KeyedRows};
use super::row_groups::RowGroups;
use super::spill::StateChunk;
use super::stateless::OP;
use super::two_stage::TwoStage;
use super::Operator;
use crate::error::{Error, Result};
use crate::runtime::memory::{Budget, StateMemory};

/// Rows per batch a recomputation aggregates.
const CHUNK_ROWS: usize = 65_536;

/// A batch of changes with each row's group, waiting for its commit.
struct Prepared {
    changes: Changes,
    groups: Rows,
}

/// Per-group aggregation of a table kept up to date by its change stream.
pub struct ChangeAggregate {
    stages: TwoStage,
    /// The aggregate's input columns lead each row; the primary key follows; `_op` is last.
    columns: usize,
    /// The aggregate's input columns of the rows.
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    group_values: RowConverter,
    table: KeyedRows,
    /// The current rows of each group, and the groups touched since the last emission.
    groups: RowGroups<()>,
    pending: Vec<Prepared>,
    budget: Option<Budget>,
}

impl ChangeAggregate {
    /// An operator from the Final aggregate of a planned GROUP BY (whose input is the Partial
    /// one), over rows of `schema`: the aggregate's input columns, then the primary key
    /// columns, then `_op`.
    pub fn new(final_: Arc<dyn ExecutionPlan>, schema: SchemaRef) -> Result<Self> {
        let stages = TwoStage::new(final_.clone())?;
        let columns = stages.input_schema().fields().len();
        let width = schema.fields().len();
        if width < columns + 2 {
            return Err(Error::Internal(format!(
                "a GROUP BY over a change stream needs its rows' primary key and {OP} after its {columns} columns"
            )));
        }
        let table = KeyedRows::new(schema, columns..width - 1)?;
        let group_values = RowConverter::new(
            stages.state_schema().fields()[..stages.groups()]
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let mut out: Vec<Field> = final_
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        out.push(Field::new(OP, arrow::datatypes::DataType::Utf8, true));
        Ok(ChangeAggregate {
            input_schema: Arc::new(table.schema().project(&(0..columns).collect::<Vec<_>>())?),
            stages,
            columns,
            output_schema: Arc::new(Schema::new(out)),
            group_values,
            table,
            groups: RowGroups::default(),
            pending: Vec::new(),
            budget: None,
        })
    }

    /// The same, its state accounted in `memory`.
    pub fn with_memory(mut self, memory: &Arc<StateMemory>) -> Self {
        self.budget = Some(Budget::new(memory, "change_aggregate"));
        self.stages.use_memory(memory);
        self
    }

    /// The aggregate's input columns of `batch`.
    fn input_of(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            self.input_schema.clone(),
            batch.columns()[..self.columns].to_vec(),
        )?)
    }

    /// Converts a batch of changes: its rows' keys, kinds and groups.
    fn prepare(&self, batch: &RecordBatch) -> Result<Prepared> {
        let changes = self.table.prepare(batch)?;
        let n = batch.num_rows();
        let input = self.input_of(&changes.batch)?;
        let values = self
            .stages
            .group_exprs()
            .iter()
            .map(|e| e.evaluate(&input).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
        let groups = self.group_values.convert_columns(&values)?;
        Ok(Prepared { changes, groups })
    }

    /// Applies a batch of changes: the groups of the rows replaced and of the new rows change.
    fn apply(&mut self, p: Prepared) {
        let Prepared { changes, groups } = p;
        let mut left = Vec::new();
        let all = &mut self.groups;
        self.table.apply(
            changes,
            |_, g| left.push(g),
            |i, id| all.add(groups.row(i).as_ref(), id),
        );
        // The groups of rows replaced (always known groups).
        for g in left {
            all.touch(g);
        }
    }

    /// The aggregate of every changed group over its current rows (`_op` upsert), and a delete
    /// for every changed group left without rows.
    fn emit_changed(&mut self) -> Result<Vec<RecordBatch>> {
        let mut rows = Vec::new();
        let mut emptied = Vec::new();
        let table = &self.table;
        for g in self.groups.take_changed(|id| table.is_live(id)) {
            let group = self.groups.get(g);
            if group.rows.is_empty() {
                emptied.push(g);
            } else {
                rows.extend(group.rows.iter().map(|&(b, i)| (b as usize, i as usize)));
            }
        }
        let mut states = Vec::new();
        for chunk in rows.chunks(CHUNK_ROWS) {
            let columns = self.table.gather(0..self.columns, chunk)?;
            let input = RecordBatch::try_new(self.input_schema.clone(), columns)?;
            states.extend(self.stages.partial(input)?);
        }
        let mut out = Vec::new();
        if !states.is_empty() {
            for batch in self.stages.finish(states)? {
                let n = batch.num_rows();
                let mut columns = batch.columns().to_vec();
                columns.push(Arc::new(StringArray::from(vec!["upsert"; n])));
                out.push(RecordBatch::try_new(self.output_schema.clone(), columns)?);
            }
        }
        if !emptied.is_empty() {
            let parser = self.group_values.parser();
            let keys: Vec<&[u8]> = emptied
                .iter()
                .map(|&g| self.groups.get(g).key.as_ref())
                .collect();
            let mut columns = self
                .group_values
                .convert_rows(keys.iter().map(|k| parser.parse(k)))?;
            let n = emptied.len();
            let fields = self.output_schema.fields();
            for f in &fields[columns.len()..fields.len() - 1] {
                columns.push(new_null_array(f.data_type(), n));
            }
            columns.push(Arc::new(StringArray::from(vec!["delete"; n])));
            out.push(RecordBatch::try_new(self.output_schema.clone(), columns)?);
            for g in emptied {
                self.groups.forget(g);
            }
        }
        Ok(out)
    }

    fn memory_bytes(&self) -> usize {
        self.table.memory_bytes() + self.groups.bytes()
    }
}

impl Operator for ChangeAggregate {
    fn kind(&self) -> &'static str {
        "change_aggregate"
    }

    /// Checks the batch's changes against the aggregate (a row it cannot aggregate fails
    /// here, in its own batch) and stages them.
    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let prepared = self.prepare(&batch)?;
        let upserts = prepared.changes.upserts();
        let input = self.input_of(&prepared.changes.batch)?;
        match upserts.true_count() {
            0 => {}
            n if n == input.num_rows() => {
                self.stages.partial(input)?;
            }
            _ => {
                self.stages
                    .partial(filter_record_batch(&input, &upserts)?)?;
            }
        }
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
        // What was restored was emitted before the checkpoint.
        let table = &self.table;
        self.groups.take_changed(|id| table.is_live(id));
        self.table.restored();
        Ok(())
    }

    fn fit_memory(&mut self) -> Result<()> {
        if let Some(moved) = self.table.compact_if_due()? {
            self.groups.remap(&moved);
        }
        let other = self.memory_bytes() - self.table.memory_bytes();
        self.table.fit(
            self.budget.as_mut(),
            other,
            "a GROUP BY over a change stream (the keys of its table's current rows and its groups)",
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
mod tests;
