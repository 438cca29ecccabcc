//! The first rows of each partition by an order (`ROW_NUMBER() OVER (PARTITION BY p ORDER BY o)`
//! filtered to `<= N`, Nexmark q9's winning bids) over rows that only arrive: each partition
//! keeps its first N rows, DataFusion numbers them again with the rows that arrived, and at
//! each checkpoint the partitions whose rows changed (a new row among the first N, or a kept
//! one pushed down) are emitted whole, as upserts keyed by the partition and the row number. A
//! row once outside the first N never comes back, so nothing else is kept. Keeping the first
//! row only (N = 1, Nexmark q9, deduplication), a kept row is emitted once, when it becomes
//! first: after that the table keeps only the columns the numbering reads (the partition's and
//! the order's), and the rows waiting to be emitted are kept whole beside it until the
//! checkpoint. With a state TTL, a partition no row has reached for that long leaves the state
//! (its rows stay in the sink; a later row starts it afresh).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{new_null_array, ArrayRef, AsArray, StringArray, UInt64Array};
use arrow::compute::filter_record_batch;
use arrow::compute::interleave_record_batch;
use arrow::compute::kernels::cmp::neq;
use arrow::compute::kernels::filter::filter;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_plan::ExecutionPlan;

use super::change_times;
use super::keyed_rows::{KeyedRows, RowId, KEY_OVERHEAD};
use super::parallel::Keying;
use super::spill::StateChunk;
use super::stateless::OP;
use super::{now_micros, Operator};
use crate::error::{Error, Result};
use crate::runtime::memory::{Budget, StateMemory};
use numbering::number_read_columns;
pub(super) use numbering::{number_rows, split_sort};

/// The column the numbering plan's input carries after the operator's input columns, which
/// the plan passes through untouched: a kept row's number, 0 for a row that arrived (so rows
/// whose number did not change are known). `TopN` sends each candidate's position through it
/// and puts the numbers back after (see `number_read_columns`).
pub const RANK_BEFORE: &str = "__rank_before";

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
    /// The output: the input columns, then the row number (the plan's, without [`RANK_BEFORE`]).
    pub output: SchemaRef,
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
    /// Keeping the first row only: the rows that became first since the last emission, whole
    /// (the table's rows carry only `numbered` columns).
    unemitted: Option<KeyedRows>,
    /// The input columns the numbering reads: the partition's and the order's.
    numbering_columns: Vec<bool>,
    /// Rows committed but not numbered yet.
    fresh: Vec<RecordBatch>,
    fresh_rows: usize,
    pending: Vec<RecordBatch>,
    index_bytes: usize,
    budget: Option<Budget>,
    task: Arc<TaskContext>,
    ttl: Option<Duration>,
    /// With a TTL, the state as checkpointed: the table's and [`TOUCHED_AT`].
    timed: Option<SchemaRef>,
    /// When a row last reached each partition (with a TTL; UTC microseconds).
    touched_at: HashMap<Box<[u8]>, i64, ahash::RandomState>,
    /// Partitions whose time is not yet snapshotted.
    retouched: Vec<Box<[u8]>>,
    expired_at: i64,
}

/// The state's time column with a TTL: when a row last reached the partition of a time row.
const TOUCHED_AT: &str = "_touched_at";

impl TopN {
    /// The operator over rows of the plan's input.
    pub fn new(spec: TopNSpec) -> Result<Self> {
        let output_schema = spec.output.clone();
        let (plan, order) = split_sort(&spec.plan)?;
        let width = output_schema.fields().len().saturating_sub(1);
        let number =
            output_schema.fields().last().cloned().ok_or_else(|| {
                Error::Internal("a ROW_NUMBER plan with no output columns".into())
            })?;
        let input_schema = Arc::new(
            spec.plan
                .schema()
                .project(&(0..=width).collect::<Vec<_>>())?,
        );
        if input_schema.field(width).name() != RANK_BEFORE {
            return Err(Error::Internal(format!(
                "a ROW_NUMBER plan without {RANK_BEFORE} after its input's columns"
            )));
        }
        if spec.partition.is_empty() || spec.partition.iter().any(|&p| p >= width) {
            return Err(Error::Internal(
                "a ROW_NUMBER needs partition columns among its input's".into(),
            ));
        }
        let fields: Vec<Field> = input_schema.fields()[..width]
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
        let numbering_columns = numbering_columns(&order, &spec.partition, &input_schema, width);
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
            unemitted: None,
            numbering_columns,
            fresh: Vec::new(),
            fresh_rows: 0,
            pending: Vec::new(),
            index_bytes: 0,
            budget: None,
            task: Arc::new(TaskContext::default()),
            ttl: None,
            timed: None,
            touched_at: HashMap::default(),
            retouched: Vec::new(),
            expired_at: now_micros(),
        })
    }

    /// The same, dropping partitions no row reached for `ttl`.
    pub fn with_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self.timed = ttl.map(|_| change_times::timed_schema(self.table.schema(), TOUCHED_AT));
        self
    }

    /// The same keeping each partition's first row only (`first_only`, a limit of 1): rows
    /// once emitted keep only the columns the numbering reads.
    pub fn first_only(mut self, first_only: bool) -> Result<Self> {
        if !first_only {
            return Ok(self);
        }
        self.unemitted = Some(self.empty_table()?);
        Ok(self)
    }

    /// A table of kept rows with nothing in it.
    fn empty_table(&self) -> Result<KeyedRows> {
        let key = self.width..self.width + self.partition.len() + 1;
        KeyedRows::new(self.table.schema().clone(), key)
    }

    /// The same, its state accounted in `memory`.
    pub fn with_memory(mut self, memory: &Arc<StateMemory>) -> Self {
        self.budget = Some(Budget::new(memory, "top_n"));
        self
    }

    /// The partition of each row, in Arrow's row format.
    fn partitions_of(&self, batch: &RecordBatch) -> Result<arrow::row::Rows> {
        let values: Vec<ArrayRef> = self
            .partition
            .iter()
            .map(|&c| batch.column(c).clone())
            .collect();
        Ok(self.partition_values.convert_columns(&values)?)
    }

    /// Numbers the rows that arrived with the kept rows of their partitions, and keeps the
    /// first N of each.
    fn rank(&mut self, now: i64) -> Result<()> {
        if self.fresh.is_empty() {
            return Ok(());
        }
        let fresh = std::mem::take(&mut self.fresh);
        self.fresh_rows = 0;
        let mut touched: HashSet<Box<[u8]>, ahash::RandomState> = HashSet::default();
        let mut kept: Vec<(usize, usize)> = Vec::new();
        for batch in &fresh {
            let partitions = self.partitions_of(batch)?;
            for row in partitions.iter() {
                if touched.insert(row.as_ref().into()) {
                    if let Some(ids) = self.members.get(row.as_ref()) {
                        kept.extend(ids.iter().map(|&(b, i)| (b as usize, i as usize)));
                    }
                }
            }
        }
        if self.ttl.is_some() {
            for partition in &touched {
                self.touched_at.insert(partition.clone(), now);
                self.retouched.push(partition.clone());
            }
        }
        // Kept rows with their number, arriving ones with 0.
        let mut candidates = Vec::with_capacity(fresh.len() + 1);
        if !kept.is_empty() {
            let columns = self.table.gather_columns(&self.row_and_number(), &kept)?;
            candidates.push(RecordBatch::try_new(self.input_schema.clone(), columns)?);
        }
        for batch in fresh {
            let mut columns = batch.columns().to_vec();
            columns.push(Arc::new(UInt64Array::from(vec![0u64; batch.num_rows()])));
            candidates.push(RecordBatch::try_new(self.input_schema.clone(), columns)?);
        }
        let (numbered, positions) = number_read_columns(
            &self.plan,
            &self.order,
            &self.input_schema,
            &candidates,
            &self.numbering_columns,
            &self.task,
        )?;
        // Only rows whose number changed: new among the first N, or pushed down.
        let moved = neq(numbered.column(self.width), numbered.column(self.width + 1))?;
        let numbered = filter_record_batch(&numbered, &moved)?;
        let n = numbered.num_rows();
        if n == 0 {
            return Ok(());
        }
        let positions = filter(&positions, &moved)?;
        let numbered = with_whole_rows(&numbered, positions.as_primitive(), &candidates)?;
        let mut columns = numbered.columns()[..self.width].to_vec();
        columns.extend(self.partition.iter().map(|&p| numbered.column(p).clone()));
        columns.push(numbered.column(self.width + 1).clone());
        columns.push(Arc::new(StringArray::from(vec!["upsert"; n])));
        let mut ranked = RecordBatch::try_new(self.table.schema().clone(), columns)?;
        if let Some(unemitted) = &mut self.unemitted {
            // First rows: whole until emitted, in the table without what numbering never reads.
            let changes = unemitted.prepare(&ranked)?;
            unemitted.apply(changes, |_, _| {}, |_, _| 0);
            ranked = without_unread_columns(&ranked, &self.numbering_columns)?;
        }
        let changes = self.table.prepare(&ranked)?;
        let partitions = self.partitions_of(&numbered)?;
        // Each row replaces its partition's row of the same number.
        let mut ranked_ids: HashMap<Box<[u8]>, Vec<RowId>, ahash::RandomState> = HashMap::default();
        let mut replaced: HashSet<RowId> = HashSet::new();
        self.table.apply(
            changes,
            |id, _| {
                replaced.insert(id);
            },
            |i, id| {
                ranked_ids
                    .entry(partitions.row(i).as_ref().into())
                    .or_default()
                    .push(id);
                0
            },
        );
        for (partition, ids) in ranked_ids {
            let rows = match self.members.get_mut(&partition) {
                Some(rows) => rows,
                None => {
                    self.index_bytes += partition.len() + KEY_OVERHEAD;
                    self.members.entry(partition.clone()).or_default()
                }
            };
            let before = rows.len();
            rows.retain(|id| !replaced.contains(id));
            rows.extend(ids);
            self.index_bytes = (self.index_bytes + 8 * rows.len()).saturating_sub(8 * before);
            self.changed.insert(partition);
        }
        Ok(())
    }

    /// Numbers what arrived, emits the partitions that changed, and (with a TTL, every eighth
    /// of it) drops the partitions no row reached for the TTL: their rows leave as deletes,
    /// which change snapshots record.
    fn checkpoint_at(&mut self, now: i64) -> Result<Vec<RecordBatch>> {
        self.rank(now)?;
        let out = self.emit_changed()?;
        if let Some(ttl) = self.ttl {
            if now.saturating_sub(self.expired_at) >= change_times::micros(ttl) / 8 {
                self.expired_at = now;
                self.expire(now, ttl)?;
            }
        }
        Ok(out)
    }

    fn expire(&mut self, now: i64, ttl: Duration) -> Result<()> {
        let since = now.saturating_sub(change_times::micros(ttl));
        let old: Vec<Box<[u8]>> = self
            .touched_at
            .iter()
            .filter(|(_, t)| **t <= since)
            .map(|(p, _)| p.clone())
            .collect();
        let mut ids = Vec::new();
        for partition in old {
            self.touched_at.remove(&partition);
            if let Some(rows) = self.members.remove(&partition) {
                self.index_bytes = self
                    .index_bytes
                    .saturating_sub(partition.len() + KEY_OVERHEAD + 8 * rows.len());
                ids.extend(rows.iter().map(|&(b, i)| (b as usize, i as usize)));
            }
        }
        let width = self.table.schema().fields().len() - 1;
        ids.sort_unstable();
        for chunk in ids.chunks(RANK_ROWS) {
            let mut columns = self.table.gather(0..width, chunk)?;
            columns.push(Arc::new(StringArray::from(vec!["delete"; chunk.len()])));
            let deletes = RecordBatch::try_new(self.table.schema().clone(), columns)?;
            let changes = self.table.prepare(&deletes)?;
            self.table.apply(changes, |_, _| {}, |_, _| 0);
        }
        Ok(())
    }

    /// The kept rows of the partitions that changed, as output rows.
    fn emit_changed(&mut self) -> Result<Vec<RecordBatch>> {
        if let Some(waiting) = self.unemitted.take() {
            // The first rows that changed are the rows waiting: emitted, they are let go.
            self.changed.clear();
            self.unemitted = Some(self.empty_table()?);
            // A batch at a time, each let go as its rows leave: not all held twice.
            let columns = self.row_and_number();
            return waiting
                .into_current()
                .map(|rows| {
                    let rows = rows?.project(&columns)?;
                    let columns = rows.columns().to_vec();
                    Ok(RecordBatch::try_new(self.output_schema.clone(), columns)?)
                })
                .collect();
        }
        let mut ids = Vec::new();
        for partition in self.changed.drain() {
            if let Some(rows) = self.members.get(&partition) {
                ids.extend(rows.iter().map(|&(b, i)| (b as usize, i as usize)));
            }
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // In the order they are stored: a spilled batch is read for one chunk, not for each.
        ids.sort_unstable();
        let columns = self.row_and_number();
        let mut out = Vec::new();
        for chunk in ids.chunks(RANK_ROWS) {
            let columns = self.table.gather_columns(&columns, chunk)?;
            out.push(RecordBatch::try_new(self.output_schema.clone(), columns)?);
        }
        Ok(out)
    }

    /// The table's columns of an output row: the input's, then the row's number.
    fn row_and_number(&self) -> Vec<usize> {
        let number = self.width + self.partition.len();
        (0..self.width).chain([number]).collect()
    }

    fn memory_bytes(&self) -> usize {
        let unemitted = self.unemitted.as_ref().map_or(0, KeyedRows::memory_bytes);
        self.table.memory_bytes() + unemitted + self.unspillable_bytes()
    }

    /// Bytes held that cannot spill: the partitions' index and the rows not numbered yet.
    fn unspillable_bytes(&self) -> usize {
        let fresh: usize = self
            .fresh
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum();
        self.index_bytes + fresh
    }
}

/// Of the `width` input columns, those the numbering reads: the partition's, those the order
/// refers to, and any the numbering plan holds never NULL.
fn numbering_columns(
    order: &LexOrdering,
    partition: &[usize],
    input_schema: &Schema,
    width: usize,
) -> Vec<bool> {
    let mut read = vec![false; width];
    let order = order.iter().map(|e| &e.expr);
    for column in order.flat_map(datafusion::physical_expr::utils::collect_columns) {
        if let Some(r) = read.get_mut(column.index()) {
            *r = true;
        }
    }
    for &p in partition {
        read[p] = true;
    }
    for (r, field) in read.iter_mut().zip(input_schema.fields()) {
        *r |= !field.is_nullable();
    }
    read
}

/// `numbered` (rows numbered from their read columns only) with its input columns taken whole
/// from the `candidates` at `positions` (counted across the candidates in order).
fn with_whole_rows(
    numbered: &RecordBatch,
    positions: &UInt64Array,
    candidates: &[RecordBatch],
) -> Result<RecordBatch> {
    let mut starts = Vec::with_capacity(candidates.len());
    let mut start = 0;
    for batch in candidates {
        starts.push(start);
        start += batch.num_rows() as u64;
    }
    let rows: Vec<(usize, usize)> = positions
        .values()
        .iter()
        .map(|&p| {
            let batch = starts.partition_point(|&s| s <= p) - 1;
            (batch, (p - starts[batch]) as usize)
        })
        .collect();
    let candidates: Vec<&RecordBatch> = candidates.iter().collect();
    let whole = interleave_record_batch(&candidates, &rows)?;
    let mut columns = whole.columns().to_vec();
    columns.truncate(whole.num_columns() - 1);
    columns.extend(numbered.columns()[columns.len()..].iter().cloned());
    Ok(RecordBatch::try_new(numbered.schema(), columns)?)
}

/// `rows` with the input columns not `kept` (those past them stay) NULL.
fn without_unread_columns(rows: &RecordBatch, kept: &[bool]) -> Result<RecordBatch> {
    let columns = rows
        .columns()
        .iter()
        .enumerate()
        .map(|(c, column)| match kept.get(c) {
            Some(false) => new_null_array(column.data_type(), rows.num_rows()),
            _ => column.clone(),
        })
        .collect();
    Ok(RecordBatch::try_new(rows.schema(), columns)?)
}

impl Operator for TopN {
    fn kind(&self) -> &'static str {
        "top_n"
    }

    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        if self.fresh_rows >= RANK_ROWS {
            // The rows waiting were committed: numbering them changes no output.
            self.rank(now_micros())?;
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
        self.checkpoint_at(now_micros())
    }

    fn state_schema(&self) -> Option<SchemaRef> {
        Some(
            self.timed
                .clone()
                .unwrap_or_else(|| self.table.schema().clone()),
        )
    }

    /// All of it: the kept rows; the changes: the rows kept since (each replacing its
    /// partition's row of the same number). Taken after [`Operator::on_checkpoint`] numbered
    /// every row that arrived.
    fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
        let waiting = self.unemitted.as_ref().map_or(0, KeyedRows::live_rows);
        if !self.fresh.is_empty() || waiting > 0 {
            return Err(Error::Internal(
                "a ROW_NUMBER's snapshot with rows not numbered or not emitted".into(),
            ));
        }
        let chunks = self.table.snapshot(full)?;
        let retouched = std::mem::take(&mut self.retouched);
        let Some(timed) = &self.timed else {
            return Ok(chunks);
        };
        // With a TTL, when each partition was last reached follows.
        let mut out = change_times::untimed(chunks, timed);
        let partitions: Vec<&Box<[u8]>> = match full {
            true => self.touched_at.keys().collect(),
            false => retouched.iter().collect(),
        };
        if !partitions.is_empty() {
            let parser = self.partition_values.parser();
            let keys = self
                .partition_values
                .convert_rows(partitions.iter().map(|p| parser.parse(p)))?;
            let times = partitions
                .iter()
                .map(|p| self.touched_at.get(*p).copied())
                .collect();
            let rows = change_times::time_rows(timed, self.width, keys, times)?;
            out.push(StateChunk::Batch(rows));
        }
        Ok(out)
    }

    fn restore(&mut self, state: Vec<StateChunk>, _watermark: Option<i64>) -> Result<()> {
        let mut restored_times: HashMap<Box<[u8]>, i64> = HashMap::new();
        let partition_columns = self.width..self.width + self.partition.len();
        for chunk in &state {
            // A batch at a time: a spilled chunk may not fit in memory whole.
            for batch in chunk.batches()? {
                let mut batch = batch?;
                if self.timed.is_some() {
                    let (rows, times) = change_times::split(&batch, self.table.schema())?;
                    let keys = self
                        .partition_values
                        .convert_columns(&times.columns()[partition_columns.clone()])?;
                    for (k, t) in keys.iter().zip(change_times::times(&times)) {
                        restored_times.insert(k.as_ref().into(), t);
                    }
                    batch = rows;
                }
                let changes = self.table.prepare(&batch)?;
                self.table.apply(changes, |_, _| {}, |_, _| 0);
                self.fit_memory()?;
            }
        }
        // Each partition's rows, from the rows left current.
        let ids: Vec<(usize, usize)> = self
            .table
            .live_ids()
            .map(|(b, i)| (b as usize, i as usize))
            .collect();
        let now = now_micros();
        for chunk in ids.chunks(RANK_ROWS) {
            let values = self.table.gather(partition_columns.clone(), chunk)?;
            let partitions = self.partition_values.convert_columns(&values)?;
            for (row, &(b, i)) in partitions.iter().zip(chunk) {
                let rows = self.members.entry(row.as_ref().into()).or_default();
                rows.push((b as u32, i as u32));
            }
        }
        if self.ttl.is_some() {
            // A partition with no time checkpointed counts from the restore.
            self.touched_at = self
                .members
                .keys()
                .map(|p| (p.clone(), restored_times.get(p).copied().unwrap_or(now)))
                .collect();
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
        const WHAT: &str = "a ROW_NUMBER (the keys of the first rows of each partition)";
        if let Some(unemitted) = &mut self.unemitted {
            // Nothing refers to its rows by place: what moved needs no telling.
            unemitted.compact_if_due()?;
        }
        let other = self.unspillable_bytes();
        let (Some(budget), Some(unemitted)) = (self.budget.as_mut(), self.unemitted.as_mut())
        else {
            return self.table.fit(self.budget.as_mut(), other, WHAT);
        };
        // The rows waiting to be emitted spill first: they are read back once, in order.
        let mut both = [&mut self.table, unemitted];
        budget.fit_spilling(
            &mut both,
            |[table, waiting]| table.memory_bytes() + waiting.memory_bytes() + other,
            |[table, waiting], memory, all| match all {
                false => {
                    waiting.spill_step(memory, true)?;
                    table.spill_step(memory, false)
                }
                true => table.spill_step(memory, true),
            },
            WHAT,
        )
    }

    fn spilled_bytes(&self) -> u64 {
        let unemitted = self.unemitted.as_ref().map_or(0, KeyedRows::spilled_bytes);
        self.table.spilled_bytes() + unemitted
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

mod numbering;
#[cfg(test)]
mod tests;
