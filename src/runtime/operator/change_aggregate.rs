//! A GROUP BY over a change stream (a CDC source seen as a table), in two keyed operators that
//! each run as several instances. [`ChangePartials`], keyed by the table's primary key, keeps
//! the table's current rows; at each checkpoint it aggregates again, by DataFusion, every group
//! a change touched, into its instance's partial state of the group (an upsert, or a delete when
//! the instance's last row of the group left it). [`ChangeAggregate`], keyed by the group, merges
//! a changed group's partial states into its result row (an upsert, or a delete when its last
//! partial state went). Nothing is retracted from an accumulator, so every aggregate works (min,
//! max and count(DISTINCT ...) included).
//!
//! Partial states belong to instances, whose number may differ after a restart, so they are not
//! checkpointed: a restored [`ChangePartials`] sends every group's again at the first
//! checkpoint, and [`ChangeAggregate`] keeps the result rows it emitted, to send after a restore
//! only those that differ.

mod grouped_table;

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, StringArray, UInt16Array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;

use super::keyed_rows::KeyedRows;
use super::parallel::Keying;
use super::spill::StateChunk;
use super::stateless::OP;
use super::two_stage::TwoStage;
use super::Operator;
use crate::error::{Error, Result};
use crate::runtime::memory::{Budget, StateMemory};
use grouped_table::{delete_rows, GroupedTable};

/// The column of a partial state naming the instance that sent it.
pub const INSTANCE: &str = "__instance";

/// Rows per batch a recomputation aggregates.
const CHUNK_ROWS: usize = 65_536;

/// Adds `_op` = `op` to each of `batches`, as rows of `schema`.
fn with_op(batches: Vec<RecordBatch>, schema: &SchemaRef, op: &str) -> Result<Vec<RecordBatch>> {
    batches
        .into_iter()
        .map(|batch| {
            let n = batch.num_rows();
            let mut columns = batch.columns().to_vec();
            columns.push(Arc::new(StringArray::from(vec![op; n])));
            Ok(RecordBatch::try_new(schema.clone(), columns)?)
        })
        .collect()
}

/// `fields` nullable, then `_op`.
fn with_op_field(fields: impl IntoIterator<Item = Field>) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .into_iter()
            .map(|f| f.with_nullable(true))
            .chain([Field::new(OP, DataType::Utf8, true)])
            .collect::<Vec<_>>(),
    ))
}

/// The rows [`ChangePartials`] emits for `stages`: the group columns, [`INSTANCE`], the
/// aggregates' state columns, `_op`.
fn partials_schema(stages: &TwoStage) -> SchemaRef {
    let fields = stages.state_schema().fields();
    let groups = stages.groups();
    with_op_field(
        fields[..groups]
            .iter()
            .map(|f| f.as_ref().clone())
            .chain([Field::new(INSTANCE, DataType::UInt16, true)])
            .chain(fields[groups..].iter().map(|f| f.as_ref().clone())),
    )
}

/// The first stage: the table's current rows by primary key, and its instance's partial state of
/// each group.
pub struct ChangePartials {
    stages: TwoStage,
    /// Which instance it is, as its partial states say.
    instance: u16,
    /// The aggregate's input columns lead each row; the primary key follows; `_op` is last.
    columns: usize,
    rows: GroupedTable,
    input_schema: SchemaRef,
    output_schema: SchemaRef,
}

impl ChangePartials {
    /// Instance `instance` of an operator from the Final aggregate of a planned GROUP BY (whose
    /// input is the Partial one), over rows of `schema`: the aggregate's input columns, then the
    /// primary key columns, then `_op`.
    pub fn new(final_: Arc<dyn ExecutionPlan>, schema: SchemaRef, instance: usize) -> Result<Self> {
        let stages = TwoStage::new(final_)?;
        let columns = stages.input_schema().fields().len();
        let width = schema.fields().len();
        if width < columns + 2 {
            return Err(Error::Internal(format!(
                "a GROUP BY over a change stream needs its rows' primary key and {OP} after its {columns} columns"
            )));
        }
        let group_types: Vec<DataType> = stages.state_schema().fields()[..stages.groups()]
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let rows = GroupedTable::new(
            schema,
            columns..width - 1,
            &group_types,
            "a GROUP BY over a change stream (the keys of its table's current rows and its groups)",
        )?;
        Ok(ChangePartials {
            input_schema: Arc::new(
                rows.table
                    .schema()
                    .project(&(0..columns).collect::<Vec<_>>())?,
            ),
            output_schema: partials_schema(&stages),
            instance: u16::try_from(instance)
                .map_err(|_| Error::Internal(format!("instance {instance} of too many")))?,
            stages,
            columns,
            rows,
        })
    }

    /// The same, its state accounted in `memory`.
    pub fn with_memory(mut self, memory: &Arc<StateMemory>) -> Self {
        self.rows.with_memory(memory, "change_partials");
        self.stages.use_memory(memory);
        self
    }

    /// The aggregate's input columns of rows of the table.
    fn input_of(schema: &SchemaRef, columns: usize, rows: &RecordBatch) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            schema.clone(),
            rows.columns()[..columns].to_vec(),
        )?)
    }

    /// The group values of rows of the table.
    fn groups_of(stages: &TwoStage, input: RecordBatch) -> Result<Vec<ArrayRef>> {
        let n = input.num_rows();
        Ok(stages
            .group_exprs()
            .iter()
            .map(|e| e.evaluate(&input).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?)
    }

    /// The partial state of every changed group over its current rows (`_op` upsert), and a
    /// delete of each left without rows.
    fn emit_changed(&mut self) -> Result<Vec<RecordBatch>> {
        let changed = self.rows.take_changed();
        let mut states = Vec::new();
        let mut chunks = 0;
        for chunk in changed.rows.chunks(CHUNK_ROWS) {
            let columns = self.rows.table.gather(0..self.columns, chunk)?;
            let input = RecordBatch::try_new(self.input_schema.clone(), columns)?;
            states.extend(self.stages.partial(input)?);
            chunks += 1;
        }
        // A group's rows split between chunks give it a partial state in each: one per group.
        if chunks > 1 {
            states = self.stages.reduce(states)?;
        }
        let groups = self.stages.groups();
        let mut out = Vec::with_capacity(states.len() + 1);
        for state in states {
            let n = state.num_rows();
            let mut columns = state.columns().to_vec();
            columns.insert(groups, Arc::new(UInt16Array::from(vec![self.instance; n])));
            columns.push(Arc::new(StringArray::from(vec!["upsert"; n])));
            out.push(RecordBatch::try_new(self.output_schema.clone(), columns)?);
        }
        let instance: ArrayRef = Arc::new(UInt16Array::from(vec![self.instance]));
        out.extend(
            self.rows
                .deletes(&changed, &self.output_schema, &[instance])?,
        );
        Ok(out)
    }
}

impl Operator for ChangePartials {
    fn kind(&self) -> &'static str {
        "change_partials"
    }

    /// Checks the batch's changes against the aggregate (a row it cannot aggregate fails
    /// here, in its own batch) and stages them.
    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let (stages, schema, columns) = (&self.stages, &self.input_schema, self.columns);
        let prepared = self.rows.prepare(&batch, |rows| {
            Self::groups_of(stages, Self::input_of(schema, columns, rows)?)
        })?;
        let upserts = prepared.changes.upserts();
        let input = Self::input_of(schema, columns, &prepared.changes.batch)?;
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
        self.rows.stage(prepared);
        Ok(Vec::new())
    }

    fn commit_batch(&mut self) {
        self.rows.commit();
    }

    fn abort_batch(&mut self) {
        self.rows.abort();
    }

    fn on_checkpoint(&mut self) -> Result<Vec<RecordBatch>> {
        self.emit_changed()
    }

    fn state_schema(&self) -> Option<SchemaRef> {
        Some(self.rows.table.schema().clone())
    }

    /// All of it: the current rows; the changes: the change rows applied since.
    fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
        self.rows.table.snapshot(full)
    }

    /// Every group restored is left changed: its partial state goes again to the second stage,
    /// which kept none.
    fn restore(&mut self, state: Vec<StateChunk>, _watermark: Option<i64>) -> Result<()> {
        let (stages, schema, columns) = (&self.stages, &self.input_schema, self.columns);
        self.rows.restore(state, |rows| {
            Self::groups_of(stages, Self::input_of(schema, columns, rows)?)
        })
    }

    fn fit_memory(&mut self) -> Result<()> {
        self.rows.fit_memory()
    }

    fn spilled_bytes(&self) -> u64 {
        self.rows.table.spilled_bytes()
    }

    fn state_rows(&self) -> usize {
        self.rows.table.live_rows()
    }

    fn state_bytes(&self) -> usize {
        self.rows.memory_bytes()
    }

    /// By primary key: a key's changes all reach one instance, which keeps its row.
    fn keying(&self) -> Option<Keying> {
        let schema = self.rows.table.schema();
        let key: Vec<usize> = (self.columns..schema.fields().len() - 1).collect();
        Some(Keying {
            inputs: vec![columns(schema, &key)],
            state: key,
        })
    }
}

/// Column expressions of columns `at` of `schema`.
fn columns(schema: &SchemaRef, at: &[usize]) -> Vec<Arc<dyn PhysicalExpr>> {
    at.iter()
        .map(|&c| Arc::new(Column::new(schema.field(c).name(), c)) as Arc<dyn PhysicalExpr>)
        .collect()
}

/// The second stage: the partial states of each group, by instance, merged into the group's
/// row when they change; and the rows it emitted, its checkpointed state.
pub struct ChangeAggregate {
    stages: TwoStage,
    /// How many group columns lead the partial states and the results.
    groups: usize,
    states: GroupedTable,
    /// The current result row of each group, as emitted (`_op` last).
    results: KeyedRows,
    results_budget: Option<Budget>,
    /// Compares result rows (all but `_op`).
    result_values: RowConverter,
    /// Restored, and not yet past the first checkpoint: what it emits then may repeat rows
    /// emitted before the restore.
    restored: bool,
}

impl ChangeAggregate {
    /// An operator from the Final aggregate of a planned GROUP BY (whose input is the Partial
    /// one), over the rows [`ChangePartials`] emits for it.
    pub fn new(final_: Arc<dyn ExecutionPlan>) -> Result<Self> {
        let stages = TwoStage::new(final_.clone())?;
        let groups = stages.groups();
        let group_types: Vec<DataType> = stages.state_schema().fields()[..groups]
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let states = GroupedTable::new(
            partials_schema(&stages),
            0..groups + 1,
            &group_types,
            "a GROUP BY over a change stream (the partial states of its groups)",
        )?;
        let fields = final_.schema().fields().clone();
        // Result rows and groups are found by the same keys: their group columns' values.
        if fields[..groups]
            .iter()
            .map(|f| f.data_type())
            .ne(group_types.iter())
        {
            return Err(Error::Internal(
                "the group columns of a GROUP BY's results differ from its partial states'".into(),
            ));
        }
        let results = KeyedRows::new(
            with_op_field(fields.iter().map(|f| f.as_ref().clone())),
            0..groups,
        )?;
        let result_values = RowConverter::new(
            fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        Ok(ChangeAggregate {
            stages,
            groups,
            states,
            results,
            results_budget: None,
            result_values,
            restored: false,
        })
    }

    /// The same, its state accounted in `memory`.
    pub fn with_memory(mut self, memory: &Arc<StateMemory>) -> Self {
        self.states.with_memory(memory, "change_aggregate");
        self.results_budget = Some(Budget::new(memory, "change_aggregate results"));
        self.stages.use_memory(memory);
        self
    }

    fn group_of(groups: usize, rows: &RecordBatch) -> Result<Vec<ArrayRef>> {
        Ok(rows.columns()[..groups].to_vec())
    }

    /// The result of every changed group over its partial states (`_op` upsert), and a delete
    /// of each left without any.
    fn emit_changed(&mut self) -> Result<Vec<RecordBatch>> {
        let changed = self.states.take_changed();
        let width = self.states.table.schema().fields().len();
        // The partial states' columns: all but the instance and `_op`.
        let gathered: Vec<usize> = (0..self.groups).chain(self.groups + 1..width - 1).collect();
        let mut states = Vec::new();
        for chunk in changed.rows.chunks(CHUNK_ROWS) {
            let columns = self.states.table.gather_columns(&gathered, chunk)?;
            states.push(RecordBatch::try_new(
                self.stages.state_schema().clone(),
                columns,
            )?);
        }
        let schema = self.results.schema().clone();
        let mut out = Vec::new();
        if !states.is_empty() {
            out = with_op(self.stages.finish(states)?, &schema, "upsert")?;
        }
        let restored = std::mem::take(&mut self.restored);
        if restored {
            // Every group with rows sent its partial states again: a result row of a group that
            // sent none lost its rows before (between the restore and now).
            out.extend(self.deletes_without_states()?);
        }
        out.extend(self.states.deletes(&changed, &schema, &[])?);
        let mut emitted = Vec::with_capacity(out.len());
        for batch in out {
            let batch = if restored {
                self.unlike_results(batch)?
            } else {
                batch
            };
            if batch.num_rows() > 0 {
                let changes = self.results.prepare(&batch)?;
                self.results.apply(changes, |_, _| {}, |_, _| 0);
                emitted.push(batch);
            }
        }
        Ok(emitted)
    }

    /// A delete of each result row whose group has no partial states.
    fn deletes_without_states(&self) -> Result<Option<RecordBatch>> {
        let ids: Vec<(usize, usize)> = self
            .results
            .entries()
            .filter(|(key, _)| !self.states.has_group(key))
            .map(|(_, (b, i))| (b as usize, i as usize))
            .collect();
        if ids.is_empty() {
            return Ok(None);
        }
        let columns = self.results.gather(0..self.groups, &ids)?;
        Ok(Some(delete_rows(
            self.results.schema(),
            columns,
            ids.len(),
        )?))
    }

    /// The rows of `batch` (results and deletes) that change the results emitted so far.
    fn unlike_results(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let changes = self.results.prepare(&batch)?;
        let n = batch.num_rows();
        let current: Vec<Option<(usize, usize)>> = (0..n)
            .map(|i| {
                self.results
                    .current(changes.key(i).as_ref())
                    .map(|(b, r)| (b as usize, r as usize))
            })
            .collect();
        let ids: Vec<(usize, usize)> = current.iter().flatten().copied().collect();
        let width = batch.num_columns() - 1;
        let before = self
            .result_values
            .convert_columns(&self.results.gather(0..width, &ids)?)?;
        let now = self
            .result_values
            .convert_columns(&batch.columns()[..width])?;
        let mut found = 0;
        let keep: BooleanArray = (0..n)
            .map(|i| {
                Some(match current[i] {
                    None => !changes.is_delete(i),
                    Some(_) => {
                        found += 1;
                        changes.is_delete(i) || before.row(found - 1) != now.row(i)
                    }
                })
            })
            .collect();
        Ok(filter_record_batch(&batch, &keep)?)
    }
}

impl Operator for ChangeAggregate {
    fn kind(&self) -> &'static str {
        "change_aggregate"
    }

    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let groups = self.groups;
        let prepared = self
            .states
            .prepare(&batch, |rows| Self::group_of(groups, rows))?;
        self.states.stage(prepared);
        Ok(Vec::new())
    }

    fn commit_batch(&mut self) {
        self.states.commit();
    }

    fn abort_batch(&mut self) {
        self.states.abort();
    }

    fn on_checkpoint(&mut self) -> Result<Vec<RecordBatch>> {
        self.emit_changed()
    }

    /// The result rows emitted: the partial states are not kept, their instances may change.
    fn state_schema(&self) -> Option<SchemaRef> {
        Some(self.results.schema().clone())
    }

    fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
        // The partial states' changes are not recorded.
        self.states.table.snapshot(false)?;
        self.results.snapshot(full)
    }

    fn restore(&mut self, state: Vec<StateChunk>, _watermark: Option<i64>) -> Result<()> {
        for chunk in &state {
            for batch in chunk.batches()? {
                let changes = self.results.prepare(&batch?)?;
                self.results.apply(changes, |_, _| {}, |_, _| 0);
                self.fit_results()?;
            }
        }
        self.results.restored();
        self.restored = true;
        Ok(())
    }

    fn fit_memory(&mut self) -> Result<()> {
        self.states.fit_memory()?;
        self.fit_results()
    }

    fn spilled_bytes(&self) -> u64 {
        self.states.table.spilled_bytes() + self.results.spilled_bytes()
    }

    /// Partial states and result rows.
    fn state_rows(&self) -> usize {
        self.states.table.live_rows() + self.results.live_rows()
    }

    fn state_bytes(&self) -> usize {
        self.states.memory_bytes() + self.results.memory_bytes()
    }

    /// By group: a group's partial states all reach one instance, which merges them.
    fn keying(&self) -> Option<Keying> {
        let at: Vec<usize> = (0..self.groups).collect();
        Some(Keying {
            inputs: vec![columns(self.states.table.schema(), &at)],
            state: at,
        })
    }
}

impl ChangeAggregate {
    fn fit_results(&mut self) -> Result<()> {
        self.results.compact_if_due()?;
        self.results.fit(
            self.results_budget.as_mut(),
            0,
            "a GROUP BY over a change stream (the keys of its result rows)",
        )
    }
}

#[cfg(test)]
mod tests;
