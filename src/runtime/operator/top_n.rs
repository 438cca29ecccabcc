//! The first rows of each partition by an order (`ROW_NUMBER() OVER (PARTITION BY p ORDER BY o)`
//! filtered to `<= N`, Nexmark q9's winning bids) over rows that only arrive: each partition
//! keeps its first N rows, DataFusion numbers them again with the rows that arrived, and at
//! each checkpoint the partitions that changed are emitted whole, as upserts keyed by the
//! partition and the row number. A row once outside the first N never comes back, so nothing
//! else is kept.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_plan::sorts::sort::sort_batch;
use datafusion::physical_plan::ExecutionPlan;

use super::keyed_rows::{KeyedRows, RowId, KEY_OVERHEAD};
use super::parallel::Keying;
use super::spill::{load, StateChunk};
use super::stateless::OP;
use super::{run_plan_on, Operator};
use crate::error::{Error, Result};
use crate::runtime::memory::{Budget, StateMemory};

/// Rows that arrived are numbered once this many wait, not only at checkpoints.
const RANK_ROWS: usize = 65_536;

/// What the operator is built from, as the SQL front end plans it.
#[derive(Debug, Clone)]
pub struct TopNSpec {
    /// DataFusion's plan numbering rows: the filter on the row number over the window over a
    /// sort by partition and order, over a placeholder for the operator's input. The operator
    /// sorts with the sort's expressions itself, in one piece, and gives the window rows known
    /// to be sorted: DataFusion's SortExec would merge sorted runs of its input (split into
    /// batches) on tokio tasks, which wait behind this thread's wait for the plan.
    pub plan: Arc<dyn ExecutionPlan>,
    /// The input columns the rows are partitioned by (plain columns).
    pub partition: Vec<usize>,
}

/// The first N rows of each partition.
pub struct TopN {
    /// The numbering plan without its sort, over rows sorted by `order`.
    plan: Arc<dyn ExecutionPlan>,
    order: LexOrdering,
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    partition: Vec<usize>,
    /// Input columns; the row number follows them in the output.
    width: usize,
    partition_values: RowConverter,
    /// The kept rows: input columns, the partition's columns again and the row number (the
    /// key), `_op`.
    table: KeyedRows,
    /// The kept rows of each partition.
    members: HashMap<Box<[u8]>, Vec<RowId>, ahash::RandomState>,
    /// Partitions whose rows changed since the last emission.
    changed: HashSet<Box<[u8]>, ahash::RandomState>,
    /// Rows committed but not numbered yet.
    fresh: Vec<RecordBatch>,
    fresh_rows: usize,
    pending: Vec<RecordBatch>,
    index_bytes: usize,
    budget: Option<Budget>,
    task: Arc<TaskContext>,
}

impl TopN {
    /// The operator over rows of the plan's input.
    pub fn new(spec: TopNSpec) -> Result<Self> {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        use datafusion::physical_plan::sorts::sort::SortExec;

        let output_schema = spec.plan.schema();
        let mut order = None;
        let plan = spec
            .plan
            .clone()
            .transform_up(|node| match node.downcast_ref::<SortExec>() {
                Some(sort) => {
                    order = Some(sort.expr().clone());
                    Ok(Transformed::yes(sort.input().clone()))
                }
                None => Ok(Transformed::no(node)),
            })?
            .data;
        let Some(order) = order else {
            return Err(Error::Internal(
                "a ROW_NUMBER plan without the sort under its window".into(),
            ));
        };
        let width = output_schema.fields().len().saturating_sub(1);
        let number =
            output_schema.fields().last().cloned().ok_or_else(|| {
                Error::Internal("a ROW_NUMBER plan with no output columns".into())
            })?;
        let input_schema = Arc::new(output_schema.project(&(0..width).collect::<Vec<_>>())?);
        if spec.partition.is_empty() || spec.partition.iter().any(|&p| p >= width) {
            return Err(Error::Internal(
                "a ROW_NUMBER needs partition columns among its input's".into(),
            ));
        }
        let fields: Vec<Field> = input_schema
            .fields()
            .iter()
            .chain(spec.partition.iter().map(|&p| &input_schema.fields()[p]))
            .map(|f| f.as_ref().clone().with_nullable(true))
            .chain([
                number.as_ref().clone().with_nullable(true),
                Field::new(OP, DataType::Utf8, true),
            ])
            .collect();
        let key = width..width + spec.partition.len() + 1;
        let table = KeyedRows::new(Arc::new(Schema::new(fields)), key)?;
        let partition_values = RowConverter::new(
            spec.partition
                .iter()
                .map(|&p| SortField::new(input_schema.field(p).data_type().clone()))
                .collect(),
        )?;
        Ok(TopN {
            plan,
            order,
            input_schema,
            output_schema,
            partition: spec.partition,
            width,
            partition_values,
            table,
            members: HashMap::default(),
            changed: HashSet::default(),
            fresh: Vec::new(),
            fresh_rows: 0,
            pending: Vec::new(),
            index_bytes: 0,
            budget: None,
            task: Arc::new(TaskContext::default()),
        })
    }

    /// The same, its state accounted in `memory`.
    pub fn with_memory(mut self, memory: &Arc<StateMemory>) -> Self {
        self.budget = Some(Budget::new(memory, "top_n"));
        self
    }

    /// The partition of each row, in Arrow's row format.
    fn partitions_of(&self, batch: &RecordBatch, columns: &[usize]) -> Result<arrow::row::Rows> {
        let values: Vec<ArrayRef> = columns.iter().map(|&c| batch.column(c).clone()).collect();
        Ok(self.partition_values.convert_columns(&values)?)
    }

    /// Numbers the rows that arrived with the kept rows of their partitions, and keeps the
    /// first N of each.
    fn rank(&mut self) -> Result<()> {
        if self.fresh.is_empty() {
            return Ok(());
        }
        let fresh = std::mem::take(&mut self.fresh);
        self.fresh_rows = 0;
        let mut touched: HashSet<Box<[u8]>, ahash::RandomState> = HashSet::default();
        let mut kept: Vec<(usize, usize)> = Vec::new();
        for batch in &fresh {
            let partitions = self.partitions_of(batch, &self.partition)?;
            for row in partitions.iter() {
                if touched.insert(row.as_ref().into()) {
                    if let Some(ids) = self.members.get(row.as_ref()) {
                        kept.extend(ids.iter().map(|&(b, i)| (b as usize, i as usize)));
                    }
                }
            }
        }
        let mut candidates = Vec::with_capacity(fresh.len() + 1);
        if !kept.is_empty() {
            let columns = self.table.gather(0..self.width, &kept)?;
            candidates.push(RecordBatch::try_new(self.input_schema.clone(), columns)?);
        }
        for batch in fresh {
            candidates.push(RecordBatch::try_new(
                self.input_schema.clone(),
                batch.columns().to_vec(),
            )?);
        }
        let candidates = concat_batches(&self.input_schema, &candidates)?;
        let sorted = sort_batch(&candidates, &self.order, None)?;
        let source = MemorySourceConfig::try_new(&[vec![sorted]], self.input_schema.clone(), None)?
            .try_with_sort_information(vec![self.order.clone()])?;
        let numbered = run_plan_on(
            &self.plan,
            vec![DataSourceExec::from_data_source(source)],
            &self.task,
        )?;
        if numbered.is_empty() {
            return Ok(());
        }
        let numbered = concat_batches(&self.output_schema, &numbered)?;
        let n = numbered.num_rows();
        let mut columns = numbered.columns()[..self.width].to_vec();
        columns.extend(self.partition.iter().map(|&p| numbered.column(p).clone()));
        columns.push(numbered.column(self.width).clone());
        columns.push(Arc::new(StringArray::from(vec!["upsert"; n])));
        let changes = self
            .table
            .prepare(&RecordBatch::try_new(self.table.schema().clone(), columns)?)?;
        let partitions = self.partitions_of(&numbered, &self.partition)?;
        // Every kept row of a partition numbered again is replaced: a partition only grows
        // towards N rows, so each of its row numbers comes back.
        let mut now: HashMap<Box<[u8]>, Vec<RowId>, ahash::RandomState> = HashMap::default();
        self.table.apply(
            changes,
            |_, _| {},
            |i, id| {
                now.entry(partitions.row(i).as_ref().into())
                    .or_default()
                    .push(id);
                0
            },
        );
        for (partition, ids) in now {
            self.index_bytes += 8 * ids.len();
            match self.members.get_mut(&partition) {
                Some(old) => {
                    self.index_bytes = self.index_bytes.saturating_sub(8 * old.len());
                    *old = ids;
                }
                None => {
                    self.index_bytes += partition.len() + KEY_OVERHEAD;
                    self.members.insert(partition.clone(), ids);
                }
            }
            self.changed.insert(partition);
        }
        Ok(())
    }

    /// The kept rows of the partitions that changed, as output rows.
    fn emit_changed(&mut self) -> Result<Vec<RecordBatch>> {
        let mut ids = Vec::new();
        for partition in self.changed.drain() {
            if let Some(rows) = self.members.get(&partition) {
                ids.extend(rows.iter().map(|&(b, i)| (b as usize, i as usize)));
            }
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let number = self.width + self.partition.len();
        let mut out = Vec::new();
        for chunk in ids.chunks(RANK_ROWS) {
            let mut columns = self.table.gather(0..self.width, chunk)?;
            columns.extend(self.table.gather(number..number + 1, chunk)?);
            out.push(RecordBatch::try_new(self.output_schema.clone(), columns)?);
        }
        Ok(out)
    }

    fn memory_bytes(&self) -> usize {
        let fresh: usize = self
            .fresh
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum();
        self.table.memory_bytes() + self.index_bytes + fresh
    }
}

impl Operator for TopN {
    fn kind(&self) -> &'static str {
        "top_n"
    }

    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        if self.fresh_rows >= RANK_ROWS {
            // The rows waiting were committed: numbering them changes no output.
            self.rank()?;
        }
        if batch.num_rows() > 0 {
            self.pending.push(batch);
        }
        Ok(Vec::new())
    }

    fn commit_batch(&mut self) {
        for batch in std::mem::take(&mut self.pending) {
            self.fresh_rows += batch.num_rows();
            self.fresh.push(batch);
        }
    }

    fn abort_batch(&mut self) {
        self.pending.clear();
    }

    fn on_checkpoint(&mut self) -> Result<Vec<RecordBatch>> {
        self.rank()?;
        self.emit_changed()
    }

    fn state_schema(&self) -> Option<SchemaRef> {
        Some(self.table.schema().clone())
    }

    /// All of it: the kept rows; the changes: the rows kept since (each replacing its
    /// partition's row of the same number). Taken after [`Operator::on_checkpoint`] numbered
    /// every row that arrived.
    fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
        if !self.fresh.is_empty() {
            return Err(Error::Internal(
                "a ROW_NUMBER's snapshot with rows not numbered".into(),
            ));
        }
        self.table.snapshot(full)
    }

    fn restore(&mut self, state: Vec<StateChunk>, _watermark: Option<i64>) -> Result<()> {
        let columns: Vec<usize> = (self.width..self.width + self.partition.len()).collect();
        for chunk in &state {
            for batch in load(std::slice::from_ref(chunk))? {
                let partitions = self.partitions_of(&batch, &columns)?;
                let changes = self.table.prepare(&batch)?;
                let mut now: HashMap<Box<[u8]>, Vec<RowId>, ahash::RandomState> =
                    HashMap::default();
                let mut replaced: HashSet<RowId> = HashSet::new();
                self.table.apply(
                    changes,
                    |id, _| {
                        replaced.insert(id);
                    },
                    |i, id| {
                        now.entry(partitions.row(i).as_ref().into())
                            .or_default()
                            .push(id);
                        0
                    },
                );
                for (partition, ids) in now {
                    let entry = self.members.entry(partition).or_default();
                    entry.retain(|id| !replaced.contains(id));
                    entry.extend(ids);
                }
            }
            self.fit_memory()?;
        }
        self.index_bytes = self
            .members
            .iter()
            .map(|(k, v)| k.len() + KEY_OVERHEAD + 8 * v.len())
            .sum();
        self.table.restored();
        Ok(())
    }

    fn fit_memory(&mut self) -> Result<()> {
        if let Some(moved) = self.table.compact_if_due()? {
            for ids in self.members.values_mut() {
                *ids = ids.iter().filter_map(|&id| moved.get(id)).collect();
            }
        }
        let bytes = self.memory_bytes();
        Budget::hold_in(
            self.budget.as_mut(),
            bytes,
            "a ROW_NUMBER (the first rows of each partition)",
        )
    }

    fn state_rows(&self) -> usize {
        self.table.live_rows()
    }

    fn state_bytes(&self) -> usize {
        self.memory_bytes()
    }

    fn keying(&self) -> Option<Keying> {
        let schema = &self.input_schema;
        Some(Keying {
            inputs: vec![self
                .partition
                .iter()
                .map(|&p| {
                    Arc::new(Column::new(schema.field(p).name(), p))
                        as Arc<dyn datafusion::physical_expr::PhysicalExpr>
                })
                .collect()],
            state: (self.width..self.width + self.partition.len()).collect(),
        })
    }
}

#[cfg(test)]
mod tests;
