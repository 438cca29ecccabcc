//! The current rows of a table kept up to date by its change stream: each change replaces its
//! primary key's row, a delete removes it. Operators over change streams (a GROUP BY over one,
//! a join with one) keep their table here, and put their own index beside it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use arrow::compute::{concat_batches, filter_record_batch, interleave};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};

use super::spill::StateChunk;
use super::stateless::OP;
use crate::error::{Error, Result};

/// Bytes of bookkeeping per key beyond the key itself.
pub const KEY_OVERHEAD: usize = 48;
/// Rows per batch of the table after a compaction.
const CHUNK_ROWS: usize = 65_536;
/// Dead rows are compacted away once there are at least this many, and more than live ones.
const COMPACT_AT: usize = 4_096;

/// Where a row is kept: batch, row.
pub type RowId = (u32, u32);

/// A batch of changes, converted and checked, waiting to be applied.
pub struct Changes {
    /// The changes, as the table's rows.
    pub batch: RecordBatch,
    keys: Rows,
    deletes: Vec<bool>,
}

impl Changes {
    /// Which changes are not deletes.
    pub fn upserts(&self) -> BooleanArray {
        self.deletes.iter().map(|d| Some(!d)).collect()
    }

    /// The primary key of change `i`, as the table keys its rows.
    pub fn key(&self, i: usize) -> arrow::row::Row<'_> {
        self.keys.row(i)
    }

    /// Whether change `i` is a delete.
    pub fn is_delete(&self, i: usize) -> bool {
        self.deletes[i]
    }
}

/// Where the rows went in a compaction.
pub struct Moved {
    to: Vec<Vec<u32>>,
}

impl Moved {
    /// Where a row went; `None` for a row that was dead.
    pub fn get(&self, (b, i): RowId) -> Option<RowId> {
        let n = self.to[b as usize][i as usize];
        (n != u32::MAX).then_some((n / CHUNK_ROWS as u32, n % CHUNK_ROWS as u32))
    }
}

/// A table's current rows, by primary key.
pub struct KeyedRows {
    /// The rows: the operator's columns, the primary key among or after them, `_op` last.
    schema: SchemaRef,
    keys: RowConverter,
    key_columns: Range<usize>,
    /// Rows as they arrived, dead ones included until a compaction.
    batches: Vec<RecordBatch>,
    live: Vec<Vec<bool>>,
    live_rows: usize,
    dead_rows: usize,
    /// Each current row by primary key, with the operator's tag for it (a group, say).
    rows: HashMap<Box<[u8]>, (RowId, u32), ahash::RandomState>,
    index_bytes: usize,
    /// Changes applied since the last snapshot.
    unsnapshotted: Vec<RecordBatch>,
}

impl KeyedRows {
    /// A table of rows of `schema` (`_op` last), keyed by the columns `key_columns`.
    pub fn new(schema: SchemaRef, key_columns: Range<usize>) -> Result<Self> {
        let fields = schema.fields();
        if fields.last().is_none_or(|f| f.name() != OP) || key_columns.end >= fields.len() {
            return Err(Error::Internal(format!(
                "a table kept by its change stream needs its primary key, then {OP} last"
            )));
        }
        let keys = RowConverter::new(
            fields[key_columns.clone()]
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        // Deletes carry only their key: every other column may be NULL.
        let schema = Arc::new(Schema::new(
            fields
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        Ok(KeyedRows {
            schema,
            keys,
            key_columns,
            batches: Vec::new(),
            live: Vec::new(),
            live_rows: 0,
            dead_rows: 0,
            rows: HashMap::default(),
            index_bytes: 0,
            unsnapshotted: Vec::new(),
        })
    }

    /// The rows' schema (every column nullable).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Converts a batch of changes: the rows as the table's, their keys and kinds.
    pub fn prepare(&self, batch: &RecordBatch) -> Result<Changes> {
        let batch = RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec())?;
        let op = batch.column(batch.num_columns() - 1);
        let op = op
            .as_string_opt::<i32>()
            .ok_or_else(|| Error::Internal(format!("{OP} is not text: {}", op.data_type())))?;
        let deletes = (0..batch.num_rows())
            .map(|i| op.is_valid(i) && op.value(i) == "delete")
            .collect();
        let keys = self
            .keys
            .convert_columns(&batch.columns()[self.key_columns.clone()])?;
        Ok(Changes {
            batch,
            keys,
            deletes,
        })
    }

    /// Applies changes in row order: each row, unless a delete, becomes its key's current row
    /// (`inserted` hears of it and tags it), and replaces the one before (`removed` hears of
    /// that one, with its tag). One lookup of the key per change.
    pub fn apply(
        &mut self,
        changes: Changes,
        mut removed: impl FnMut(RowId, u32),
        mut inserted: impl FnMut(usize, RowId) -> u32,
    ) {
        let b = self.batches.len() as u32;
        let n = changes.batch.num_rows();
        self.live.push(vec![false; n]);
        self.unsnapshotted.push(changes.batch.clone());
        self.batches.push(changes.batch);
        self.dead_rows += n;
        for i in 0..n {
            let key = changes.keys.row(i);
            let key = key.as_ref();
            let id = (b, i as u32);
            let tag = (!changes.deletes[i]).then(|| inserted(i, id));
            // A key seen before keeps its entry (and its allocation) unless deleted.
            let old = match (self.rows.get_mut(key), tag) {
                (Some(slot), Some(tag)) => Some(std::mem::replace(slot, (id, tag))),
                (Some(_), None) => {
                    self.index_bytes = self.index_bytes.saturating_sub(key.len() + KEY_OVERHEAD);
                    self.rows.remove(key)
                }
                (None, Some(tag)) => {
                    self.rows.insert(key.into(), (id, tag));
                    self.index_bytes += key.len() + KEY_OVERHEAD;
                    None
                }
                (None, None) => None,
            };
            if tag.is_some() {
                self.live[b as usize][i] = true;
                self.live_rows += 1;
                self.dead_rows -= 1;
            }
            if let Some(((ob, oi), old_tag)) = old {
                self.live[ob as usize][oi as usize] = false;
                self.live_rows -= 1;
                self.dead_rows += 1;
                removed((ob, oi), old_tag);
            }
        }
    }

    /// Where every current row is, in no order.
    pub fn live_ids(&self) -> impl Iterator<Item = RowId> + '_ {
        self.rows.values().map(|(id, _)| *id)
    }

    /// Where the current row of primary key `key` (as [`Changes::key`] gives it) is.
    pub fn current(&self, key: &[u8]) -> Option<RowId> {
        self.rows.get(key).map(|(id, _)| *id)
    }

    /// Whether a row is current.
    pub fn is_live(&self, (b, i): RowId) -> bool {
        self.live[b as usize][i as usize]
    }

    /// Columns `columns` of the rows at `ids`, in that order.
    pub fn gather(&self, columns: Range<usize>, ids: &[(usize, usize)]) -> Result<Vec<ArrayRef>> {
        if ids.is_empty() {
            return Ok(columns
                .map(|c| arrow::array::new_empty_array(self.schema.field(c).data_type()))
                .collect());
        }
        columns
            .map(|c| {
                let arrays: Vec<&dyn Array> =
                    self.batches.iter().map(|b| b.column(c).as_ref()).collect();
                Ok(interleave(&arrays, ids)?)
            })
            .collect()
    }

    /// Compacts the dead rows away once they are many; returns where the rows went.
    pub fn compact_if_due(&mut self) -> Result<Option<Moved>> {
        if self.dead_rows < COMPACT_AT || self.dead_rows <= self.live_rows {
            return Ok(None);
        }
        let mut kept = Vec::new();
        let mut to: Vec<Vec<u32>> = Vec::with_capacity(self.batches.len());
        let mut next = 0u32;
        for (batch, live) in self.batches.iter().zip(&self.live) {
            to.push(
                live.iter()
                    .map(|&l| {
                        let at = next;
                        next += l as u32;
                        if l {
                            at
                        } else {
                            u32::MAX
                        }
                    })
                    .collect(),
            );
            let mask = BooleanArray::from(live.clone());
            if mask.true_count() > 0 {
                kept.push(filter_record_batch(batch, &mask)?);
            }
        }
        let all = concat_batches(&self.schema, &kept)?;
        let moved = Moved { to };
        for (id, _) in self.rows.values_mut() {
            *id = moved.get(*id).ok_or_else(|| {
                Error::Internal("a current row was not kept by the compaction".into())
            })?;
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
        Ok(Some(moved))
    }

    /// All the current rows (`full`), or the changes applied since the last snapshot.
    pub fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
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

    /// Forgets the changes applied so far as changes: they were restored, not made.
    pub fn restored(&mut self) {
        self.unsnapshotted.clear();
    }

    /// How many rows are current.
    pub fn live_rows(&self) -> usize {
        self.live_rows
    }

    /// How many rows are kept though no longer current.
    pub fn dead_rows(&self) -> usize {
        self.dead_rows
    }

    /// Bytes held: the rows and the key index.
    pub fn memory_bytes(&self) -> usize {
        let rows: usize = self
            .batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum();
        rows + self.index_bytes
    }
}
