//! A join of two tables, each kept by its change stream: the join's rows are kept up to date as
//! either table changes. Each side's current rows are kept by primary key, indexed by join
//! key; a change marks its join keys (the old row's and the new one's) and keeps their rows as
//! they were. At each checkpoint DataFusion's planned join runs over the marked keys' rows as
//! they were and as they are: a joined row (named by both sides' primary keys) that is gone
//! is emitted as a delete, a new or changed one as an upsert.
//!
//! A side may also be a stream that only appends (an outer join of two streams with no bound
//! on their event times, into a sink that applies rows by key): each row gets an id of its own
//! as its key, and leaves the state, silently, once it has been kept `state_ttl` (of wall-clock
//! time, which the checkpoints keep: a restart does not restart it).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, Int64Array, StringArray, UInt64Array,
};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt64Type};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;

use super::key_index::{join_keys, KeyIndex};
use super::keyed_rows::{Changes, KeyedRows};
use super::spill::{map_chunks, StateChunk};
use super::{now_micros, run_plan_inputs, Operator};
use crate::error::Result;
use crate::runtime::memory::{Budget, StateMemory};

/// The state's last column: on a row of `__side` 2 + s, when side s's rows up to the id in its
/// key column were kept (UTC microseconds); NULL on the sides' rows.
const KEPT_AT: &str = "__kept_at";

/// What the operator is built from, as the SQL front end plans it.
#[derive(Debug, Clone)]
pub struct ChangeJoinSpec {
    /// DataFusion's join over a placeholder for each side, left first: the side's columns,
    /// then its primary key (renamed, so that it names the side's rows in the join's output).
    pub join: Arc<dyn ExecutionPlan>,
    /// Each side's join key expressions, over its columns.
    pub keys: [Vec<Arc<dyn PhysicalExpr>>; 2],
    /// Each side's columns as the join reads them.
    pub schemas: [SchemaRef; 2],
    /// Each side's rows as they arrive: its columns, its primary key, `_op`.
    pub change_schemas: [SchemaRef; 2],
    /// The rows out: the join's columns, then `_op`.
    pub output: SchemaRef,
    /// Sides that are streams of rows only appended: their rows arrive without key or `_op`,
    /// and get an id (`__rid`) as their key.
    pub appends: [bool; 2],
    /// Whether the rows out carry both sides' keys (which name them) before `_op`, for a GROUP
    /// BY over the join that keeps them as a table.
    pub names_out: bool,
}

/// One side: its current rows by primary key, and where they are by join key.
struct Side {
    rows: KeyedRows,
    /// Rows by join key.
    by_key: KeyIndex,
    /// Changes of the batch being processed, with their rows' join keys.
    pending: Vec<(Changes, Rows)>,
    /// The side's columns.
    columns: usize,
    /// For a side that only appends: the next row id, and when the rows up to each id were
    /// kept (processing time, UTC microseconds), oldest first.
    next_rid: u64,
    kept: VecDeque<(i64, u64)>,
    /// Entries of `kept` not yet snapshotted.
    kept_unsnapshotted: Vec<(i64, u64)>,
    /// Ids below this one have left.
    kept_from: u64,
    rid_keys: RowConverter,
}

impl Side {
    fn new(change_schema: &SchemaRef, columns: usize) -> Result<Self> {
        let width = change_schema.fields().len();
        Ok(Side {
            rows: KeyedRows::new(change_schema.clone(), columns..width - 1)?,
            by_key: KeyIndex::default(),
            pending: Vec::new(),
            columns,
            next_rid: 0,
            kept: VecDeque::new(),
            kept_unsnapshotted: Vec::new(),
            kept_from: 0,
            rid_keys: RowConverter::new(vec![SortField::new(DataType::UInt64)])?,
        })
    }

    /// Rows of a side that only appends, with their ids and `_op`.
    fn with_ids(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows() as u64;
        let first = self.next_rid;
        self.next_rid += n;
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(UInt64Array::from_iter_values(first..first + n)));
        columns.push(Arc::new(StringArray::from(vec!["insert"; n as usize])));
        Ok(RecordBatch::try_new(self.rows.schema().clone(), columns)?)
    }

    /// Drops the rows of a side that only appends kept at `before` (UTC microseconds) or
    /// earlier, as deletes of the state's rows that mark nothing.
    fn expire(&mut self, before: i64) -> Result<()> {
        let mut through = None;
        while self.kept.front().is_some_and(|(at, _)| *at <= before) {
            through = self.kept.pop_front().map(|(_, rid)| rid);
        }
        let Some(through) = through.filter(|t| *t >= self.kept_from) else {
            return Ok(());
        };
        let rids = UInt64Array::from_iter_values(self.kept_from..=through);
        self.kept_from = through + 1;
        let keys = self
            .rid_keys
            .convert_columns(&[Arc::new(rids) as ArrayRef])?;
        let ids: Vec<(usize, usize)> = keys
            .iter()
            .filter_map(|k| self.rows.current(k.as_ref()))
            .map(|(b, i)| (b as usize, i as usize))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let width = self.rows.schema().fields().len();
        let mut columns = self.rows.gather(0..width - 1, &ids)?;
        columns.push(Arc::new(StringArray::from(vec!["delete"; ids.len()])));
        let deletes = RecordBatch::try_new(self.rows.schema().clone(), columns)?;
        let changes = self.rows.prepare(&deletes)?;
        self.rows.apply(changes, |_, _| {}, |_, _| 0);
        Ok(())
    }

    /// The rows of join key `key` now.
    fn ids_of(&mut self, key: &[u8]) -> Vec<(usize, usize)> {
        self.by_key.live(key, &self.rows)
    }

    /// Rows at `ids` as the join reads them: the side's columns and primary key.
    fn gather(&self, ids: &[(usize, usize)]) -> Result<Vec<ArrayRef>> {
        let width = self.rows.schema().fields().len();
        self.rows.gather(0..width - 1, ids)
    }
}

/// A join of two tables kept by their change streams, emitting its changed rows.
pub struct ChangeJoin {
    spec: ChangeJoinSpec,
    key_values: RowConverter,
    sides: [Side; 2],
    /// Join keys changed since the last checkpoint.
    dirty: HashSet<Box<[u8]>, ahash::RandomState>,
    /// Their rows on each side as they were at the last checkpoint.
    before: [Vec<RecordBatch>; 2],
    /// Placeholder schemas: each side's columns and primary key.
    placeholders: [SchemaRef; 2],
    /// Converts the joined rows' primary keys (which name them), and whole joined rows.
    names: RowConverter,
    name_columns: Vec<usize>,
    values: RowConverter,
    state_schema: SchemaRef,
    ttl: Option<std::time::Duration>,
    task: Arc<TaskContext>,
    budget: Option<Budget>,
}

impl ChangeJoin {
    /// The operator for a planned join.
    pub fn new(spec: ChangeJoinSpec) -> Result<Self> {
        let key_values = RowConverter::new(
            spec.keys[0]
                .iter()
                .map(|k| Ok(SortField::new(k.data_type(&spec.schemas[0])?)))
                .collect::<Result<Vec<_>>>()?,
        )?;
        let sides = [
            Side::new(&spec.change_schemas[0], spec.schemas[0].fields().len())?,
            Side::new(&spec.change_schemas[1], spec.schemas[1].fields().len())?,
        ];
        let placeholder = |s: usize| -> SchemaRef {
            let fields = sides[s].rows.schema().fields();
            Arc::new(Schema::new(fields[..fields.len() - 1].to_vec()))
        };
        let placeholders = [placeholder(0), placeholder(1)];
        let joined = spec.join.schema();
        let [l, r] = [0, 1].map(|s| {
            let width = placeholders[s].fields().len();
            sides[s].columns..width
        });
        let left_width = placeholders[0].fields().len();
        let name_columns: Vec<usize> = l.chain(r.map(|c| left_width + c)).collect();
        let names = RowConverter::new(
            name_columns
                .iter()
                .map(|&c| SortField::new(joined.field(c).data_type().clone()))
                .collect(),
        )?;
        let values = RowConverter::new(
            joined
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let state_schema = Arc::new(Schema::new(
            std::iter::once(Field::new("__side", DataType::UInt8, false))
                .chain((0..2).flat_map(|s| {
                    sides[s].rows.schema().fields().iter().map(move |f| {
                        Field::new(format!("{s}.{}", f.name()), f.data_type().clone(), true)
                    })
                }))
                .chain(std::iter::once(Field::new(KEPT_AT, DataType::Int64, true)))
                .collect::<Vec<_>>(),
        ));
        Ok(ChangeJoin {
            spec,
            key_values,
            sides,
            dirty: HashSet::default(),
            before: [Vec::new(), Vec::new()],
            placeholders,
            names,
            name_columns,
            values,
            state_schema,
            ttl: None,
            task: Arc::new(TaskContext::default()),
            budget: None,
        })
    }

    /// The same, a side that only appends keeping a row `ttl` of processing time at most.
    pub fn with_ttl(mut self, ttl: Option<std::time::Duration>) -> Self {
        self.ttl = ttl;
        self
    }

    /// The same, its state accounted in `memory`.
    pub fn with_memory(mut self, memory: &Arc<StateMemory>) -> Self {
        self.budget = Some(Budget::new(memory, "change_join"));
        self
    }

    /// The join keys of `batch`'s rows (side `side`'s columns first).
    fn keys_of(&self, side: usize, batch: &RecordBatch) -> Result<Rows> {
        join_keys(&self.key_values, &self.spec.keys[side], batch)
    }

    /// State rows tagged `tag` of side `s`'s `columns` (its rows' schema), NULL in the other
    /// side's, with `kept_at` last.
    fn state_rows_of(
        &self,
        tag: u8,
        s: usize,
        columns: &[ArrayRef],
        kept_at: ArrayRef,
    ) -> Result<RecordBatch> {
        let n = kept_at.len();
        let mut out: Vec<ArrayRef> = vec![Arc::new(arrow::array::UInt8Array::from(vec![tag; n]))];
        for t in 0..2 {
            for (c, f) in self.sides[t].rows.schema().fields().iter().enumerate() {
                out.push(match t == s {
                    true => columns[c].clone(),
                    false => new_null_array(f.data_type(), n),
                });
            }
        }
        out.push(kept_at);
        Ok(RecordBatch::try_new(self.state_schema.clone(), out)?)
    }

    /// Marks `key` changed, keeping its rows on both sides as they are (the first time in an
    /// epoch: as they were at the last checkpoint).
    fn mark(&mut self, key: &[u8]) -> Result<()> {
        if self.dirty.contains(key) {
            return Ok(());
        }
        self.dirty.insert(key.into());
        for s in 0..2 {
            let ids = self.sides[s].ids_of(key);
            if !ids.is_empty() {
                let columns = self.sides[s].gather(&ids)?;
                self.before[s].push(RecordBatch::try_new(self.placeholders[s].clone(), columns)?);
            }
        }
        Ok(())
    }

    /// Marks the join keys of the rows side `side`'s changes replace and of the rows they
    /// bring (`new_keys`). Marking a key whose changes are then undone costs a look at it.
    fn mark_changed(&mut self, side: usize, changes: &Changes, new_keys: &Rows) -> Result<()> {
        let replaced: Vec<(usize, usize)> = (0..changes.batch.num_rows())
            .filter_map(|i| self.sides[side].rows.current(changes.key(i).as_ref()))
            .map(|(b, i)| (b as usize, i as usize))
            .collect();
        if !replaced.is_empty() {
            let columns = self.sides[side].gather(&replaced)?;
            let old = RecordBatch::try_new(self.placeholders[side].clone(), columns)?;
            let old_keys = self.keys_of(side, &old)?;
            for k in old_keys.iter() {
                self.mark(k.as_ref())?;
            }
        }
        for i in 0..changes.batch.num_rows() {
            if !changes.is_delete(i) {
                self.mark(new_keys.row(i).as_ref())?;
            }
        }
        Ok(())
    }

    /// Applies side `side`'s changes, indexing the new rows by their join keys.
    fn apply(&mut self, side: usize, changes: Changes, new_keys: Rows) {
        let Side { rows, by_key, .. } = &mut self.sides[side];
        rows.apply(
            changes,
            |_, _| {},
            |i, id| {
                by_key.insert(new_keys.row(i).as_ref(), id);
                0
            },
        );
    }

    /// The join over rows of each side (placeholder schemas).
    fn join(&self, sides: [Vec<RecordBatch>; 2]) -> Result<RecordBatch> {
        let [l, r] = sides;
        let out = run_plan_inputs(
            &self.spec.join,
            vec![
                (self.placeholders[0].clone(), l),
                (self.placeholders[1].clone(), r),
            ],
            &self.task,
        )?;
        Ok(concat_batches(&self.spec.join.schema(), &out)?)
    }

    /// `rows` of the join (its columns and both primary keys) as output rows of kind `op`.
    fn output_rows(&self, rows: &RecordBatch, op: &str) -> Result<RecordBatch> {
        let named: HashSet<usize> = self.name_columns.iter().copied().collect();
        let mut columns: Vec<ArrayRef> = (0..rows.num_columns())
            .filter(|c| !named.contains(c))
            .map(|c| rows.column(c).clone())
            .collect();
        if self.spec.names_out {
            columns.extend(self.name_columns.iter().map(|&c| rows.column(c).clone()));
        }
        columns.push(Arc::new(StringArray::from(vec![op; rows.num_rows()])));
        Ok(RecordBatch::try_new(self.spec.output.clone(), columns)?)
    }

    /// The joined rows of the keys changed since the last checkpoint: gone ones as deletes,
    /// new or changed ones as upserts.
    fn emit_changed(&mut self) -> Result<Vec<RecordBatch>> {
        if self.dirty.is_empty() {
            return Ok(Vec::new());
        }
        let before = std::mem::take(&mut self.before);
        let before = self.join(before)?;
        let dirty: Vec<Box<[u8]>> = std::mem::take(&mut self.dirty).into_iter().collect();
        let mut now: [Vec<RecordBatch>; 2] = [Vec::new(), Vec::new()];
        for (s, now) in now.iter_mut().enumerate() {
            let ids: Vec<(usize, usize)> =
                dirty.iter().flat_map(|k| self.sides[s].ids_of(k)).collect();
            let columns = self.sides[s].gather(&ids)?;
            now.push(RecordBatch::try_new(self.placeholders[s].clone(), columns)?);
        }
        let after = self.join(now)?;
        let name_of = |rows: &RecordBatch| -> Result<Rows> {
            let columns: Vec<ArrayRef> = self
                .name_columns
                .iter()
                .map(|&c| rows.column(c).clone())
                .collect();
            Ok(self.names.convert_columns(&columns)?)
        };
        let after_names = name_of(&after)?;
        let still: HashSet<&[u8]> = after_names.iter().map(|r| r.data()).collect();
        let before_names = name_of(&before)?;
        let gone: BooleanArray = before_names
            .iter()
            .map(|r| Some(!still.contains(r.as_ref())))
            .collect();
        let before_values = self.values.convert_columns(before.columns())?;
        let unchanged: HashSet<&[u8]> = before_values.iter().map(|r| r.data()).collect();
        let after_values = self.values.convert_columns(after.columns())?;
        let changed: BooleanArray = after_values
            .iter()
            .map(|r| Some(!unchanged.contains(r.as_ref())))
            .collect();
        // Deletes first: a sink keyed more coarsely keeps the last change per key.
        let mut out = Vec::new();
        let deletes = filter_record_batch(&before, &gone)?;
        if deletes.num_rows() > 0 {
            out.push(self.output_rows(&deletes, "delete")?);
        }
        let upserts = filter_record_batch(&after, &changed)?;
        if upserts.num_rows() > 0 {
            out.push(self.output_rows(&upserts, "upsert")?);
        }
        Ok(out)
    }

    fn memory_bytes(&self) -> usize {
        let before: usize = self
            .before
            .iter()
            .flatten()
            .map(RecordBatch::get_array_memory_size)
            .sum();
        self.sides
            .iter()
            .map(|s| s.rows.memory_bytes() + s.by_key.bytes())
            .sum::<usize>()
            + before
    }
}

impl Operator for ChangeJoin {
    fn kind(&self) -> &'static str {
        "change_join"
    }

    /// Changes mark their join keys and are staged until their batch commits.
    fn process(&mut self, input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let batch = match self.spec.appends[input] {
            true => self.sides[input].with_ids(&batch)?,
            false => batch,
        };
        let changes = self.sides[input].rows.prepare(&batch)?;
        let keys = self.keys_of(input, &changes.batch)?;
        self.mark_changed(input, &changes, &keys)?;
        self.sides[input].pending.push((changes, keys));
        Ok(Vec::new())
    }

    fn commit_batch(&mut self) {
        for side in 0..2 {
            let pending = std::mem::take(&mut self.sides[side].pending);
            if self.spec.appends[side] && self.ttl.is_some() && !pending.is_empty() {
                let kept = (now_micros(), self.sides[side].next_rid - 1);
                self.sides[side].kept.push_back(kept);
                self.sides[side].kept_unsnapshotted.push(kept);
            }
            for (changes, keys) in pending {
                self.apply(side, changes, keys);
            }
        }
    }

    fn abort_batch(&mut self) {
        for side in &mut self.sides {
            side.pending.clear();
        }
    }

    /// The joined rows of the changed keys: gone ones as deletes, new or changed ones as
    /// upserts. Then rows kept past the TTL leave, emitting nothing.
    fn on_checkpoint(&mut self) -> Result<Vec<RecordBatch>> {
        let out = self.emit_changed()?;
        if let Some(ttl) = self.ttl {
            let before = now_micros().saturating_sub(ttl.as_micros() as i64);
            for side in &mut self.sides {
                side.expire(before)?;
            }
        }
        Ok(out)
    }

    fn state_schema(&self) -> Option<SchemaRef> {
        Some(self.state_schema.clone())
    }

    /// Both sides' rows (or changes), each side's in its columns, NULL in the other's; then,
    /// for a side that only appends, when its rows were kept.
    fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
        let mut out = Vec::new();
        for s in 0..2 {
            let chunks = self.sides[s].rows.snapshot(full)?;
            let memory = self.budget.as_ref().map(|b| b.memory().as_ref());
            out.extend(map_chunks(chunks, &self.state_schema, memory, |batch| {
                let kept_at = new_null_array(&DataType::Int64, batch.num_rows());
                self.state_rows_of(s as u8, s, batch.columns(), kept_at)
            })?);
            let kept = std::mem::take(&mut self.sides[s].kept_unsnapshotted);
            let kept: Vec<(i64, u64)> = match full {
                true => self.sides[s].kept.iter().copied().collect(),
                false => kept,
            };
            if !kept.is_empty() {
                // The side's key column holds the last id; its other columns are NULL.
                let side = &self.sides[s];
                let columns: Vec<ArrayRef> = side
                    .rows
                    .schema()
                    .fields()
                    .iter()
                    .enumerate()
                    .map(|(c, f)| match c == side.columns {
                        true => Arc::new(UInt64Array::from_iter_values(kept.iter().map(|k| k.1)))
                            as ArrayRef,
                        false => new_null_array(f.data_type(), kept.len()),
                    })
                    .collect();
                let at = Arc::new(Int64Array::from_iter_values(kept.iter().map(|k| k.0)));
                out.push(StateChunk::Batch(self.state_rows_of(
                    2 + s as u8,
                    s,
                    &columns,
                    at,
                )?));
            }
        }
        Ok(out)
    }

    fn restore(&mut self, state: Vec<StateChunk>, _watermark: Option<i64>) -> Result<()> {
        let widths = [0, 1].map(|s| self.sides[s].rows.schema().fields().len());
        let mut kept: [Vec<(i64, u64)>; 2] = [Vec::new(), Vec::new()];
        let mut first_rid: [Option<u64>; 2] = [None, None];
        for chunk in &state {
            // A batch at a time: a spilled chunk may not fit in memory whole.
            for batch in chunk.batches()? {
                let batch = batch?;
                let side = batch
                    .column(0)
                    .as_primitive::<arrow::datatypes::UInt8Type>();
                let at = batch.columns().last().expect("a kept-at column");
                let at = at.as_primitive::<Int64Type>();
                for (i, tag) in side.iter().enumerate() {
                    let Some(s @ 0..=1) = tag.and_then(|t| t.checked_sub(2)).map(usize::from)
                    else {
                        continue;
                    };
                    let key = 1 + if s == 0 { 0 } else { widths[0] } + self.sides[s].columns;
                    let rid = batch.column(key).as_primitive::<UInt64Type>().value(i);
                    kept[s].push((at.value(i), rid));
                }
                for s in 0..2 {
                    let mask: BooleanArray =
                        side.iter().map(|v| Some(v == Some(s as u8))).collect();
                    if mask.true_count() == 0 {
                        continue;
                    }
                    let rows = filter_record_batch(&batch, &mask)?;
                    let first = 1 + if s == 0 { 0 } else { widths[0] };
                    let rows = RecordBatch::try_new(
                        self.sides[s].rows.schema().clone(),
                        rows.columns()[first..first + widths[s]].to_vec(),
                    )?;
                    if self.spec.appends[s] {
                        let rids = rows
                            .column(self.sides[s].columns)
                            .as_primitive::<UInt64Type>();
                        if let Some(max) = arrow::compute::max(rids) {
                            self.sides[s].next_rid = self.sides[s].next_rid.max(max + 1);
                        }
                        if let Some(min) = arrow::compute::min(rids) {
                            first_rid[s] = Some(first_rid[s].map_or(min, |m| m.min(min)));
                        }
                    }
                    let changes = self.sides[s].rows.prepare(&rows)?;
                    let keys = self.keys_of(s, &changes.batch)?;
                    self.apply(s, changes, keys);
                }
                self.fit_memory()?;
            }
        }
        // Rows of a side that only appends are kept from when they were kept before; those
        // no entry covers (none was checkpointed) from now.
        let now = now_micros();
        for (s, side) in self.sides.iter_mut().enumerate() {
            side.rows.restored();
            if !self.spec.appends[s] || self.ttl.is_none() {
                continue;
            }
            kept[s].sort_unstable_by_key(|k| k.1);
            side.kept = kept[s].iter().copied().collect();
            side.kept_from = first_rid[s].unwrap_or(side.next_rid);
            if side.next_rid > 0 && side.kept.back().is_none_or(|k| k.1 < side.next_rid - 1) {
                side.kept.push_back((now, side.next_rid - 1));
            }
        }
        Ok(())
    }

    fn fit_memory(&mut self) -> Result<()> {
        for side in &mut self.sides {
            if let Some(moved) = side.rows.compact_if_due()? {
                side.by_key.remap(&moved);
            }
        }
        let tables =
            |sides: &[Side]| -> usize { sides.iter().map(|s| s.rows.memory_bytes()).sum() };
        let other = self.memory_bytes() - tables(&self.sides);
        let Some(budget) = self.budget.as_mut() else {
            return Ok(());
        };
        budget.fit_spilling(
            &mut self.sides,
            |sides| other + tables(sides),
            |sides, memory, all| {
                sides
                    .iter_mut()
                    .try_for_each(|side| side.rows.spill_step(memory, all))
            },
            "a join of two change streams (the keys of both tables' current rows)",
        )
    }

    fn spilled_bytes(&self) -> u64 {
        self.sides.iter().map(|s| s.rows.spilled_bytes()).sum()
    }

    fn state_rows(&self) -> usize {
        self.sides.iter().map(|s| s.rows.live_rows()).sum()
    }

    fn state_bytes(&self) -> usize {
        self.memory_bytes()
    }
}

#[cfg(test)]
mod tests;
