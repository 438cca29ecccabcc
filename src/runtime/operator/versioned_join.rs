//! A stream joined with the version of a table valid at each stream row's event time
//! (`FOR SYSTEM_TIME AS OF`): the table's change stream is kept as versions per key, each valid
//! from its change's time until the next one's; a stream row waits until the watermark passes
//! its time (then every version up to it has arrived), and joins the version valid then.
//! Versions that no row still to come can see leave as the watermark passes them. DataFusion's
//! planned join does the joining, each row numbered so that it meets only its own version.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, Int64Array, StringArray, UInt64Array,
};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;

use super::key_index::join_keys;
use super::keyed_rows::{Changes, KeyedRows, RowId, KEY_OVERHEAD};
use super::spill::{map_chunks, StateChunk};
use super::stateless::OP;
use super::temporal_join::TemporalJoinSpec;
use super::{run_plan_inputs, Operator};
use crate::error::{Error, Result};
use crate::runtime::event_time::micros;
use crate::runtime::memory::{Budget, StateMemory};

/// The stream row's number, after the stream side's columns, in the planned join.
pub const PROBE: &str = "__probe";
/// The number of the stream row a version is picked for, after the table side's columns.
pub const PROBE_TABLE: &str = "__probe_table";
/// Whether a version is a delete (the key has no row from then on), before `_op`.
const GONE: &str = "__gone";
/// A waiting stream row's time (UTC microseconds), after its columns.
const AT: &str = "__at";
/// Stream rows joined per run of the planned join.
const ROWS_PER_JOIN: usize = 65_536;

/// What the operator is built from, as the SQL front end plans it.
#[derive(Debug, Clone)]
pub struct VersionedJoinSpec {
    /// The join as with the table's current rows, but `join` planned over placeholders with
    /// [`PROBE`] and [`PROBE_TABLE`] after their columns (and joined on them), and the table's
    /// changes carrying their version time between the primary key and `_op`.
    pub base: TemporalJoinSpec,
    /// A stream row's time, over the stream side's columns.
    pub time: Arc<dyn PhysicalExpr>,
}

/// One version of a key's row.
#[derive(Debug, Clone, Copy)]
struct Version {
    /// When it took effect (UTC microseconds; `i64::MIN` for rows of the initial snapshot).
    from: i64,
    /// Its row among the versions.
    id: RowId,
    /// A delete: no row from `from` on.
    gone: bool,
}

/// Changes to the table as versions, waiting for their commit.
struct Prepared {
    changes: Changes,
    keys: Rows,
    from: Vec<i64>,
    gone: Vec<bool>,
}

/// A stream joined with the versions of a table.
pub struct VersionedJoin {
    spec: VersionedJoinSpec,
    key_values: RowConverter,
    /// Every version kept, keyed by primary key and version time.
    versions: KeyedRows,
    /// Each key's versions, oldest first.
    by_key: HashMap<Box<[u8]>, Vec<Version>, ahash::RandomState>,
    index_bytes: usize,
    /// Keys with versions a passing watermark may drop (several, or a delete).
    several: HashSet<Box<[u8]>, ahash::RandomState>,
    pending: Vec<Prepared>,
    /// Stream rows (their columns, then [`AT`]) of the batch being processed.
    staged: Vec<RecordBatch>,
    /// Committed stream rows waiting for the watermark.
    waiting: Vec<RecordBatch>,
    waiting_rows: usize,
    waiting_bytes: usize,
    /// The earliest time among the waiting rows.
    earliest: i64,
    /// Rows that started waiting since the last snapshot.
    new_waiting: Vec<RecordBatch>,
    /// Schemas: the stream's rows waiting, the stream side and the table side in the planned
    /// join, the versions, the state.
    waiting_schema: SchemaRef,
    stream_probe_schema: SchemaRef,
    table_probe_schema: SchemaRef,
    state_schema: SchemaRef,
    task: Arc<TaskContext>,
    budget: Option<Budget>,
}

impl VersionedJoin {
    /// The operator for a planned join.
    pub fn new(spec: VersionedJoinSpec) -> Result<Self> {
        let base = &spec.base;
        let columns = base.table_schema.fields().len();
        let changes: Vec<Field> = base
            .change_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        if changes.len() < columns + 3 {
            return Err(Error::Internal(
                "a join with a change stream's versions needs its rows' primary key, version time and _op".into(),
            ));
        }
        let width = changes.len();
        let mut fields = changes[..width - 1].to_vec();
        fields.push(Field::new(GONE, DataType::Boolean, true));
        fields.push(changes[width - 1].clone());
        let versions = KeyedRows::new(Arc::new(Schema::new(fields)), columns..width - 1)?;
        let key_values = RowConverter::new(
            base.table_keys
                .iter()
                .map(|k| Ok(SortField::new(k.data_type(&base.table_schema)?)))
                .collect::<Result<Vec<_>>>()?,
        )?;
        let with = |schema: &SchemaRef, name: &str, t: DataType| -> SchemaRef {
            let mut fields: Vec<Field> =
                schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(name, t, false));
            Arc::new(Schema::new(fields))
        };
        let waiting_schema = with(&base.stream_schema, AT, DataType::Int64);
        let stream_probe_schema = with(&base.stream_schema, PROBE, DataType::UInt64);
        let table_probe_schema = with(&base.table_schema, PROBE_TABLE, DataType::UInt64);
        let state_schema =
            Arc::new(Schema::new(
                std::iter::once(Field::new(AT, DataType::Int64, true))
                    .chain(base.stream_schema.fields().iter().map(|f| {
                        Field::new(format!("0.{}", f.name()), f.data_type().clone(), true)
                    }))
                    .chain(versions.schema().fields().iter().map(|f| {
                        Field::new(format!("1.{}", f.name()), f.data_type().clone(), true)
                    }))
                    .collect::<Vec<_>>(),
            ));
        Ok(VersionedJoin {
            spec,
            key_values,
            versions,
            by_key: HashMap::default(),
            index_bytes: 0,
            several: HashSet::default(),
            pending: Vec::new(),
            staged: Vec::new(),
            waiting: Vec::new(),
            waiting_rows: 0,
            waiting_bytes: 0,
            earliest: i64::MAX,
            new_waiting: Vec::new(),
            waiting_schema,
            stream_probe_schema,
            table_probe_schema,
            state_schema,
            task: Arc::new(TaskContext::default()),
            budget: None,
        })
    }

    /// The same, its state accounted in `memory`.
    pub fn with_memory(mut self, memory: &Arc<StateMemory>) -> Self {
        self.budget = Some(Budget::new(memory, "versioned_join"));
        self
    }

    /// The join keys of `batch`'s rows, by `exprs`.
    fn keys_of(&self, exprs: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> Result<Rows> {
        join_keys(&self.key_values, exprs, batch)
    }

    /// Changes as they arrive (the table side's columns, primary key, version time, `_op`) as
    /// versions: a delete is a version too, marked gone.
    fn prepare_changes(&self, batch: &RecordBatch) -> Result<Prepared> {
        let width = batch.num_columns();
        let op = batch.column(width - 1);
        let op = op
            .as_string_opt::<i32>()
            .ok_or_else(|| Error::Internal(format!("{OP} is not text: {}", op.data_type())))?;
        let gone: Vec<bool> = (0..batch.num_rows())
            .map(|i| op.is_valid(i) && op.value(i) == "delete")
            .collect();
        let mut columns = batch.columns()[..width - 1].to_vec();
        columns.push(Arc::new(BooleanArray::from(gone.clone())));
        columns.push(Arc::new(StringArray::from(vec![
            "upsert";
            batch.num_rows()
        ])));
        self.prepare_versions(&RecordBatch::try_new(
            self.versions.schema().clone(),
            columns,
        )?)
    }

    /// Versions as kept (restored ones, or changes made versions).
    fn prepare_versions(&self, batch: &RecordBatch) -> Result<Prepared> {
        let changes = self.versions.prepare(batch)?;
        let keys = self.keys_of(&self.spec.base.table_keys, &changes.batch)?;
        let width = changes.batch.num_columns();
        let from = micros(changes.batch.column(width - 3))?
            .iter()
            .map(|t| t.unwrap_or(i64::MIN))
            .collect();
        let gone = changes.batch.column(width - 2).as_boolean();
        let gone = (0..gone.len())
            .map(|i| gone.is_valid(i) && gone.value(i))
            .collect();
        Ok(Prepared {
            changes,
            keys,
            from,
            gone,
        })
    }

    fn apply(&mut self, p: Prepared) {
        let Prepared {
            changes,
            keys,
            from,
            gone,
        } = p;
        // Restored deletes: versions dropped by a watermark before.
        let op = changes.batch.column(changes.batch.num_columns() - 1);
        let deleted: Vec<usize> = match op.as_string_opt::<i32>() {
            Some(op) => (0..op.len())
                .filter(|&i| op.is_valid(i) && op.value(i) == "delete")
                .collect(),
            None => Vec::new(),
        };
        let Self {
            versions,
            by_key,
            index_bytes,
            several,
            ..
        } = self;
        for &i in &deleted {
            let key = keys.row(i);
            if let Some(list) = by_key.get_mut(key.as_ref()) {
                list.retain(|v| v.from != from[i]);
                if list.is_empty() {
                    by_key.remove(key.as_ref());
                    *index_bytes = index_bytes.saturating_sub(key.as_ref().len() + KEY_OVERHEAD);
                }
            }
        }
        versions.apply(
            changes,
            |_, _| {},
            |i, id| {
                let key = keys.row(i);
                let version = Version {
                    from: from[i],
                    id,
                    gone: gone[i],
                };
                let list = match by_key.get_mut(key.as_ref()) {
                    Some(list) => list,
                    None => {
                        *index_bytes += key.as_ref().len() + KEY_OVERHEAD;
                        by_key.entry(key.as_ref().into()).or_default()
                    }
                };
                // A change at the same time as an earlier one replaces it.
                let at = list.partition_point(|v| v.from <= version.from);
                match at.checked_sub(1).filter(|&p| list[p].from == version.from) {
                    Some(p) => list[p] = version,
                    None => {
                        list.insert(at, version);
                        *index_bytes += std::mem::size_of::<Version>();
                    }
                }
                if list.len() > 1 || version.gone {
                    several.insert(key.as_ref().into());
                }
                0
            },
        );
    }

    /// Joins stream rows (the stream side's columns) each with its key's version valid at its
    /// time in `at` (`i64::MAX`: the latest).
    fn join(&self, rows: &RecordBatch, at: &[i64]) -> Result<Vec<RecordBatch>> {
        let keys = self.keys_of(&self.spec.base.stream_keys, rows)?;
        let mut found: Vec<(usize, usize)> = Vec::new();
        let mut probes: Vec<u64> = Vec::new();
        for (r, key) in keys.iter().enumerate() {
            let Some(list) = self.by_key.get(key.as_ref()) else {
                continue;
            };
            let valid = list.partition_point(|v| v.from <= at[r]);
            if let Some(v) = valid.checked_sub(1).map(|p| list[p]).filter(|v| !v.gone) {
                found.push((v.id.0 as usize, v.id.1 as usize));
                probes.push(r as u64);
            }
        }
        let base = &self.spec.base;
        let columns = base.table_schema.fields().len();
        let mut table = self.versions.gather(0..columns, &found)?;
        table.push(Arc::new(UInt64Array::from(probes)));
        let table = RecordBatch::try_new(self.table_probe_schema.clone(), table)?;
        let mut stream = rows.columns().to_vec();
        stream.push(Arc::new(UInt64Array::from_iter_values(
            0..rows.num_rows() as u64,
        )));
        let stream = RecordBatch::try_new(self.stream_probe_schema.clone(), stream)?;
        let sides = match base.table_port {
            0 => vec![
                (self.table_probe_schema.clone(), vec![table]),
                (self.stream_probe_schema.clone(), vec![stream]),
            ],
            _ => vec![
                (self.stream_probe_schema.clone(), vec![stream]),
                (self.table_probe_schema.clone(), vec![table]),
            ],
        };
        run_plan_inputs(&base.join, sides, &self.task)
    }

    /// Joins the waiting rows whose time the watermark passed, and lets them go.
    fn join_due(&mut self, watermark: i64) -> Result<Vec<RecordBatch>> {
        if self.earliest >= watermark {
            return Ok(Vec::new());
        }
        let mut due = Vec::new();
        let mut kept = Vec::new();
        for batch in std::mem::take(&mut self.waiting) {
            let at = batch
                .column(batch.num_columns() - 1)
                .as_primitive::<Int64Type>();
            let passed: BooleanArray = at.iter().map(|t| Some(t < Some(watermark))).collect();
            match passed.true_count() {
                0 => kept.push(batch),
                n if n == batch.num_rows() => due.push(batch),
                _ => {
                    due.push(filter_record_batch(&batch, &passed)?);
                    let rest = arrow::compute::not(&passed)?;
                    kept.push(filter_record_batch(&batch, &rest)?);
                }
            }
        }
        self.set_waiting(kept);
        let due = concat_batches(&self.waiting_schema, &due)?;
        let stream_columns = self.spec.base.stream_schema.fields().len();
        let mut out = Vec::new();
        for start in (0..due.num_rows()).step_by(ROWS_PER_JOIN) {
            let part = due.slice(start, ROWS_PER_JOIN.min(due.num_rows() - start));
            let rows = RecordBatch::try_new(
                self.spec.base.stream_schema.clone(),
                part.columns()[..stream_columns].to_vec(),
            )?;
            let at = part.column(stream_columns).as_primitive::<Int64Type>();
            out.extend(self.join(&rows, at.values())?);
        }
        Ok(out)
    }

    fn set_waiting(&mut self, waiting: Vec<RecordBatch>) {
        self.waiting_rows = waiting.iter().map(RecordBatch::num_rows).sum();
        self.waiting_bytes = waiting.iter().map(RecordBatch::get_array_memory_size).sum();
        self.earliest = waiting
            .iter()
            .filter_map(|b| {
                arrow::compute::min(b.column(b.num_columns() - 1).as_primitive::<Int64Type>())
            })
            .min()
            .unwrap_or(i64::MAX);
        self.waiting = waiting;
    }

    fn add_waiting(&mut self, rows: RecordBatch) {
        if rows.num_rows() == 0 {
            return;
        }
        let at = rows
            .column(rows.num_columns() - 1)
            .as_primitive::<Int64Type>();
        if let Some(min) = arrow::compute::min(at) {
            self.earliest = self.earliest.min(min);
        }
        self.waiting_rows += rows.num_rows();
        self.waiting_bytes += rows.get_array_memory_size();
        self.waiting.push(rows);
    }

    /// Drops the versions no row still to come can see: rows to come are at or after the
    /// watermark, so of a key's versions from before it only the latest is still valid for
    /// them (and none, when that is a delete).
    fn expire(&mut self, watermark: i64) -> Result<()> {
        let mut dropped: Vec<(usize, usize)> = Vec::new();
        let by_key = &mut self.by_key;
        let index_bytes = &mut self.index_bytes;
        self.several.retain(|key| {
            let Some(list) = by_key.get_mut(key) else {
                return false;
            };
            let valid = list.partition_point(|v| v.from <= watermark);
            let mut drop = valid.saturating_sub(1);
            if list.get(drop).is_some_and(|v| v.gone && drop < valid) {
                drop += 1;
            }
            for v in list.drain(..drop) {
                dropped.push((v.id.0 as usize, v.id.1 as usize));
                *index_bytes = index_bytes.saturating_sub(std::mem::size_of::<Version>());
            }
            if list.is_empty() {
                by_key.remove(key);
                *index_bytes = index_bytes.saturating_sub(key.len() + KEY_OVERHEAD);
                return false;
            }
            list.len() > 1 || list[0].gone
        });
        if dropped.is_empty() {
            return Ok(());
        }
        // Deletes of the dropped versions, so that the state files drop them too.
        let width = self.versions.schema().fields().len();
        let mut columns = self.versions.gather(0..width - 1, &dropped)?;
        columns.push(Arc::new(StringArray::from(vec!["delete"; dropped.len()])));
        let deletes = RecordBatch::try_new(self.versions.schema().clone(), columns)?;
        let changes = self.versions.prepare(&deletes)?;
        self.versions.apply(changes, |_, _| {}, |_, _| 0);
        Ok(())
    }

    /// `batch` (of `schema`, a part of the state's columns from `first`) as state rows, NULL
    /// elsewhere.
    fn as_state(
        &self,
        batch: &RecordBatch,
        first: usize,
        at: Option<&ArrayRef>,
    ) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let fields = self.state_schema.fields();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.len());
        columns.push(match at {
            Some(at) => at.clone(),
            None => new_null_array(&DataType::Int64, n),
        });
        for (i, f) in fields.iter().enumerate().skip(1) {
            match i.checked_sub(first).filter(|j| *j < batch.num_columns()) {
                Some(j) => columns.push(batch.column(j).clone()),
                None => columns.push(new_null_array(f.data_type(), n)),
            }
        }
        Ok(RecordBatch::try_new(self.state_schema.clone(), columns)?)
    }

    /// A waiting batch as state rows.
    fn waiting_state(&self, rows: &RecordBatch) -> Result<RecordBatch> {
        let last = rows.num_columns() - 1;
        let columns = RecordBatch::try_new(
            self.spec.base.stream_schema.clone(),
            rows.columns()[..last].to_vec(),
        )?;
        self.as_state(&columns, 1, Some(rows.column(last)))
    }

    fn memory_bytes(&self) -> usize {
        self.versions.memory_bytes() + self.index_bytes + self.waiting_bytes
    }
}

impl Operator for VersionedJoin {
    fn kind(&self) -> &'static str {
        "versioned_join"
    }

    /// A change to the table is staged until its batch commits; a stream row waits for the
    /// watermark to pass its time, unless it has none: then it joins the latest versions now.
    fn process(&mut self, input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        if input == self.spec.base.table_port {
            let prepared = self.prepare_changes(&batch)?;
            self.pending.push(prepared);
            return Ok(Vec::new());
        }
        let n = batch.num_rows();
        let rows = RecordBatch::try_new(
            self.spec.base.stream_schema.clone(),
            batch.columns().to_vec(),
        )?;
        let time = self.spec.time.evaluate(&rows)?.into_array(n)?;
        let time = micros(&time)?;
        let mut out = Vec::new();
        if time.null_count() > 0 {
            let untimed = arrow::compute::is_null(&time)?;
            let now = filter_record_batch(&rows, &untimed)?;
            out = self.join(&now, &vec![i64::MAX; now.num_rows()])?;
        }
        let timed = arrow::compute::is_not_null(&time)?;
        let mut columns = rows.columns().to_vec();
        columns.push(Arc::new(Int64Array::from(
            time.iter().map(|t| t.unwrap_or(0)).collect::<Vec<_>>(),
        )));
        let waiting = RecordBatch::try_new(self.waiting_schema.clone(), columns)?;
        let waiting = match time.null_count() {
            0 => waiting,
            _ => filter_record_batch(&waiting, &timed)?,
        };
        if waiting.num_rows() > 0 {
            self.staged.push(waiting);
        }
        Ok(out)
    }

    fn commit_batch(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            self.apply(p);
        }
        for rows in std::mem::take(&mut self.staged) {
            self.new_waiting.push(rows.clone());
            self.add_waiting(rows);
        }
    }

    fn abort_batch(&mut self) {
        self.pending.clear();
        self.staged.clear();
    }

    fn on_watermark(&mut self, watermark: i64) -> Result<Vec<RecordBatch>> {
        let out = self.join_due(watermark)?;
        self.expire(watermark)?;
        Ok(out)
    }

    fn state_schema(&self) -> Option<SchemaRef> {
        Some(self.state_schema.clone())
    }

    /// Waiting rows and versions; a row the watermark let go stays in the files it was written
    /// to, and a restore behind that watermark leaves it out.
    fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
        let rows = match full {
            true => {
                self.new_waiting.clear();
                self.waiting.clone()
            }
            false => std::mem::take(&mut self.new_waiting),
        };
        let mut out = Vec::new();
        for b in &rows {
            out.push(StateChunk::Batch(self.waiting_state(b)?));
        }
        let first = 1 + self.spec.base.stream_schema.fields().len();
        let chunks = self.versions.snapshot(full)?;
        let memory = self.budget.as_ref().map(|b| b.memory().as_ref());
        out.extend(map_chunks(chunks, &self.state_schema, memory, |b| {
            self.as_state(b, first, None)
        })?);
        Ok(out)
    }

    fn restore(&mut self, state: Vec<StateChunk>, watermark: Option<i64>) -> Result<()> {
        let stream_columns = self.spec.base.stream_schema.fields().len();
        let first = 1 + stream_columns;
        for chunk in &state {
            // A batch at a time: a spilled chunk may not fit in memory whole.
            for batch in chunk.batches()? {
                let batch = batch?;
                let at = batch.column(0).as_primitive::<Int64Type>();
                let waiting: BooleanArray = at
                    .iter()
                    .map(|t| Some(t.is_some_and(|t| watermark.is_none_or(|w| t >= w))))
                    .collect();
                if waiting.true_count() > 0 {
                    let rows = filter_record_batch(&batch, &waiting)?;
                    let mut columns = rows.columns()[1..first].to_vec();
                    columns.push(rows.column(0).clone());
                    self.add_waiting(RecordBatch::try_new(self.waiting_schema.clone(), columns)?);
                }
                let versions = arrow::compute::is_null(at)?;
                if versions.true_count() > 0 {
                    let rows = filter_record_batch(&batch, &versions)?;
                    let rows = RecordBatch::try_new(
                        self.versions.schema().clone(),
                        rows.columns()[first..].to_vec(),
                    )?;
                    let prepared = self.prepare_versions(&rows)?;
                    self.apply(prepared);
                }
                self.fit_memory()?;
            }
        }
        self.versions.restored();
        Ok(())
    }

    fn fit_memory(&mut self) -> Result<()> {
        if let Some(moved) = self.versions.compact_if_due()? {
            for list in self.by_key.values_mut() {
                for v in list.iter_mut() {
                    v.id = moved.get(v.id).ok_or_else(|| {
                        Error::Internal("a kept version was not kept by the compaction".into())
                    })?;
                }
            }
        }
        let other = self.memory_bytes() - self.versions.memory_bytes();
        self.versions.fit(
            self.budget.as_mut(),
            other,
            "a join's versioned table (the keys of its versions) and the stream rows waiting for the watermark",
        )
    }

    fn spilled_bytes(&self) -> u64 {
        self.versions.spilled_bytes()
    }

    fn state_rows(&self) -> usize {
        self.versions.live_rows() + self.waiting_rows
    }

    fn state_bytes(&self) -> usize {
        self.memory_bytes()
    }
}

#[cfg(test)]
mod tests;
