//! Routes a change stream to a GROUP BY over it run as several instances, each holding the rows
//! of its groups: keeps the group of each primary key's current row, so that a change moving a
//! row to another group also deletes it from the old one (whose instance holds it), and adds the
//! group's values to every change as the columns its instance is chosen by.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, StringArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;

use super::keyed_rows::KEY_OVERHEAD;
use super::parallel::Keying;
use super::spill::StateChunk;
use super::stateless::OP;
use super::two_stage::TwoStage;
use super::Operator;
use crate::error::{Error, Result};
use crate::runtime::memory::{Budget, StateMemory};

/// Name of the column holding group column `i` in the routed rows.
fn group_column(i: usize) -> String {
    format!("__group_{i}")
}

/// Rows per state batch of a snapshot.
const CHUNK_ROWS: usize = 65_536;

/// Name of the state column saying whether the key has a current row.
const PRESENT: &str = "__present";

/// The rows a GROUP BY over a change stream takes from [`ChangeGroups`]: the aggregate's input
/// columns, its group values, the primary key, `_op`; from rows of `schema` (the aggregate's
/// input columns, the primary key, `_op`) and the Final aggregate of the GROUP BY.
pub fn routed_schema(final_: &Arc<dyn ExecutionPlan>, schema: &SchemaRef) -> Result<SchemaRef> {
    let stages = TwoStage::new(final_.clone())?;
    let columns = stages.input_schema().fields().len();
    let groups = &stages.state_schema().fields()[..stages.groups()];
    let fields = schema.fields();
    if fields.len() < columns + 2 {
        return Err(Error::Internal(format!(
            "a GROUP BY over a change stream needs its rows' primary key and {OP} after its {columns} columns"
        )));
    }
    let routed: Vec<Field> = fields[..columns]
        .iter()
        .map(|f| f.as_ref().clone())
        .chain(
            groups
                .iter()
                .enumerate()
                .map(|(i, f)| Field::new(group_column(i), f.data_type().clone(), true)),
        )
        .chain(fields[columns..].iter().map(|f| f.as_ref().clone()))
        .collect();
    Ok(Arc::new(Schema::new(routed)))
}

/// A change of the batch being routed: which input row it comes from, the group it goes to,
/// and whether it deletes the key's row from that group.
struct Routed {
    row: u32,
    group: u32,
    delete: bool,
}

/// The group of each primary key's current row, routing changes to their groups' instances.
pub struct ChangeGroups {
    /// Its input rows' schema.
    schema: SchemaRef,
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    input_schema: SchemaRef,
    columns: usize,
    key_columns: Range<usize>,
    keys: RowConverter,
    group_values: RowConverter,
    output_schema: SchemaRef,
    state_schema: SchemaRef,
    /// Each group's values in Arrow's row format, by id, and the id of each.
    groups: Vec<Box<[u8]>>,
    group_ids: HashMap<Box<[u8]>, u32, ahash::RandomState>,
    /// The group of each key's current row.
    current: HashMap<Box<[u8]>, u32, ahash::RandomState>,
    /// Changes of the batches processed since the last commit, in order (`None`: deleted).
    pending: HashMap<Box<[u8]>, Option<u32>, ahash::RandomState>,
    pending_order: Vec<Box<[u8]>>,
    /// Changes committed since the last snapshot, in order.
    unsnapshotted: Vec<(Box<[u8]>, Option<u32>)>,
    bytes: usize,
    budget: Option<Budget>,
}

impl ChangeGroups {
    /// An operator for the GROUP BY whose Final aggregate is `final_` (over its Partial one),
    /// taking rows of `schema`: the aggregate's input columns, the primary key, `_op`.
    pub fn new(final_: Arc<dyn ExecutionPlan>, schema: SchemaRef) -> Result<Self> {
        let output_schema = routed_schema(&final_, &schema)?;
        let stages = TwoStage::new(final_)?;
        let columns = stages.input_schema().fields().len();
        let width = schema.fields().len();
        let key_columns = columns..width - 1;
        let fields = schema.fields();
        let groups = &stages.state_schema().fields()[..stages.groups()];
        let sort_fields = |fields: &[Arc<Field>]| -> Vec<SortField> {
            fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect()
        };
        let state_schema = Arc::new(Schema::new(
            fields[key_columns.clone()]
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .chain(
                    groups
                        .iter()
                        .enumerate()
                        .map(|(i, f)| Field::new(group_column(i), f.data_type().clone(), true)),
                )
                .chain([Field::new(PRESENT, DataType::Boolean, false)])
                .collect::<Vec<_>>(),
        ));
        Ok(ChangeGroups {
            schema: schema.clone(),
            group_exprs: stages.group_exprs().to_vec(),
            input_schema: Arc::new(schema.project(&(0..columns).collect::<Vec<_>>())?),
            columns,
            keys: RowConverter::new(sort_fields(&fields[key_columns.clone()]))?,
            key_columns,
            group_values: RowConverter::new(sort_fields(groups))?,
            output_schema,
            state_schema,
            groups: Vec::new(),
            group_ids: HashMap::default(),
            current: HashMap::default(),
            pending: HashMap::default(),
            pending_order: Vec::new(),
            unsnapshotted: Vec::new(),
            bytes: 0,
            budget: None,
        })
    }

    /// The same, its state accounted in `memory`.
    pub fn with_memory(mut self, memory: &Arc<StateMemory>) -> Self {
        self.budget = Some(Budget::new(memory, "change_groups"));
        self
    }

    /// The id of a group's values, given one if new.
    fn intern(&mut self, group: &[u8]) -> u32 {
        if let Some(&id) = self.group_ids.get(group) {
            return id;
        }
        let id = self.groups.len() as u32;
        self.groups.push(group.into());
        self.group_ids.insert(group.into(), id);
        self.bytes += 2 * (group.len() + KEY_OVERHEAD);
        id
    }

    /// The group of `key`'s current row, counting changes not yet committed.
    fn group_of(&self, key: &[u8]) -> Option<u32> {
        match self.pending.get(key) {
            Some(group) => *group,
            None => self.current.get(key).copied(),
        }
    }

    /// Records a change, committed or not.
    fn stage(&mut self, key: &[u8], group: Option<u32>) {
        if self.pending.insert(key.into(), group).is_none() {
            self.pending_order.push(key.into());
        }
    }

    /// Makes `key`'s current row be in `group` (none: deleted).
    fn set(&mut self, key: Box<[u8]>, group: Option<u32>) {
        let len = key.len();
        let before = match group {
            Some(g) => self.current.insert(key.clone(), g),
            None => self.current.remove(&key),
        };
        match (before.is_some(), group.is_some()) {
            (false, true) => self.bytes += len + KEY_OVERHEAD,
            (true, false) => self.bytes -= len + KEY_OVERHEAD,
            _ => {}
        }
        self.unsnapshotted.push((key, group));
    }

    /// The values of the groups `ids`, as columns.
    fn group_columns(&self, ids: impl Iterator<Item = u32>) -> Result<Vec<ArrayRef>> {
        let parser = self.group_values.parser();
        Ok(self.group_values.convert_rows(
            ids.map(|g| parser.parse(&self.groups[g as usize]))
                .collect::<Vec<_>>(),
        )?)
    }
}

impl Operator for ChangeGroups {
    fn kind(&self) -> &'static str {
        "change_groups"
    }

    /// Each change with its group's values; a change moving a key's row to another group, or
    /// deleting it, first deletes it from the group it was in.
    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let n = batch.num_rows();
        let input = RecordBatch::try_new(
            self.input_schema.clone(),
            batch.columns()[..self.columns].to_vec(),
        )?;
        let values = self
            .group_exprs
            .iter()
            .map(|e| e.evaluate(&input).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
        let groups = self.group_values.convert_columns(&values)?;
        let keys = self
            .keys
            .convert_columns(&batch.columns()[self.key_columns.clone()])?;
        let op = batch.column(batch.num_columns() - 1);
        let op = op
            .as_string_opt::<i32>()
            .ok_or_else(|| Error::Internal(format!("{OP} is not text: {}", op.data_type())))?;
        let mut routed = Vec::with_capacity(n);
        for i in 0..n {
            let key = keys.row(i);
            let before = self.group_of(key.as_ref());
            let delete = op.is_valid(i) && op.value(i) == "delete";
            let after = (!delete).then(|| self.intern(groups.row(i).as_ref()));
            if let Some(old) = before.filter(|&old| Some(old) != after) {
                routed.push(Routed {
                    row: i as u32,
                    group: old,
                    delete: true,
                });
            }
            if let Some(new) = after {
                routed.push(Routed {
                    row: i as u32,
                    group: new,
                    delete: false,
                });
            }
            if before.is_some() || after.is_some() {
                self.stage(key.as_ref(), after);
            }
        }
        if routed.is_empty() {
            return Ok(Vec::new());
        }
        let rows = UInt32Array::from_iter_values(routed.iter().map(|r| r.row));
        let mut columns = Vec::with_capacity(self.output_schema.fields().len());
        for c in &batch.columns()[..self.columns] {
            columns.push(take(c, &rows, None)?);
        }
        columns.extend(self.group_columns(routed.iter().map(|r| r.group))?);
        for c in &batch.columns()[self.key_columns.clone()] {
            columns.push(take(c, &rows, None)?);
        }
        columns.push(Arc::new(StringArray::from_iter_values(routed.iter().map(
            |r| {
                if r.delete {
                    "delete"
                } else {
                    "upsert"
                }
            },
        ))));
        Ok(vec![RecordBatch::try_new(
            self.output_schema.clone(),
            columns,
        )?])
    }

    fn commit_batch(&mut self) {
        for key in std::mem::take(&mut self.pending_order) {
            if let Some(group) = self.pending.remove(&key) {
                self.set(key, group);
            }
        }
    }

    fn abort_batch(&mut self) {
        self.pending.clear();
        self.pending_order.clear();
    }

    fn state_schema(&self) -> Option<SchemaRef> {
        Some(self.state_schema.clone())
    }

    /// All of it: each key and its group; the changes: each key changed since, with its group
    /// or as absent.
    fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
        let changes = std::mem::take(&mut self.unsnapshotted);
        let entries: Vec<(&[u8], Option<u32>)> = if full {
            self.current
                .iter()
                .map(|(k, g)| (k.as_ref(), Some(*g)))
                .collect()
        } else {
            changes.iter().map(|(k, g)| (k.as_ref(), *g)).collect()
        };
        let parser = self.keys.parser();
        let mut chunks = Vec::new();
        for entries in entries.chunks(CHUNK_ROWS) {
            let mut columns = self
                .keys
                .convert_rows(entries.iter().map(|(k, _)| parser.parse(k)))?;
            // A deleted key's group columns hold any group's values: only its presence counts.
            columns.extend(self.group_columns(entries.iter().map(|(_, g)| g.unwrap_or(0)))?);
            let present: BooleanArray = entries.iter().map(|(_, g)| Some(g.is_some())).collect();
            columns.push(Arc::new(present));
            let batch = RecordBatch::try_new(self.state_schema.clone(), columns)?;
            chunks.push(StateChunk::Batch(batch));
        }
        Ok(chunks)
    }

    fn restore(&mut self, state: Vec<StateChunk>, _watermark: Option<i64>) -> Result<()> {
        let keys = self.key_columns.len();
        let groups = self.state_schema.fields().len() - keys - 1;
        for chunk in &state {
            for batch in chunk.batches()? {
                let batch = batch?;
                let key_rows = self.keys.convert_columns(&batch.columns()[..keys])?;
                let group_rows = self
                    .group_values
                    .convert_columns(&batch.columns()[keys..keys + groups])?;
                let present = batch.column(keys + groups).as_boolean().clone();
                for i in 0..batch.num_rows() {
                    let group = present
                        .value(i)
                        .then(|| self.intern(group_rows.row(i).as_ref()));
                    self.set(key_rows.row(i).as_ref().into(), group);
                }
                self.fit_memory()?;
            }
        }
        self.unsnapshotted.clear();
        Ok(())
    }

    fn fit_memory(&mut self) -> Result<()> {
        Budget::hold_in(
            self.budget.as_mut(),
            self.bytes,
            "a GROUP BY over a change stream (the group of each key of its table)",
        )
    }

    fn state_rows(&self) -> usize {
        self.current.len()
    }

    fn state_bytes(&self) -> usize {
        self.bytes
    }

    /// Keyed by the primary key: each key's changes reach the instance that knows its group.
    fn keying(&self) -> Option<Keying> {
        let fields = self.schema.fields();
        let key = self
            .key_columns
            .clone()
            .map(|i| Arc::new(Column::new(fields[i].name(), i)) as Arc<dyn PhysicalExpr>)
            .collect();
        Some(Keying {
            inputs: vec![key],
            state: (0..self.key_columns.len()).collect(),
        })
    }
}
