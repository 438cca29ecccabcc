//! Streaming `SELECT DISTINCT`: emits each row the first time it is seen; the rows seen are the
//! operator's state, snapshotted as batches of the rows themselves, and spilled to disk as
//! sorted runs of keys past the state memory.

use std::collections::HashSet;

use arrow::array::BooleanArray;
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};

use std::sync::Arc;

use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;

use super::key_runs::KeyRuns;
use super::parallel::Keying;
use super::spill::{load, SnapshotWriter, SpillWriter, StateChunk};
use super::Operator;
use crate::error::Result;
use crate::runtime::memory::{Budget, StateMemory};

/// Bytes of bookkeeping per key beyond the key itself (hash table slot, allocation header).
const KEY_OVERHEAD: usize = 40;
/// Rows per batch of a snapshot; past one batch, a full snapshot goes to a file.
const STATE_ROWS: usize = 65_536;

/// The keys seen: in memory, and on disk once they outgrew the budget (never in both).
#[derive(Default)]
struct Seen {
    in_memory: HashSet<Box<[u8]>>,
    /// Bytes of the keys in memory.
    bytes: usize,
    on_disk: KeyRuns,
}

impl Seen {
    fn len(&self) -> usize {
        self.in_memory.len() + self.on_disk.len()
    }

    /// Bytes held in memory: keys, and the filters and indexes of those on disk.
    fn memory_bytes(&self) -> usize {
        self.bytes + self.on_disk.memory_bytes()
    }

    /// The same while `more` keys go in: when they may not fit, the set's table grows, holding
    /// its old slots and twice as many at once.
    fn memory_bytes_taking(&self, more: usize) -> usize {
        let set = &self.in_memory;
        let growth = match set.len() + more > set.capacity() {
            true => 2 * set.capacity() * (std::mem::size_of::<Box<[u8]>>() + 1),
            false => 0,
        };
        self.memory_bytes() + growth
    }

    /// Inserts a key not on disk; false when it was already in memory.
    fn insert(&mut self, key: Box<[u8]>) -> bool {
        let len = key.len();
        let fresh = self.in_memory.insert(key);
        if fresh {
            self.bytes += len + KEY_OVERHEAD;
        }
        fresh
    }

    /// Moves the keys in memory to a run on disk.
    fn spill(&mut self, memory: &StateMemory) -> Result<()> {
        let keys = std::mem::take(&mut self.in_memory);
        self.bytes = 0;
        tracing::debug!(keys = keys.len(), "DISTINCT's keys spilled to disk.");
        self.on_disk.spill(memory, keys.into_iter().map(|k| (k, 1)))
    }

    /// Which of `rows` (by index) are on disk.
    fn on_disk(&self, rows: &arrow::row::Rows, candidates: &mut [usize]) -> Result<Vec<bool>> {
        let mut found = vec![false; rows.num_rows()];
        if self.on_disk.is_empty() || candidates.is_empty() {
            return Ok(found);
        }
        candidates.sort_unstable_by(|a, b| rows.row(*a).cmp(&rows.row(*b)));
        let probes: Vec<&[u8]> = candidates.iter().map(|&i| rows.row(i).data()).collect();
        for (&i, hit) in candidates.iter().zip(self.on_disk.flags_sorted(&probes)?) {
            found[i] = hit != 0;
        }
        Ok(found)
    }
}

/// The first occurrence of every row passes; later ones are dropped.
pub struct Distinct {
    schema: SchemaRef,
    /// Rows in Arrow's row format: comparable bytes, one per key.
    converter: RowConverter,
    seen: Seen,
    /// Keys first seen by batches not yet committed.
    pending: HashSet<Box<[u8]>>,
    /// Keys committed since the last snapshot.
    unsnapshotted: Vec<Box<[u8]>>,
    /// Bytes of those.
    unsnapshotted_bytes: usize,
    /// State files of keys committed since the last snapshot, written when the keys spilled.
    spilled_changes: Vec<StateChunk>,
    /// Rows of the last batch: about how many keys the next may bring.
    batch_rows: usize,
    /// Its share of the run's state memory (none: unaccounted, nothing spills).
    budget: Option<Budget>,
}

impl Distinct {
    /// A distinct over rows of `schema`.
    pub fn new(schema: SchemaRef) -> Result<Self> {
        let fields = schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        Ok(Distinct {
            converter: RowConverter::new(fields)?,
            schema,
            seen: Seen::default(),
            pending: HashSet::new(),
            unsnapshotted: Vec::new(),
            unsnapshotted_bytes: 0,
            spilled_changes: Vec::new(),
            batch_rows: 0,
            budget: None,
        })
    }

    /// The same, its keys accounted in `memory`.
    pub fn with_memory(mut self, memory: &Arc<StateMemory>) -> Self {
        self.budget = Some(Budget::new(memory, "distinct"));
        self
    }

    /// Moves the keys seen to disk, and those not yet snapshotted to a state file.
    fn spill(&mut self, memory: &StateMemory) -> Result<()> {
        if !self.unsnapshotted.is_empty() {
            let mut writer = SpillWriter::new(memory, &self.schema)?;
            for chunk in self.unsnapshotted.chunks(STATE_ROWS) {
                writer.write(&self.rows_batch(chunk.iter())?)?;
            }
            self.spilled_changes
                .extend(writer.finish()?.map(StateChunk::Spilled));
            self.unsnapshotted = Vec::new();
            self.unsnapshotted_bytes = 0;
        }
        self.seen.spill(memory)
    }

    /// Rows of `schema` from keys in Arrow's row format.
    fn rows_batch<'a>(&self, keys: impl Iterator<Item = &'a Box<[u8]>>) -> Result<RecordBatch> {
        let parser = self.converter.parser();
        let columns = self.converter.convert_rows(keys.map(|k| parser.parse(k)))?;
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

impl Operator for Distinct {
    fn emits_only_when_processing(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "distinct"
    }

    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        self.batch_rows = batch.num_rows();
        let rows = self.converter.convert_columns(batch.columns())?;
        let in_memory = &self.seen.in_memory;
        let mut candidates: Vec<usize> = match self.seen.on_disk.is_empty() {
            true => Vec::new(),
            false => (0..rows.num_rows())
                .filter(|&i| {
                    let key = rows.row(i).data();
                    !in_memory.contains(key) && !self.pending.contains(key)
                })
                .collect(),
        };
        let on_disk = self.seen.on_disk(&rows, &mut candidates)?;
        let keep: BooleanArray = rows
            .iter()
            .zip(on_disk)
            .map(|(r, on_disk)| {
                let key = r.as_ref();
                Some(!on_disk && !in_memory.contains(key) && self.pending.insert(key.into()))
            })
            .collect();
        Ok(vec![filter_record_batch(&batch, &keep)?])
    }

    fn commit_batch(&mut self) {
        for key in std::mem::take(&mut self.pending) {
            if self.seen.insert(key.clone()) {
                self.unsnapshotted_bytes += key.len() + 16;
                self.unsnapshotted.push(key);
            }
        }
    }

    fn abort_batch(&mut self) {
        self.pending.clear();
    }

    fn state_schema(&self) -> Option<SchemaRef> {
        Some(self.schema.clone())
    }

    /// A full snapshot past a batch's worth of keys goes to a file a batch at a time (the keys
    /// on disk are read back a batch at a time).
    fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
        let changed = std::mem::take(&mut self.unsnapshotted);
        self.unsnapshotted_bytes = 0;
        let spilled_changes = std::mem::take(&mut self.spilled_changes);
        if !full {
            let mut out = spilled_changes;
            out.extend(super::spill::in_memory([self.rows_batch(changed.iter())?]));
            return Ok(out);
        }
        let memory = self.budget.as_ref().map(|b| b.memory().as_ref());
        let mut out = SnapshotWriter::new(memory, &self.schema, self.seen.len(), STATE_ROWS)?;
        let mut keys = self
            .seen
            .in_memory
            .iter()
            .map(|k| Ok(k.clone()))
            .chain(self.seen.on_disk.keys().map(|k| k.map(|(k, _)| k)))
            .peekable();
        let mut chunk: Vec<Box<[u8]>> = Vec::new();
        while keys.peek().is_some() {
            chunk.clear();
            for key in keys.by_ref().take(STATE_ROWS) {
                chunk.push(key?);
            }
            out.write(self.rows_batch(chunk.iter())?)?;
        }
        out.finish()
    }

    fn restore(&mut self, state: Vec<StateChunk>, _watermark: Option<i64>) -> Result<()> {
        for chunk in &state {
            for batch in load(std::slice::from_ref(chunk))? {
                let rows = self.converter.convert_columns(batch.columns())?;
                for r in rows.iter() {
                    self.seen.insert(r.as_ref().into());
                }
                self.fit_memory()?;
            }
        }
        Ok(())
    }

    /// Past its share of the state memory, the keys in memory go to disk, and those committed
    /// since the last snapshot to a state file the next snapshot takes.
    fn fit_memory(&mut self) -> Result<()> {
        let Some(mut budget) = self.budget.take() else {
            return Ok(());
        };
        let fitted = budget.fit_spilling(
            self,
            |d| d.seen.memory_bytes_taking(d.batch_rows) + d.unsnapshotted_bytes,
            |d, memory, _| d.spill(memory),
            "DISTINCT's filters of the rows it spilled",
        );
        self.budget = Some(budget);
        fitted
    }

    fn state_rows(&self) -> usize {
        self.seen.len()
    }

    fn state_bytes(&self) -> usize {
        self.seen.memory_bytes() + self.unsnapshotted_bytes
    }

    fn spilled_bytes(&self) -> u64 {
        self.seen.on_disk.disk_bytes()
    }

    fn keying(&self) -> Option<Keying> {
        let columns = self.schema.fields().iter().enumerate();
        Some(Keying {
            inputs: vec![columns
                .map(|(i, f)| Arc::new(Column::new(f.name(), i)) as Arc<dyn PhysicalExpr>)
                .collect()],
            state: (0..self.schema.fields().len()).collect(),
        })
    }
}

/// Rows of `schema` from keys in Arrow's row format: how checkpoints before state files stored
/// the rows a DISTINCT had seen (hex-encoded in the checkpoint document).
pub fn rows_from_row_format(schema: SchemaRef, keys: &[Vec<u8>]) -> Result<RecordBatch> {
    let distinct = Distinct::new(schema)?;
    let keys: Vec<Box<[u8]>> = keys.iter().map(|k| k.as_slice().into()).collect();
    distinct.rows_batch(keys.iter())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use arrow::array::{Array, AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::runtime::operator::tests::{seed, through_files};

    type Key = (Option<String>, Option<i64>);

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]))
    }

    fn batch(rows: &[Key]) -> RecordBatch {
        let k: StringArray = rows.iter().map(|r| r.0.as_deref()).collect();
        let v: Int64Array = rows.iter().map(|r| r.1).collect();
        RecordBatch::try_new(schema(), vec![Arc::new(k), Arc::new(v)]).unwrap()
    }

    fn keys(batches: &[RecordBatch]) -> Vec<Key> {
        let mut out = Vec::new();
        for b in batches {
            let k = b.column(0).as_string::<i32>();
            let v = b.column(1).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                let key = (!k.is_null(i)).then(|| k.value(i).to_string());
                out.push((key, (!v.is_null(i)).then(|| v.value(i))));
            }
        }
        out
    }

    /// Far past its state memory, DISTINCT spills its keys and still emits each row exactly
    /// once, as a set of every row committed says; aborted batches leave nothing seen; full
    /// and change snapshots restore the same set, spilled keys and all.
    #[test]
    fn past_its_memory_distinct_spills_and_emits_each_row_once() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
        let budget = 64 << 10;
        let memory = StateMemory::new(Some(budget)).unwrap();
        let mut op = Distinct::new(schema()).unwrap().with_memory(&memory);
        let mut oracle: HashSet<Key> = HashSet::new();
        let mut state = Vec::new();
        for round in 0..60 {
            // Snapshots between batches: a full one, then changes, restored at round 40.
            match round {
                20 => state = op.snapshot(true).unwrap(),
                21..40 => state.extend(op.snapshot(false).unwrap()),
                40 => {
                    state.extend(op.snapshot(false).unwrap());
                    // Restored, through a state file, into a fresh operator.
                    let mut restored = Distinct::new(schema()).unwrap().with_memory(&memory);
                    let file = through_files(&memory, &op, std::mem::take(&mut state));
                    drop(op);
                    restored.restore(file, None).unwrap();
                    assert_eq!(restored.state_rows(), oracle.len());
                    op = restored;
                    // A full snapshot holds every key once.
                    let full = op.snapshot(true).unwrap();
                    let full: Vec<RecordBatch> = load(&full).unwrap();
                    let all = keys(&full);
                    assert_eq!(all.len(), oracle.len());
                    assert_eq!(all.into_iter().collect::<HashSet<Key>>(), oracle);
                }
                _ => {}
            }
            let rows: Vec<Key> = (0..1_000)
                .map(|_| {
                    let k = (!rng.random_bool(0.05))
                        .then(|| format!("key-{}", rng.random_range(0..400)));
                    (k, (!rng.random_bool(0.05)).then(|| rng.random_range(0..50)))
                })
                .collect();
            let out = keys(&op.process(0, batch(&rows)).unwrap());
            if rng.random_bool(0.1) {
                op.abort_batch();
                continue;
            }
            op.commit_batch();
            op.fit_memory().unwrap();
            let mut want = Vec::new();
            for r in rows {
                if oracle.insert(r.clone()) {
                    want.push(r);
                }
            }
            assert_eq!(out, want, "round {round}");
            assert_eq!(op.state_rows(), oracle.len());
        }
        assert!(op.spilled_bytes() > 0, "the keys spilled");
        assert!(op.state_bytes() <= budget, "{} bytes", op.state_bytes());
    }
}
