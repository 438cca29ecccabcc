//! Change rows for upsert sinks: the last change per key within an epoch, and the staged epoch
//! file that makes a sink's prepare durable before its commit applies it.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, StringArray, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};

use crate::error::{ConnectorError, Result};
use crate::{PreparedCommit, SinkContext};

/// The change-kind column.
pub const OP: &str = "_op";

/// Keeps the last row per key of `batches` (in arrival order), in arrival order of those rows.
pub fn last_per_key(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    keys: &[String],
) -> Result<RecordBatch> {
    let all = concat_batches(schema, batches)?;
    if all.num_rows() == 0 || keys.is_empty() {
        return Ok(all);
    }
    let cols: Vec<ArrayRef> = keys
        .iter()
        .map(|k| {
            schema
                .index_of(k)
                .map(|i| all.column(i).clone())
                .map_err(|_| {
                    ConnectorError::Config(format!(
                        "key column \"{k}\" is not in the pipeline's output"
                    ))
                })
        })
        .collect::<Result<_>>()?;
    let conv = RowConverter::new(
        cols.iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    let rows = conv.convert_columns(&cols)?;
    let mut last: HashMap<arrow::row::Row<'_>, u32> = HashMap::with_capacity(rows.num_rows());
    for i in 0..rows.num_rows() {
        last.insert(rows.row(i), i as u32);
    }
    let mut idx: Vec<u32> = last.into_values().collect();
    idx.sort_unstable();
    Ok(take_record_batch(&all, &UInt32Array::from(idx))?)
}

/// Whether row `i` of `batch` is a delete (`_op = 'delete'`); rows without `_op` are upserts.
pub fn is_delete(batch: &RecordBatch, i: usize) -> bool {
    batch
        .column_by_name(OP)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .map(|a| a.is_valid(i) && a.value(i) == "delete")
        .unwrap_or(false)
}

/// The key an upsert sink applies changes by: its own `key` option, else the source's primary
/// key; every key column must be among the pipeline's output columns.
pub fn upsert_key(
    configured: &[String],
    ctx: &SinkContext,
    schema: &SchemaRef,
) -> Result<Vec<String>> {
    let key = if configured.is_empty() {
        ctx.primary_key.clone()
    } else {
        configured.to_vec()
    };
    if key.is_empty() {
        return Err(ConnectorError::Config(
            "mode = 'upsert' needs a key: key = 'col' on the sink, or a source with a primary key"
                .into(),
        ));
    }
    if let Some(k) = key.iter().find(|k| schema.field_with_name(k).is_err()) {
        return Err(ConnectorError::Config(format!(
            "upsert key column \"{k}\" is not among the pipeline's output columns"
        )));
    }
    Ok(key)
}

/// A sink's rows of the current epoch, held until prepare and then staged durably, reduced to
/// the last change per key when the sink is keyed. Commit reads the staged epoch back, as often
/// as recovery needs, until [`EpochStage::done`].
///
/// A keyed stage holds the epoch's rows in memory (the reduction needs them all); an unkeyed one
/// writes them through to the stage file as they come, so an epoch of any size costs no memory.
#[derive(Debug)]
pub struct EpochStage {
    files: StagedEpochs,
    schema: SchemaRef,
    key: Vec<String>,
    pending: Vec<RecordBatch>,
    writing: Option<StageWriter>,
}

impl EpochStage {
    /// Stages under the sink's state directory; `key` empty for an appending sink.
    pub fn open(ctx: &SinkContext, schema: SchemaRef, key: Vec<String>) -> Result<Self> {
        Ok(EpochStage {
            files: StagedEpochs::new(&ctx.state_dir)?,
            schema,
            key,
            pending: Vec::new(),
            writing: None,
        })
    }

    /// Takes rows of the current epoch: held when keyed, else written to the stage file.
    pub fn push(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if !self.key.is_empty() {
            self.pending.push(batch);
            return Ok(());
        }
        if self.writing.is_none() {
            self.writing = Some(self.files.begin(&self.schema)?);
        }
        if let Some(w) = self.writing.as_mut() {
            w.write(&batch)?;
        }
        Ok(())
    }

    /// Stages the epoch's rows (fsynced) and names the file in the prepared commit.
    pub fn prepare(&mut self, epoch: u64) -> Result<PreparedCommit> {
        if let Some(w) = self.writing.take() {
            let rows = w.rows;
            let file = w.finish(epoch)?;
            return Ok(PreparedCommit(
                serde_json::json!({ "file": file, "rows": rows }),
            ));
        }
        let batches = std::mem::take(&mut self.pending);
        if batches.is_empty() {
            return Ok(PreparedCommit(serde_json::json!({ "file": null })));
        }
        let batch = last_per_key(&self.schema, &batches, &self.key)?;
        let file = self.files.write(epoch, &batch)?;
        Ok(PreparedCommit(
            serde_json::json!({ "file": file, "rows": batch.num_rows() }),
        ))
    }

    /// The staged file a prepared commit names; `None` for an epoch without rows.
    pub fn staged_file(prepared: &PreparedCommit) -> Option<String> {
        prepared
            .0
            .get("file")
            .and_then(|f| f.as_str())
            .map(str::to_string)
    }

    /// Reads a staged epoch back.
    pub fn read(&self, file: &str) -> Result<Vec<RecordBatch>> {
        self.files.read(file)
    }

    /// Forgets staged epochs up to `epoch`: they are visible in the sink.
    pub fn done(&self, epoch: u64) {
        self.files.remove_through(epoch);
    }
}

/// Staged epochs of one writer, as Arrow IPC files under its state directory.
#[derive(Debug, Clone)]
pub struct StagedEpochs {
    dir: PathBuf,
}

impl StagedEpochs {
    /// Staging under `dir` (created when absent).
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ConnectorError::io(format!("creating {}", dir.display()), e))?;
        Ok(StagedEpochs {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, epoch: u64) -> PathBuf {
        self.dir.join(format!("epoch-{epoch:020}.arrow"))
    }

    /// Writes an epoch's rows durably (fsync); returns the file name for the prepared commit.
    pub fn write(&self, epoch: u64, batch: &RecordBatch) -> Result<String> {
        let mut w = self.begin(&batch.schema())?;
        w.write(batch)?;
        w.finish(epoch)
    }

    /// Starts staging the current epoch, whose number is given when it is finished.
    pub fn begin(&self, schema: &SchemaRef) -> Result<StageWriter> {
        let tmp = self.dir.join("epoch-current.tmp");
        let file = std::fs::File::create(&tmp)
            .map_err(|e| ConnectorError::io(format!("staging an epoch in {}", tmp.display()), e))?;
        let writer =
            arrow::ipc::writer::FileWriter::try_new(std::io::BufWriter::new(file), schema)?;
        Ok(StageWriter {
            files: self.clone(),
            tmp,
            writer,
            rows: 0,
        })
    }

    /// Reads a staged epoch back.
    pub fn read(&self, name: &str) -> Result<Vec<RecordBatch>> {
        let path = self.dir.join(name);
        let file = std::fs::File::open(&path).map_err(|e| {
            ConnectorError::io(
                format!(
                    "reading staged epoch {} (needed to redo its commit)",
                    path.display()
                ),
                e,
            )
        })?;
        let reader = arrow::ipc::reader::FileReader::try_new(std::io::BufReader::new(file), None)?;
        Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
    }

    /// Removes staged epochs up to and including `epoch` (they are committed).
    pub fn remove_through(&self, epoch: u64) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name
                .strip_prefix("epoch-")
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse::<u64>().ok());
            if n.is_some_and(|n| n <= epoch) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// One epoch being staged: an Arrow IPC file written as rows come, published under the epoch's
/// name (fsynced, then renamed) when the epoch is prepared.
pub struct StageWriter {
    files: StagedEpochs,
    tmp: PathBuf,
    writer: arrow::ipc::writer::FileWriter<std::io::BufWriter<std::fs::File>>,
    rows: usize,
}

impl std::fmt::Debug for StageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageWriter")
            .field("tmp", &self.tmp)
            .field("rows", &self.rows)
            .finish()
    }
}

impl StageWriter {
    /// Appends rows.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch)?;
        self.rows += batch.num_rows();
        Ok(())
    }

    /// Makes the staged rows durable as epoch `epoch`; returns the file name for the prepared
    /// commit.
    pub fn finish(mut self, epoch: u64) -> Result<String> {
        let path = self.files.path(epoch);
        let tmp = self.tmp.clone();
        let io = |e: std::io::Error| {
            ConnectorError::io(format!("staging epoch {epoch} in {}", tmp.display()), e)
        };
        self.writer.finish()?;
        let mut buf = self.writer.into_inner()?;
        buf.flush().map_err(io)?;
        buf.get_ref().sync_all().map_err(io)?;
        std::fs::rename(&self.tmp, &path).map_err(io)?;
        if let Ok(d) = std::fs::File::open(&self.files.dir) {
            let _ = d.sync_all();
        }
        Ok(path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn keeps_the_last_change_per_key_and_stages_it() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v", DataType::Int64, true),
            Field::new("_op", DataType::Utf8, false),
        ]));
        let b1 = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 1])),
                Arc::new(Int64Array::from(vec![10, 20, 11])),
                Arc::new(StringArray::from(vec!["insert", "insert", "update"])),
            ],
        )
        .unwrap();
        let b2 = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![2, 3])),
                Arc::new(Int64Array::from(vec![None, Some(30)])),
                Arc::new(StringArray::from(vec!["delete", "insert"])),
            ],
        )
        .unwrap();
        let out = last_per_key(&schema, &[b1, b2], &["id".into()]).unwrap();
        let ids = out.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.values().to_vec(), vec![1, 2, 3]);
        assert_eq!(
            out.column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0),
            11
        );
        assert!(is_delete(&out, 1) && !is_delete(&out, 0));

        let dir = tempfile::tempdir().unwrap();
        let staged = StagedEpochs::new(dir.path()).unwrap();
        let name = staged.write(7, &out).unwrap();
        assert_eq!(staged.read(&name).unwrap()[0], out);
        staged.remove_through(7);
        assert!(staged.read(&name).is_err());
    }

    #[test]
    fn an_unkeyed_stage_writes_rows_through_and_publishes_them_at_prepare() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let batch = |ids: Vec<i64>| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(ids))]).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let ctx = SinkContext {
            pipeline: "p".into(),
            writer_id: "w".into(),
            state_dir: dir.path().to_path_buf(),
            primary_key: Vec::new(),
        };
        let mut stage = EpochStage::open(&ctx, schema.clone(), Vec::new()).unwrap();
        stage.push(batch(vec![1, 2])).unwrap();
        stage.push(batch(vec![])).unwrap();
        stage.push(batch(vec![2, 3])).unwrap();
        // Written before prepare, under a name no epoch has.
        assert!(dir.path().join("epoch-current.tmp").exists());
        assert!(stage.pending.is_empty());
        let prepared = stage.prepare(4).unwrap();
        assert_eq!(prepared.0["rows"], 4);
        let file = EpochStage::staged_file(&prepared).unwrap();
        let back = stage.read(&file).unwrap();
        assert_eq!(back, vec![batch(vec![1, 2]), batch(vec![2, 3])]);
        // The next epoch starts a new file; one without rows stages nothing.
        assert!(EpochStage::staged_file(&stage.prepare(5).unwrap()).is_none());
        stage.done(4);
        assert!(stage.read(&file).is_err());
    }
}
