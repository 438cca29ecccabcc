//! State outside memory: Arrow IPC files on local disk that operators move state into when it
//! does not fit their memory budget, and the chunks of state (a batch in memory or such a file)
//! that operators hand to checkpoints and take back on restore.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::{FileWriter, IpcWriteOptions};
use arrow::ipc::CompressionType;
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::runtime::memory::StateMemory;

/// An immutable Arrow IPC file of state batches, deleted when the last handle is dropped.
#[derive(Clone)]
pub struct SpillFile {
    file: Arc<dyn datafusion::execution::SpillFile>,
    rows: usize,
    bytes: u64,
}

impl std::fmt::Debug for SpillFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SpillFile({}, {} rows)",
            self.path().display(),
            self.rows
        )
    }
}

impl SpillFile {
    /// `batches` (of `schema`) written to a new file; `None` when they hold no rows.
    pub fn write(
        memory: &StateMemory,
        schema: &SchemaRef,
        batches: impl IntoIterator<Item = RecordBatch>,
    ) -> Result<Option<SpillFile>> {
        let mut writer = SpillWriter::new(memory, schema)?;
        for b in batches {
            writer.write(&b)?;
        }
        writer.finish()
    }

    /// A file already written elsewhere (a checkpoint's state file fetched for a restore) in
    /// Arrow IPC file format, holding `rows` rows.
    pub fn adopt(file: Arc<dyn datafusion::execution::SpillFile>, rows: usize) -> Result<Self> {
        let path = local_path(&file)?;
        let bytes = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
            .len();
        Ok(SpillFile { file, rows, bytes })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        self.file.path().unwrap_or(Path::new("?"))
    }

    /// Rows it holds.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Its size on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Its schema (read from the file).
    pub fn schema(&self) -> Result<SchemaRef> {
        Ok(self.reader()?.schema())
    }

    /// Its batches, read one at a time.
    pub fn batches(&self) -> Result<impl Iterator<Item = Result<RecordBatch>> + Send + 'static> {
        let path = self.path().display().to_string();
        Ok(self.reader()?.map(move |b| {
            b.map_err(|e| Error::Internal(format!("reading spilled state {path}: {e}")))
        }))
    }

    /// Its batch number `at` (counting from 0), read alone.
    pub fn batch_at(&self, at: usize) -> Result<RecordBatch> {
        let mut reader = self.reader()?;
        let read = |e: arrow::error::ArrowError| {
            Error::Internal(format!(
                "reading batch {at} of spilled state {}: {e}",
                self.path().display()
            ))
        };
        reader.set_index(at).map_err(read)?;
        match reader.next() {
            Some(b) => b.map_err(read),
            None => Err(Error::Internal(format!(
                "spilled state {} has no batch {at}",
                self.path().display()
            ))),
        }
    }

    fn reader(&self) -> Result<FileReader<BufReader<File>>> {
        let path = self.path();
        let f =
            File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        FileReader::try_new(BufReader::new(f), None)
            .map_err(|e| Error::Internal(format!("reading spilled state {}: {e}", path.display())))
    }
}

fn local_path(file: &Arc<dyn datafusion::execution::SpillFile>) -> Result<&Path> {
    file.path()
        .ok_or_else(|| Error::Internal("spill files must be local files".into()))
}

/// Writes batches to a new spill file one at a time.
pub struct SpillWriter {
    file: Arc<dyn datafusion::execution::SpillFile>,
    writer: FileWriter<BufWriter<File>>,
    rows: usize,
}

impl SpillWriter {
    /// A writer of batches of `schema` into a new temporary file of `memory`'s disk manager.
    pub fn new(memory: &StateMemory, schema: &SchemaRef) -> Result<Self> {
        let file = memory.temp_file("spilling operator state")?;
        let path = local_path(&file)?;
        let f =
            File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let options =
            IpcWriteOptions::default().try_with_compression(Some(CompressionType::LZ4_FRAME))?;
        let writer = FileWriter::try_new_with_options(BufWriter::new(f), schema, options)?;
        Ok(SpillWriter {
            file,
            writer,
            rows: 0,
        })
    }

    /// Appends a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() > 0 {
            self.writer.write(batch)?;
            self.rows += batch.num_rows();
        }
        Ok(())
    }

    /// The file written; `None` (and no file) when no rows were.
    pub fn finish(mut self) -> Result<Option<SpillFile>> {
        if self.rows == 0 {
            return Ok(None);
        }
        self.writer.finish()?;
        let path = local_path(&self.file)?.display().to_string();
        let f = self.writer.into_inner()?;
        f.into_inner()
            .map_err(|e| Error::io(format!("writing {path}"), e.into_error()))?;
        Ok(Some(SpillFile::adopt(self.file, self.rows)?))
    }
}

/// A batch of state kept in memory, or moved to a spill file when the state outgrew its memory.
pub enum StoredBatch {
    Memory(RecordBatch),
    /// Batch `at` of `file`; `share` is its part of the file's bytes.
    Spilled {
        file: SpillFile,
        at: usize,
        rows: usize,
        share: u64,
    },
}

impl StoredBatch {
    pub fn num_rows(&self) -> usize {
        match self {
            StoredBatch::Memory(b) => b.num_rows(),
            StoredBatch::Spilled { rows, .. } => *rows,
        }
    }

    /// The batch, read back from disk when spilled.
    pub fn batch(&self) -> Result<RecordBatch> {
        match self {
            StoredBatch::Memory(b) => Ok(b.clone()),
            StoredBatch::Spilled { file, at, .. } => file.batch_at(*at),
        }
    }

    /// Bytes it holds in memory.
    pub fn memory_bytes(&self) -> usize {
        match self {
            StoredBatch::Memory(b) => b.get_array_memory_size(),
            StoredBatch::Spilled { .. } => 0,
        }
    }

    /// Its share of a spill file's bytes.
    pub fn spilled_bytes(&self) -> u64 {
        match self {
            StoredBatch::Memory(_) => 0,
            StoredBatch::Spilled { share, .. } => *share,
        }
    }

    pub fn is_spilled(&self) -> bool {
        matches!(self, StoredBatch::Spilled { .. })
    }

    /// Batch `at` of `file`, of `rows` rows.
    pub fn spilled(file: &SpillFile, at: usize, rows: usize) -> Self {
        StoredBatch::Spilled {
            share: file.bytes() * rows as u64 / file.rows().max(1) as u64,
            file: file.clone(),
            at,
            rows,
        }
    }
}

/// Spills the batches of `stored` (oldest first) held in memory, oldest first, until at most
/// `keep` of their `in_memory` bytes stay; returns the bytes freed and their bytes on disk.
pub fn spill_oldest<'a>(
    stored: impl IntoIterator<Item = &'a mut StoredBatch>,
    in_memory: usize,
    keep: usize,
    memory: &StateMemory,
) -> Result<(usize, u64)> {
    let mut left = in_memory;
    let mut oldest = Vec::new();
    for b in stored.into_iter().filter(|b| !b.is_spilled()) {
        if left <= keep {
            break;
        }
        left -= b.memory_bytes();
        oldest.push(b);
    }
    spill_stored(oldest, memory)
}

/// The writer in `writer`, created (a new spill file of `memory`, batches of `schema`) on first use.
pub fn writer_in<'a>(
    writer: &'a mut Option<SpillWriter>,
    memory: &StateMemory,
    schema: &SchemaRef,
) -> Result<&'a mut SpillWriter> {
    Ok(match writer {
        Some(w) => w,
        None => writer.insert(SpillWriter::new(memory, schema)?),
    })
}

/// Moves the batches of `stored` held in memory, in order, into one new spill file; returns
/// the bytes of memory they freed and their bytes on disk.
fn spill_stored(stored: Vec<&mut StoredBatch>, memory: &StateMemory) -> Result<(usize, u64)> {
    let mut stored: Vec<&mut StoredBatch> = stored
        .into_iter()
        .filter(|s| !s.is_spilled() && s.num_rows() > 0)
        .collect();
    let Some(StoredBatch::Memory(first)) = stored.first().map(|s| &**s) else {
        return Ok((0, 0));
    };
    let mut writer = SpillWriter::new(memory, &first.schema())?;
    let mut freed = 0;
    for s in &stored {
        if let StoredBatch::Memory(b) = &**s {
            writer.write(b)?;
            freed += b.get_array_memory_size();
        }
    }
    let Some(file) = writer.finish()? else {
        return Ok((0, 0));
    };
    let mut on_disk = 0;
    for (at, s) in stored.iter_mut().enumerate() {
        **s = StoredBatch::spilled(&file, at, s.num_rows());
        on_disk += s.spilled_bytes();
    }
    Ok((freed, on_disk))
}

/// A part of an operator's state as it is snapshotted and restored: batches in memory, or a
/// file of them.
#[derive(Debug, Clone)]
pub enum StateChunk {
    /// A batch in memory.
    Batch(RecordBatch),
    /// A file on local disk.
    Spilled(SpillFile),
    /// Another chunk's batches, each changed by a function as it is read.
    Mapped(Box<StateChunk>, BatchMap),
}

/// A function from batch to batch, as a [`StateChunk::Mapped`] applies it.
#[derive(Clone)]
pub struct BatchMap(pub Arc<dyn Fn(RecordBatch) -> Result<RecordBatch> + Send + Sync>);

impl std::fmt::Debug for BatchMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BatchMap")
    }
}

impl StateChunk {
    /// Rows it holds.
    pub fn rows(&self) -> usize {
        match self {
            StateChunk::Batch(b) => b.num_rows(),
            StateChunk::Spilled(f) => f.rows(),
            StateChunk::Mapped(c, _) => c.rows(),
        }
    }

    /// Bytes it holds in memory.
    pub fn memory(&self) -> usize {
        match self {
            StateChunk::Batch(b) => b.get_array_memory_size(),
            StateChunk::Spilled(_) => 0,
            StateChunk::Mapped(c, _) => c.memory(),
        }
    }

    /// Its batches, those of a file read one at a time.
    pub fn batches(
        &self,
    ) -> Result<Box<dyn Iterator<Item = Result<RecordBatch>> + Send + 'static>> {
        Ok(match self {
            StateChunk::Batch(b) => Box::new(std::iter::once(Ok(b.clone()))),
            StateChunk::Spilled(f) => Box::new(f.batches()?),
            StateChunk::Mapped(c, map) => {
                let map = map.0.clone();
                Box::new(c.batches()?.map(move |b| b.and_then(|b| map(b))))
            }
        })
    }

    /// The same batches, each changed by `map` as it is read.
    pub fn mapped(self, map: &BatchMap) -> StateChunk {
        StateChunk::Mapped(Box::new(self), map.clone())
    }
}

/// `chunks` with `f` applied to each of their batches, giving batches of `schema`: batches stay
/// in memory, and a file's batches go to a new file of `memory` (when given) one at a time.
pub fn map_chunks(
    chunks: Vec<StateChunk>,
    schema: &SchemaRef,
    memory: Option<&StateMemory>,
    mut f: impl FnMut(&RecordBatch) -> Result<RecordBatch>,
) -> Result<Vec<StateChunk>> {
    let mut out = Vec::new();
    for chunk in chunks {
        match (chunk, memory) {
            (StateChunk::Spilled(file), Some(memory)) => {
                let mut writer = SpillWriter::new(memory, schema)?;
                for b in file.batches()? {
                    writer.write(&f(&b?)?)?;
                }
                out.extend(writer.finish()?.map(StateChunk::Spilled));
            }
            (chunk, _) => {
                for b in chunk.batches()? {
                    out.push(StateChunk::Batch(f(&b?)?));
                }
            }
        }
    }
    Ok(out)
}

/// Where a snapshot's batches go as they are made: memory, or (with a state memory, past a
/// batch's worth of rows) a file, so that a large snapshot is never in memory whole.
pub struct SnapshotWriter {
    out: Vec<StateChunk>,
    file: Option<SpillWriter>,
}

impl SnapshotWriter {
    /// A writer for `rows` rows of `schema`, in batches of `batch_rows`.
    pub fn new(
        memory: Option<&StateMemory>,
        schema: &SchemaRef,
        rows: usize,
        batch_rows: usize,
    ) -> Result<Self> {
        let file = match memory {
            Some(memory) if rows > batch_rows => Some(SpillWriter::new(memory, schema)?),
            _ => None,
        };
        Ok(SnapshotWriter {
            out: Vec::new(),
            file,
        })
    }

    pub fn write(&mut self, batch: RecordBatch) -> Result<()> {
        match &mut self.file {
            Some(w) => w.write(&batch),
            None => {
                self.out.push(StateChunk::Batch(batch));
                Ok(())
            }
        }
    }

    pub fn finish(self) -> Result<Vec<StateChunk>> {
        let mut out = self.out;
        if let Some(w) = self.file {
            out.extend(w.finish()?.map(StateChunk::Spilled));
        }
        Ok(out)
    }
}

/// Bytes the arrays of `batches` hold in memory, slices of one batch counted once. The batches
/// of a plan's output are often slices of one batch (DataFusion's aggregate hands out its
/// result that way) and share its buffers, which `RecordBatch::get_array_memory_size` counts
/// again in every slice.
pub fn distinct_memory_size<'a>(batches: impl IntoIterator<Item = &'a RecordBatch>) -> usize {
    // Slices of one batch share every buffer: one buffer tells them (cheaper than all of them,
    // this runs after every batch).
    let mut seen = std::collections::HashSet::new();
    batches
        .into_iter()
        .filter(|batch| match batch.columns().first() {
            Some(column) => {
                let data = column.to_data();
                match data.buffers().first().or(data.nulls().map(|n| n.buffer())) {
                    Some(buffer) => seen.insert(buffer.data_ptr().as_ptr() as usize),
                    None => true,
                }
            }
            None => true,
        })
        .map(RecordBatch::get_array_memory_size)
        .sum()
}

/// Bytes `chunks` hold in memory, slices of one batch counted once.
pub fn chunks_memory(chunks: &[StateChunk]) -> usize {
    let batches = chunks.iter().filter_map(|c| match c {
        StateChunk::Batch(b) => Some(b),
        _ => None,
    });
    let others: usize = chunks
        .iter()
        .filter(|c| !matches!(c, StateChunk::Batch(_)))
        .map(StateChunk::memory)
        .sum();
    distinct_memory_size(batches) + others
}

/// Chunks of in-memory batches.
pub fn in_memory(batches: impl IntoIterator<Item = RecordBatch>) -> Vec<StateChunk> {
    batches
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .map(StateChunk::Batch)
        .collect()
}

/// Moves the batches among `chunks` into one spill file, which takes their place after the
/// files already there.
pub fn spill_batches(
    chunks: &mut Vec<StateChunk>,
    memory: &StateMemory,
    schema: &SchemaRef,
) -> Result<()> {
    if !chunks.iter().any(|c| matches!(c, StateChunk::Batch(_))) {
        return Ok(());
    }
    let (in_memory, files): (Vec<_>, Vec<_>) = std::mem::take(chunks)
        .into_iter()
        .partition(|c| matches!(c, StateChunk::Batch(_)));
    *chunks = files;
    let batches = in_memory.into_iter().filter_map(|c| match c {
        StateChunk::Batch(b) => Some(b),
        _ => None,
    });
    chunks.extend(SpillFile::write(memory, schema, batches)?.map(StateChunk::Spilled));
    Ok(())
}

/// The batches of `chunks`, in order, as one spill file.
pub fn merge_files(
    memory: &StateMemory,
    schema: &SchemaRef,
    chunks: &[StateChunk],
) -> Result<Option<SpillFile>> {
    let mut merged = SpillWriter::new(memory, schema)?;
    for chunk in chunks {
        for batch in chunk.batches()? {
            merged.write(&batch?)?;
        }
    }
    merged.finish()
}

/// Every batch of `chunks`, read into memory.
pub fn load(chunks: &[StateChunk]) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for c in chunks {
        for b in c.batches()? {
            out.push(b?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn slices_of_one_batch_count_its_buffers_once() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let n = 80_000;
        let whole = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter(
                    (0..n).map(|i| (i % 7 != 0).then_some(i)),
                )),
                Arc::new(arrow::array::StringArray::from_iter_values(
                    (0..n).map(|i| format!("value {i}")),
                )),
            ],
        )
        .unwrap();
        let slices: Vec<RecordBatch> = (0..10).map(|k| whole.slice(k * 8_000, 8_000)).collect();
        let once = distinct_memory_size([&whole]);
        assert!(once > 8 * n as usize, "{once}");
        assert_eq!(distinct_memory_size(&slices), once);
        let counted: usize = slices.iter().map(RecordBatch::get_array_memory_size).sum();
        assert!(counted > 9 * once, "each slice counts the whole: {counted}");
        // A batch of its own counts on top.
        let own = RecordBatch::try_new(
            whole.schema(),
            vec![
                Arc::new(Int64Array::from(vec![1])),
                Arc::new(arrow::array::StringArray::from(vec!["one"])),
            ],
        )
        .unwrap();
        assert!(distinct_memory_size([&whole, &own]) > once);
        let chunks = in_memory(slices);
        assert_eq!(chunks_memory(&chunks), once);
    }

    #[test]
    fn spilled_batches_read_back_and_the_file_goes_with_its_last_handle() {
        let memory = StateMemory::new(None).unwrap();
        let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let batch = |v: Vec<i64>| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v))]).unwrap()
        };
        assert!(SpillFile::write(&memory, &schema, [batch(vec![])])
            .unwrap()
            .is_none());
        let file = SpillFile::write(&memory, &schema, [batch(vec![1, 2]), batch(vec![3])])
            .unwrap()
            .unwrap();
        assert_eq!(file.rows(), 3);
        let chunk = StateChunk::Spilled(file.clone());
        let back = load(&[chunk.clone(), StateChunk::Batch(batch(vec![4]))]).unwrap();
        assert_eq!(
            back,
            vec![batch(vec![1, 2]), batch(vec![3]), batch(vec![4])]
        );
        let path = file.path().to_path_buf();
        assert!(path.exists());
        drop(file);
        assert!(path.exists(), "the chunk still holds it");
        drop(chunk);
        assert!(!path.exists());
    }
}
