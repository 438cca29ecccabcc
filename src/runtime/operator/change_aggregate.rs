//! A GROUP BY over a change stream (a CDC source seen as a table): the table's current rows
//! are the state, kept by primary key, and at each checkpoint every group a change touched is
//! aggregated again by DataFusion over its current rows and emitted whole (an upsert), or as a
//! delete when its last row left it. Nothing is retracted from an accumulator, so every
//! aggregate works (min, max and count(DISTINCT ...) included).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray, StringArray};
use arrow::compute::{concat_batches, filter_record_batch, interleave};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_plan::ExecutionPlan;

use super::spill::{load, StateChunk};
use super::stateless::OP;
use super::two_stage::TwoStage;
use super::Operator;
use crate::error::{Error, Result};
use crate::runtime::memory::{Budget, StateMemory};

/// Bytes of bookkeeping per indexed key beyond the key itself.
const KEY_OVERHEAD: usize = 48;
/// Rows per batch of the state after a compaction, and per batch a recomputation aggregates.
const CHUNK_ROWS: usize = 65_536;
/// Dead rows are compacted away once there are at least this many, and more than live ones.
const COMPACT_AT: usize = 4_096;

/// Where a row is kept: batch, row.
type RowId = (u32, u32);

/// The current rows of one group.
struct Group {
    /// The group's values in Arrow's row format.
    key: Box<[u8]>,
    /// Its rows; some may have died since it was last aggregated.
    rows: Vec<RowId>,
    live: usize,
}

/// A batch of changes checked and converted, waiting for its commit.
struct Prepared {
    batch: RecordBatch,
    keys: Rows,
    groups: Rows,
    deletes: Vec<bool>,
}

/// Per-group aggregation of a table kept up to date by its change stream.
pub struct ChangeAggregate {
    stages: TwoStage,
    /// The aggregate's input columns lead each row; the primary key follows; `_op` is last.
    columns: usize,
    schema: SchemaRef,
    /// The aggregate's input columns of `schema`.
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    keys: RowConverter,
    group_values: RowConverter,
    /// Rows as they arrived, dead ones included until a compaction.
    batches: Vec<RecordBatch>,
    live: Vec<Vec<bool>>,
    live_rows: usize,
    dead_rows: usize,
    /// Each current row by primary key, with its group.
    rows: HashMap<Box<[u8]>, (RowId, u32)>,
    group_ids: HashMap<Box<[u8]>, u32>,
    groups: Vec<Group>,
    /// Group ids free for reuse (their groups emptied and emitted).
    free: Vec<u32>,
    /// Groups touched since the last emission.
    changed: BTreeSet<u32>,
    pending: Vec<Prepared>,
    unsnapshotted: Vec<RecordBatch>,
    index_bytes: usize,
    budget: Option<Budget>,
}

impl ChangeAggregate {
    /// An operator from the Final aggregate of a planned GROUP BY (whose input is the Partial
    /// one), over rows of `schema`: the aggregate's input columns, then the primary key
    /// columns, then `_op`.
    pub fn new(final_: Arc<dyn ExecutionPlan>, schema: SchemaRef) -> Result<Self> {
        let stages = TwoStage::new(final_.clone())?;
        let fields = schema.fields();
        let columns = stages.input_schema().fields().len();
        if fields.len() < columns + 2 || fields[fields.len() - 1].name() != OP {
            return Err(Error::Internal(format!(
                "a GROUP BY over a change stream needs its rows' primary key and {OP} after its {columns} columns"
            )));
        }
        let sort_fields = |fields: &[Arc<Field>]| -> Vec<SortField> {
            fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect()
        };
        let keys = RowConverter::new(sort_fields(&fields[columns..fields.len() - 1]))?;
        let group_values = RowConverter::new(sort_fields(
            &stages.state_schema().fields()[..stages.groups()],
        ))?;
        let mut out: Vec<Field> = final_
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        out.push(Field::new(OP, arrow::datatypes::DataType::Utf8, true));
        Ok(ChangeAggregate {
            stages,
            columns,
            input_schema: Arc::new(schema.project(&(0..columns).collect::<Vec<_>>())?),
            schema,
            output_schema: Arc::new(Schema::new(out)),
            keys,
            group_values,
            batches: Vec::new(),
            live: Vec::new(),
            live_rows: 0,
            dead_rows: 0,
            rows: HashMap::new(),
            group_ids: HashMap::new(),
            groups: Vec::new(),
            free: Vec::new(),
            changed: BTreeSet::new(),
            pending: Vec::new(),
            unsnapshotted: Vec::new(),
            index_bytes: 0,
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
        Ok(batch.project(&(0..self.columns).collect::<Vec<_>>())?)
    }

    /// Converts a batch of changes: its rows' keys, groups and kinds.
    fn prepare(&self, batch: RecordBatch) -> Result<Prepared> {
        let n = batch.num_rows();
        let op = batch.column(batch.num_columns() - 1);
        let op = op
            .as_string_opt::<i32>()
            .ok_or_else(|| Error::Internal(format!("{OP} is not text: {}", op.data_type())))?;
        let deletes = (0..n)
            .map(|i| op.is_valid(i) && op.value(i) == "delete")
            .collect();
        let keys = self
            .keys
            .convert_columns(&batch.columns()[self.columns..batch.num_columns() - 1])?;
        let input = self.input_of(&batch)?;
        let values = self
            .stages
            .group_exprs()
            .iter()
            .map(|e| e.evaluate(&input).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
        let groups = self.group_values.convert_columns(&values)?;
        Ok(Prepared {
            batch,
            keys,
            groups,
            deletes,
        })
    }

    /// Applies a batch of changes, in row order: each row replaces its key's current row, or,
    /// for a delete, removes it.
    fn apply(&mut self, p: Prepared) {
        let b = self.batches.len() as u32;
        let n = p.batch.num_rows();
        self.live.push(vec![false; n]);
        self.batches.push(p.batch);
        self.dead_rows += n;
        for i in 0..n {
            let key = p.keys.row(i);
            if let Some(((ob, oi), g)) = self.rows.remove(key.as_ref()) {
                self.live[ob as usize][oi as usize] = false;
                self.live_rows -= 1;
                self.dead_rows += 1;
                self.groups[g as usize].live -= 1;
                self.changed.insert(g);
                self.index_bytes = self
                    .index_bytes
                    .saturating_sub(key.as_ref().len() + KEY_OVERHEAD);
            }
            if p.deletes[i] {
                continue;
            }
            let g = self.group_id(p.groups.row(i).as_ref());
            let id = (b, i as u32);
            self.live[b as usize][i] = true;
            self.live_rows += 1;
            self.dead_rows -= 1;
            self.rows.insert(key.as_ref().into(), (id, g));
            self.index_bytes += key.as_ref().len() + KEY_OVERHEAD + 8;
            let group = &mut self.groups[g as usize];
            group.rows.push(id);
            group.live += 1;
            self.changed.insert(g);
        }
    }

    fn group_id(&mut self, key: &[u8]) -> u32 {
        if let Some(&g) = self.group_ids.get(key) {
            return g;
        }
        let group = Group {
            key: key.into(),
            rows: Vec::new(),
            live: 0,
        };
        self.index_bytes += 2 * (key.len() + KEY_OVERHEAD);
        let g = match self.free.pop() {
            Some(g) => {
                self.groups[g as usize] = group;
                g
            }
            None => {
                self.groups.push(group);
                (self.groups.len() - 1) as u32
            }
        };
        self.group_ids.insert(key.into(), g);
        g
    }

    /// The aggregate of every changed group over its current rows (`_op` upsert), and a delete
    /// for every changed group left without rows.
    fn emit_changed(&mut self) -> Result<Vec<RecordBatch>> {
        let mut rows = Vec::new();
        let mut emptied = Vec::new();
        for g in std::mem::take(&mut self.changed) {
            let live = &self.live;
            let group = &mut self.groups[g as usize];
            group.rows.retain(|&(b, i)| live[b as usize][i as usize]);
            if group.rows.is_empty() {
                emptied.push(g);
            } else {
                rows.extend(group.rows.iter().map(|&(b, i)| (b as usize, i as usize)));
            }
        }
        let mut states = Vec::new();
        for chunk in rows.chunks(CHUNK_ROWS) {
            let columns = (0..self.columns)
                .map(|c| {
                    let arrays: Vec<&dyn Array> =
                        self.batches.iter().map(|b| b.column(c).as_ref()).collect();
                    interleave(&arrays, chunk)
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
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
                .map(|&g| self.groups[g as usize].key.as_ref())
                .collect();
            let mut columns = self
                .group_values
                .convert_rows(keys.iter().map(|k| parser.parse(k)))?;
            let n = emptied.len();
            for f in
                &self.output_schema.fields()[columns.len()..self.output_schema.fields().len() - 1]
            {
                columns.push(new_null_array(f.data_type(), n));
            }
            columns.push(Arc::new(StringArray::from(vec!["delete"; n])));
            out.push(RecordBatch::try_new(self.output_schema.clone(), columns)?);
            for g in emptied {
                let key = std::mem::take(&mut self.groups[g as usize].key);
                self.index_bytes = self
                    .index_bytes
                    .saturating_sub(2 * (key.len() + KEY_OVERHEAD));
                self.group_ids.remove(&key);
                self.free.push(g);
            }
        }
        Ok(out)
    }

    /// Rewrites the state without its dead rows.
    fn compact(&mut self) -> Result<()> {
        let mut kept = Vec::new();
        let mut moved: Vec<Vec<u32>> = Vec::with_capacity(self.batches.len());
        let mut next = 0u32;
        for (batch, live) in self.batches.iter().zip(&self.live) {
            let mut to = vec![u32::MAX; live.len()];
            for (i, &l) in live.iter().enumerate() {
                if l {
                    to[i] = next;
                    next += 1;
                }
            }
            moved.push(to);
            let mask = BooleanArray::from(live.clone());
            if mask.true_count() > 0 {
                kept.push(filter_record_batch(batch, &mask)?);
            }
        }
        let all = concat_batches(&self.schema, &kept)?;
        let chunk = CHUNK_ROWS as u32;
        let place = |(b, i): RowId| {
            let n = moved[b as usize][i as usize];
            (n / chunk, n % chunk)
        };
        for (id, _) in self.rows.values_mut() {
            *id = place(*id);
        }
        for group in &mut self.groups {
            let live = &self.live;
            group.rows.retain(|&(b, i)| live[b as usize][i as usize]);
            for id in &mut group.rows {
                *id = place(*id);
            }
        }
        self.batches = (0..all.num_rows())
            .step_by(CHUNK_ROWS)
            .map(|at| all.slice(at, CHUNK_ROWS.min(all.num_rows() - at)))
            .collect();
        self.live = self
            .batches
            .iter()
            .map(|b| vec![true; b.num_rows()])
            .collect();
        self.dead_rows = 0;
        Ok(())
    }

    fn memory_bytes(&self) -> usize {
        let rows: usize = self
            .batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum();
        rows + self.index_bytes
    }
}

impl Operator for ChangeAggregate {
    fn kind(&self) -> &'static str {
        "change_aggregate"
    }

    /// Checks the batch's changes against the aggregate (a row it cannot aggregate fails
    /// here, in its own batch) and stages them.
    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let prepared = self.prepare(batch)?;
        let upserts = BooleanArray::from(prepared.deletes.iter().map(|d| !d).collect::<Vec<_>>());
        if upserts.true_count() > 0 {
            let input = self.input_of(&prepared.batch)?;
            self.stages
                .partial(filter_record_batch(&input, &upserts)?)?;
        }
        self.pending.push(prepared);
        Ok(Vec::new())
    }

    fn commit_batch(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            self.unsnapshotted.push(p.batch.clone());
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
        Some(self.schema.clone())
    }

    /// All of it: the current rows; the changes: the change rows applied since.
    fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
        let changes = std::mem::take(&mut self.unsnapshotted);
        if !full {
            return Ok(super::spill::in_memory(changes));
        }
        let mut current = Vec::new();
        for (batch, live) in self.batches.iter().zip(&self.live) {
            let mask = BooleanArray::from(live.clone());
            if mask.true_count() > 0 {
                current.push(filter_record_batch(batch, &mask)?);
            }
        }
        Ok(super::spill::in_memory(current))
    }

    fn restore(&mut self, state: Vec<StateChunk>, _watermark: Option<i64>) -> Result<()> {
        for chunk in &state {
            for batch in load(std::slice::from_ref(chunk))? {
                let prepared = self.prepare(batch)?;
                self.apply(prepared);
            }
            self.fit_memory()?;
        }
        // What was restored was emitted before the checkpoint.
        self.changed.clear();
        Ok(())
    }

    fn fit_memory(&mut self) -> Result<()> {
        if self.dead_rows >= COMPACT_AT && self.dead_rows > self.live_rows {
            self.compact()?;
        }
        let bytes = self.memory_bytes();
        match &mut self.budget {
            Some(budget) => budget.hold(
                bytes,
                "a GROUP BY over a change stream (the current rows of its table)",
            ),
            None => Ok(()),
        }
    }

    fn state_rows(&self) -> usize {
        self.live_rows
    }

    fn state_bytes(&self) -> usize {
        self.memory_bytes()
    }
}

#[cfg(test)]
mod tests;
