//! The current rows of a table kept up to date by its change stream: each change replaces its
//! primary key's row, a delete removes it. Operators over change streams (a GROUP BY over one,
//! a join with one) keep their table here, and put their own index beside it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, UInt32Array};
use arrow::compute::{concat_batches, filter_record_batch, interleave, take};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};

use super::spill::{spill_oldest, writer_in, SpillWriter, StateChunk, StoredBatch};
use super::stateless::OP;
use crate::error::{Error, Result};
use crate::runtime::memory::{Budget, StateMemory};

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
    /// Rows as they arrived, dead ones included until a compaction; the oldest spilled to
    /// disk when the table outgrows its memory.
    batches: Vec<StoredBatch>,
    /// Bytes of the batches in memory, and on disk.
    batch_bytes: usize,
    spilled: u64,
    /// Where spilled rows go (set by the first spill).
    memory: Option<Arc<StateMemory>>,
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
            batch_bytes: 0,
            spilled: 0,
            memory: None,
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
        self.batch_bytes += changes.batch.get_array_memory_size();
        self.batches.push(StoredBatch::Memory(changes.batch));
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

    /// Every current row's key (as [`Changes::key`] gives it) and place, in no order.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], RowId)> + '_ {
        self.rows.iter().map(|(k, (id, _))| (k.as_ref(), *id))
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
        self.gather_columns(&columns.collect::<Vec<_>>(), ids)
    }

    /// Columns `columns` (by index) of the rows at `ids`, in that order. A spilled batch is read
    /// back once, and only its rows wanted stay in memory: the batches on disk are never all
    /// in memory at once (callers free to choose an order pass `ids` sorted, so each is read
    /// by one call).
    pub fn gather_columns(
        &self,
        columns: &[usize],
        ids: &[(usize, usize)],
    ) -> Result<Vec<ArrayRef>> {
        if ids.is_empty() {
            return Ok(columns
                .iter()
                .map(|&c| arrow::array::new_empty_array(self.schema.field(c).data_type()))
                .collect());
        }
        // The batches the rows are in, in order of first use; of a spilled one, the rows wanted.
        let mut slot: HashMap<usize, usize> = HashMap::new();
        let mut used: Vec<(usize, Vec<u32>)> = Vec::new();
        let mut at = Vec::with_capacity(ids.len());
        for &(b, i) in ids {
            let s = *slot.entry(b).or_insert_with(|| {
                used.push((b, Vec::new()));
                used.len() - 1
            });
            if self.batches[b].is_spilled() {
                let rows = &mut used[s].1;
                at.push((s, rows.len()));
                rows.push(i as u32);
            } else {
                at.push((s, i));
            }
        }
        let parts = used
            .into_iter()
            .map(|(b, rows)| {
                let batch = self.batches[b].batch()?;
                if !self.batches[b].is_spilled() {
                    return Ok(columns.iter().map(|&c| batch.column(c).clone()).collect());
                }
                let rows = UInt32Array::from(rows);
                columns
                    .iter()
                    .map(|&c| Ok(take(batch.column(c), &rows, None)?))
                    .collect::<Result<Vec<ArrayRef>>>()
            })
            .collect::<Result<Vec<Vec<ArrayRef>>>>()?;
        (0..columns.len())
            .map(|k| {
                let arrays: Vec<&dyn Array> = parts.iter().map(|p| p[k].as_ref()).collect();
                Ok(interleave(&arrays, &at)?)
            })
            .collect()
    }

    /// Compacts the dead rows away once they are many; returns where the rows went.
    pub fn compact_if_due(&mut self) -> Result<Option<Moved>> {
        if self.dead_rows < COMPACT_AT || self.dead_rows <= self.live_rows {
            return Ok(None);
        }
        let mut to: Vec<Vec<u32>> = Vec::with_capacity(self.batches.len());
        let mut next = 0u32;
        let mut chunks = Chunks::new(self.schema.clone(), self.memory.clone());
        for (stored, live) in self.batches.iter().zip(&self.live) {
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
                // Rows read back from disk go back to disk.
                let rows = filter_record_batch(&stored.batch()?, &mask)?;
                chunks.push(rows, stored.is_spilled())?;
            }
        }
        let moved = Moved { to };
        for (id, _) in self.rows.values_mut() {
            *id = moved.get(*id).ok_or_else(|| {
                Error::Internal("a current row was not kept by the compaction".into())
            })?;
        }
        self.batches = chunks.finish()?;
        self.batch_bytes = self.batches.iter().map(StoredBatch::memory_bytes).sum();
        self.spilled = self.batches.iter().map(StoredBatch::spilled_bytes).sum();
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
        // Spilled rows are written to a file, not read back into memory.
        let mut to_disk: Option<SpillWriter> = None;
        for (stored, live) in self.batches.iter().zip(&self.live) {
            let mask = BooleanArray::from(live.clone());
            if mask.true_count() == 0 {
                continue;
            }
            let rows = filter_record_batch(&stored.batch()?, &mask)?;
            match (stored.is_spilled(), &self.memory) {
                (true, Some(memory)) => {
                    writer_in(&mut to_disk, memory, &self.schema)?.write(&rows)?
                }
                _ => current.push(rows),
            }
        }
        let mut chunks = super::spill::in_memory(current);
        if let Some(file) = to_disk.map(SpillWriter::finish).transpose()?.flatten() {
            chunks.push(StateChunk::Spilled(file));
        }
        Ok(chunks)
    }

    /// Its current rows, a stored batch at a time in the order they came, each batch let go
    /// once its rows are read (spilled ones read back one at a time).
    pub fn into_current(self) -> impl Iterator<Item = Result<RecordBatch>> {
        self.batches
            .into_iter()
            .zip(self.live)
            .filter_map(|(stored, live)| {
                let mask = BooleanArray::from(live);
                (mask.true_count() > 0).then(|| Ok(filter_record_batch(&stored.batch()?, &mask)?))
            })
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

    /// Bytes held in memory: the rows there and the key index.
    pub fn memory_bytes(&self) -> usize {
        self.batch_bytes + self.index_bytes
    }

    /// Bytes of rows spilled to disk.
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled
    }

    /// Moves the oldest batches of rows in memory to one spill file of `memory`, until at most
    /// `keep` bytes of them stay in memory.
    pub fn spill(&mut self, memory: &Arc<StateMemory>, keep: usize) -> Result<()> {
        self.memory = Some(memory.clone());
        let (freed, on_disk) = spill_oldest(&mut self.batches, self.batch_bytes, keep, memory)?;
        self.batch_bytes -= freed;
        self.spilled += on_disk;
        Ok(())
    }

    /// Spills the older half of the rows in memory, or `all` of them.
    pub fn spill_step(&mut self, memory: &Arc<StateMemory>, all: bool) -> Result<()> {
        let keep = if all { 0 } else { self.batch_bytes / 2 };
        self.spill(memory, keep)?;
        tracing::debug!(spilled = self.spilled, "Table state spilled to disk.");
        Ok(())
    }

    /// Holds the table and `other` bytes of its operator's (which cannot spill) in `budget`:
    /// past it, the older half of the rows in memory spill, then all of them; fails naming
    /// `what` when the rest still does not fit.
    pub fn fit(&mut self, budget: Option<&mut Budget>, other: usize, what: &str) -> Result<()> {
        match budget {
            Some(budget) => budget.fit_spilling(
                self,
                |t| t.memory_bytes() + other,
                |t, memory, all| t.spill_step(memory, all),
                what,
            ),
            None => Ok(()),
        }
    }
}

/// The current rows of a compaction, cut into chunks of [`CHUNK_ROWS`] rows; a chunk holding
/// rows that were spilled is written to disk again as it is cut.
struct Chunks {
    schema: SchemaRef,
    memory: Option<Arc<StateMemory>>,
    parts: Vec<RecordBatch>,
    rows: usize,
    from_disk: bool,
    done: Vec<StoredBatch>,
    /// The chunks written to disk: where they go in `done`, and their rows.
    to_disk: Vec<(usize, usize)>,
    writer: Option<SpillWriter>,
}

impl Chunks {
    fn new(schema: SchemaRef, memory: Option<Arc<StateMemory>>) -> Self {
        Chunks {
            schema,
            memory,
            parts: Vec::new(),
            rows: 0,
            from_disk: false,
            done: Vec::new(),
            to_disk: Vec::new(),
            writer: None,
        }
    }

    fn push(&mut self, mut rows: RecordBatch, from_disk: bool) -> Result<()> {
        while rows.num_rows() > 0 {
            let take = (CHUNK_ROWS - self.rows).min(rows.num_rows());
            self.parts.push(rows.slice(0, take));
            self.rows += take;
            self.from_disk |= from_disk;
            rows = rows.slice(take, rows.num_rows() - take);
            if self.rows == CHUNK_ROWS {
                self.cut()?;
            }
        }
        Ok(())
    }

    /// The parts so far as one chunk of their own memory, or on disk.
    fn cut(&mut self) -> Result<()> {
        let chunk = concat_batches(&self.schema, &std::mem::take(&mut self.parts))?;
        let rows = std::mem::take(&mut self.rows);
        match (std::mem::take(&mut self.from_disk), &self.memory) {
            (true, Some(memory)) => {
                writer_in(&mut self.writer, memory, &self.schema)?.write(&chunk)?;
                self.to_disk.push((self.done.len(), rows));
                // Until the file is written.
                self.done.push(StoredBatch::Memory(RecordBatch::new_empty(
                    self.schema.clone(),
                )));
            }
            _ => self.done.push(StoredBatch::Memory(chunk)),
        }
        Ok(())
    }

    /// The chunks, in order.
    fn finish(mut self) -> Result<Vec<StoredBatch>> {
        if self.rows > 0 {
            self.cut()?;
        }
        if let Some(file) = self.writer.map(SpillWriter::finish).transpose()?.flatten() {
            for (at, (i, rows)) in self.to_disk.into_iter().enumerate() {
                self.done[i] = StoredBatch::spilled(&file, at, rows);
            }
        }
        Ok(self.done)
    }
}
