//! Operator state in checkpoints: each stateful operator's snapshots are immutable Arrow IPC
//! files beside the checkpoints (a full snapshot, then the changes of later epochs), and each
//! checkpoint lists the files that rebuild every operator's state at its epoch. When the list
//! grows long, the whole state is written in the background and replaces the files it covers.

use std::collections::{BTreeMap, HashMap};

use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::{FileWriter, IpcWriteOptions};
use arrow::ipc::CompressionType;
use serde::{Deserialize, Serialize};

use super::checkpoint::{CheckpointStore, StateUpload};
use super::graph::OperatorGraph;
use super::memory::StateMemory;
use super::operator::distinct::rows_from_row_format;
use super::operator::spill::{SpillFile, StateChunk};
use crate::error::{Error, Result};

/// An operator's state is rewritten whole (compacted into one file, in the background) once it
/// spans this many files.
const COMPACT_AFTER_FILES: usize = 8;
/// Past this many files (compactions failing or slower than the checkpoints), the next
/// checkpoint writes the whole state itself.
const MAX_FILES: usize = 4 * COMPACT_AFTER_FILES;

/// A state file is uploaded in parts of about this size.
const UPLOAD_PART: usize = 8 << 20;

/// One state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    /// Path inside the pipeline's checkpoint directory.
    pub path: String,
    /// Rows it holds.
    pub rows: u64,
    /// Its size.
    pub bytes: u64,
}

/// An operator's state as a checkpoint records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OperatorState {
    /// State files: a full snapshot, then the changes of later epochs, in order.
    Files {
        /// The files.
        files: Vec<StateFile>,
    },
    /// How checkpoints stored a DISTINCT's rows before state files: hex-encoded keys in Arrow's
    /// row format. Read on resume; the next checkpoint writes files instead.
    RowFormatKeys {
        /// The keys.
        seen: Vec<String>,
    },
}

/// Operator states being compacted in the background, by operator: each the whole state as of
/// a checkpoint, written to one file by a task of its own while the pipeline goes on. A later
/// checkpoint lists that file in place of the files it covers, so that a checkpoint's cost
/// follows what changed, not the size of the state. Dropping it stops the tasks.
#[derive(Default)]
pub struct Compactions {
    running: HashMap<String, Compaction>,
}

struct Compaction {
    /// The epoch whose state it holds.
    epoch: u64,
    /// The first file of the list it shortens: a list that starts elsewhere since was
    /// rewritten whole, and the compaction is of no use.
    base: String,
    path: String,
    task: tokio::task::JoinHandle<Result<StateFile>>,
}

impl Compactions {
    /// The compaction of `id`'s state, if it has finished, with its result.
    async fn finished(&mut self, id: &str) -> Option<(Compaction, Result<StateFile>)> {
        if !self.running.get(id)?.task.is_finished() {
            return None;
        }
        let mut c = self.running.remove(id)?;
        let result = (&mut c.task)
            .await
            .unwrap_or_else(|e| Err(Error::Internal(format!("compacting state: {e}"))));
        Some((c, result))
    }

    /// Stops the compaction of `id`'s state, if one runs.
    fn cancel(&mut self, id: &str, store: &CheckpointStore) {
        if let Some(c) = self.running.remove(id) {
            c.task.abort();
            store.release(&c.path);
        }
    }

    /// Waits for every running compaction to finish.
    #[cfg(test)]
    pub async fn wait(&mut self) {
        for c in self.running.values_mut() {
            while !c.task.is_finished() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }
}

impl Drop for Compactions {
    fn drop(&mut self) {
        for c in self.running.values() {
            c.task.abort();
        }
    }
}

/// The epoch a state file was written at (its name starts with it).
fn epoch_of(path: &str) -> Option<u64> {
    path.rsplit('/').next()?.get(..20)?.parse().ok()
}

/// Writes the state of every stateful operator of `graph` for `epoch`: a file of what changed
/// since `previous` (the last checkpoint's states), or the whole state when there is no
/// previous file list (or the operator needs it, or the list has grown far too long). A list
/// that has grown long is compacted in the background (`compactions`). Returns the states the
/// new checkpoint records.
pub async fn write_states(
    store: &CheckpointStore,
    graph: &mut OperatorGraph,
    epoch: u64,
    previous: &BTreeMap<String, OperatorState>,
    compactions: &mut Compactions,
) -> Result<BTreeMap<String, OperatorState>> {
    let mut out = BTreeMap::new();
    for (id, schema) in graph.stateful() {
        let mut files = match previous.get(&id) {
            Some(OperatorState::Files { files }) => files.clone(),
            _ => Vec::new(),
        };
        if let Some((done, result)) = compactions.finished(&id).await {
            match result {
                Ok(whole) if files.first().is_some_and(|f| f.path == done.base) => {
                    files.retain(|f| epoch_of(&f.path).is_some_and(|e| e > done.epoch));
                    files.insert(0, whole);
                }
                // The list was rewritten whole meanwhile.
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    operator = %id,
                    error = %e,
                    "Compacting state files in the background failed; a later checkpoint tries again."
                ),
            }
            // Listed by this checkpoint, or garbage once it is saved.
            store.release(&done.path);
        }
        let full = files.is_empty() || files.len() >= MAX_FILES || graph.wants_full_snapshot(&id);
        if full {
            compactions.cancel(&id, store);
        }
        let chunks = graph.snapshot(&id, full)?;
        if full {
            files.clear();
        }
        let rows: usize = chunks.iter().map(StateChunk::rows).sum();
        if rows > 0 {
            let path = format!("state/{id}/{epoch:020}.arrow");
            let bytes = write_file(store, &path, &schema, &chunks).await?;
            files.push(StateFile {
                path,
                rows: rows as u64,
                bytes,
            });
        }
        if !full && files.len() >= COMPACT_AFTER_FILES && !compactions.running.contains_key(&id) {
            // Nothing is left unsnapshotted: this is the state as of this epoch.
            let whole = graph.snapshot(&id, true)?;
            let rows: usize = whole.iter().map(StateChunk::rows).sum();
            if rows == 0 {
                files.clear();
            } else {
                let path = format!("state/{id}/{epoch:020}.full.arrow");
                store.hold(&path);
                let task = tokio::spawn({
                    let (store, path) = (store.clone(), path.clone());
                    async move {
                        let bytes = write_file(&store, &path, &schema, &whole).await?;
                        tracing::debug!(path, bytes, "State compacted in the background.");
                        Ok(StateFile {
                            path,
                            rows: rows as u64,
                            bytes,
                        })
                    }
                });
                let base = files[0].path.clone();
                compactions.running.insert(
                    id.clone(),
                    Compaction {
                        epoch,
                        base,
                        path,
                        task,
                    },
                );
            }
        }
        out.insert(id, OperatorState::Files { files });
    }
    Ok(out)
}

/// Restores every stateful operator of `graph` from a checkpoint's states. A stateful operator
/// the checkpoint holds nothing for, or a file that cannot be read, is an error: resuming with
/// empty state would emit again what was already emitted. Files are fetched to local disk and
/// handed over as they are: operators read them a batch at a time.
pub async fn restore_states(
    store: &CheckpointStore,
    graph: &mut OperatorGraph,
    epoch: u64,
    states: &BTreeMap<String, OperatorState>,
    watermark: Option<i64>,
) -> Result<()> {
    for (id, schema) in graph.stateful() {
        let chunks = match states.get(&id) {
            None => {
                return Err(Error::CheckpointUnreadable {
                    file: store.describe(epoch),
                    reason: format!("it holds no state for operator {id}"),
                })
            }
            Some(OperatorState::Files { files }) => {
                let memory = graph.memory().clone();
                let mut chunks = Vec::new();
                for f in files {
                    chunks.push(StateChunk::Spilled(
                        fetch(store, &memory, &schema, f).await?,
                    ));
                }
                chunks
            }
            Some(OperatorState::RowFormatKeys { seen }) => {
                let keys = seen
                    .iter()
                    .map(|k| unhex(k))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| Error::CheckpointUnreadable {
                        file: store.describe(epoch),
                        reason: format!("the state of {id} is not hex"),
                    })?;
                vec![StateChunk::Batch(rows_from_row_format(schema, &keys)?)]
            }
        };
        graph.restore(&id, chunks, watermark)?;
    }
    Ok(())
}

/// A state file fetched to a local temporary file, checked to hold `schema`'s columns.
async fn fetch(
    store: &CheckpointStore,
    memory: &StateMemory,
    schema: &SchemaRef,
    f: &StateFile,
) -> Result<SpillFile> {
    let local = memory.temp_file("restoring operator state")?;
    let to = local
        .path()
        .ok_or_else(|| Error::Internal("state files are fetched to local files".into()))?;
    store.download(&f.path, to).await?;
    let unreadable = |reason: String| Error::CheckpointUnreadable {
        file: store.describe_file(&f.path),
        reason,
    };
    let file = SpillFile::adopt(local, f.rows as usize)?;
    let found = file.schema().map_err(|e| unreadable(e.to_string()))?;
    if found.fields() != schema.fields() {
        return Err(unreadable(format!(
            "its columns ({}) are not the operator's ({})",
            describe(&found),
            describe(schema)
        )));
    }
    Ok(file)
}

/// The files every state in `states` lists.
pub fn files_of(states: &BTreeMap<String, OperatorState>) -> impl Iterator<Item = &str> {
    states.values().flat_map(|s| match s {
        OperatorState::Files { files } => files.iter().map(|f| f.path.as_str()).collect(),
        OperatorState::RowFormatKeys { .. } => Vec::new(),
    })
}

/// Writes `chunks` as one Arrow IPC file, zstd-compressed, uploaded in parts as it is encoded;
/// returns its size.
async fn write_file(
    store: &CheckpointStore,
    path: &str,
    schema: &SchemaRef,
    chunks: &[StateChunk],
) -> Result<u64> {
    let mut upload = store.upload(path).await?;
    match encode_into(&mut upload, schema, chunks).await {
        Ok(()) => upload.finish().await,
        Err(e) => {
            upload.abort().await;
            Err(e)
        }
    }
}

/// Encodes `chunks` into `upload`, a part at a time.
async fn encode_into(
    upload: &mut StateUpload,
    schema: &SchemaRef,
    chunks: &[StateChunk],
) -> Result<()> {
    let options = IpcWriteOptions::default().try_with_compression(Some(CompressionType::ZSTD))?;
    let mut writer = FileWriter::try_new_with_options(Vec::new(), schema, options)?;
    for chunk in chunks {
        for batch in chunk.batches()? {
            writer.write(&batch?)?;
            if writer.get_ref().len() >= UPLOAD_PART {
                upload.write(std::mem::take(writer.get_mut())).await?;
            }
        }
    }
    writer.finish()?;
    upload.write(writer.into_inner()?).await
}

fn describe(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use tributary_connectors::PreparedCommit;

    use super::*;
    use crate::runtime::checkpoint::Checkpoint;
    use crate::runtime::graph::tests::{batch, distinct_then_divide, xs};
    use crate::runtime::plan::RunOptions;

    fn checkpoint(epoch: u64, operators: BTreeMap<String, OperatorState>) -> Checkpoint {
        Checkpoint {
            epoch,
            at: Utc::now(),
            duration_ms: 1,
            sources: BTreeMap::new(),
            operators,
            sink: PreparedCommit::default(),
            rows_in: 0,
            rows_out: 0,
            rows_errored: 0,
            rows_late: 0,
            watermark: None,
            split_watermarks: BTreeMap::new(),
            inputs: BTreeMap::new(),
        }
    }

    fn files(states: &BTreeMap<String, OperatorState>) -> Vec<StateFile> {
        match &states["dedup0"] {
            OperatorState::Files { files } => files.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn state_files_hold_the_changes_compact_and_are_collected() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::local(tmp.path(), "p1").unwrap();
        let mut graph = distinct_then_divide()
            .instantiate(RunOptions {
                parallelism: 1,
                ..Default::default()
            })
            .unwrap();
        let mut states = BTreeMap::new();
        let mut compactions = Compactions::default();
        for epoch in 1..=12u64 {
            let e = epoch as i64;
            graph.process(0, batch(&[e, e + 100, e])).unwrap();
            states = write_states(&store, &mut graph, epoch, &states, &mut compactions)
                .await
                .unwrap();
            // The compaction started at epoch 8 finishes before that checkpoint is saved,
            // which collects garbage: the file it wrote, listed by no checkpoint yet, stays.
            compactions.wait().await;
            store
                .save(&checkpoint(epoch, states.clone()))
                .await
                .unwrap();
            let listed = files(&states);
            // A whole snapshot at epoch 1, changes up to 8 files; epoch 8's state written
            // whole in the background replaces the first 8 at epoch 9.
            let expected = if epoch <= 8 { epoch } else { epoch - 7 };
            assert_eq!(listed.len() as u64, expected, "epoch {epoch}");
        }
        let listed = files(&states);
        assert_eq!(
            listed.iter().map(|f| f.rows).collect::<Vec<_>>(),
            vec![16, 2, 2, 2, 2]
        );
        assert!(listed[0].path.ends_with("00000000000000000008.full.arrow"));
        // Only the files that the kept checkpoints (10, 11, 12) list are left.
        let on_disk = std::fs::read_dir(tmp.path().join("p1/state/dedup0"))
            .unwrap()
            .count();
        assert_eq!(on_disk, 5);

        let mut restored = distinct_then_divide()
            .instantiate(RunOptions {
                parallelism: 1,
                ..Default::default()
            })
            .unwrap();
        restore_states(&store, &mut restored, 12, &states, None)
            .await
            .unwrap();
        assert_eq!(restored.stats()[0].state_rows, 24);
        assert_eq!(
            xs(&restored.process(0, batch(&[12, 13, 112, 113])).unwrap()),
            vec![7, 0]
        );

        // Damage is an error naming the file, never an empty state.
        let damaged = tmp.path().join("p1").join(&listed[1].path);
        std::fs::write(&damaged, b"not arrow").unwrap();
        let e = restore_states(&store, &mut restored, 12, &states, None)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::CheckpointUnreadable { .. }), "{e}");
        assert!(
            e.to_string().contains(&damaged.display().to_string()),
            "{e}"
        );
        let e = restore_states(&store, &mut restored, 12, &BTreeMap::new(), None)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("no state for operator dedup0"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn distinct_keys_of_checkpoints_before_state_files_still_restore() {
        // How checkpoints stored a DISTINCT's keys before: hex of Arrow's row format.
        let converter = arrow::row::RowConverter::new(vec![arrow::row::SortField::new(
            arrow::datatypes::DataType::Int64,
        )])
        .unwrap();
        let rows = converter.convert_columns(batch(&[1, 2]).columns()).unwrap();
        let hex: Vec<String> = rows
            .iter()
            .map(|r| r.as_ref().iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        let states: BTreeMap<String, OperatorState> =
            serde_json::from_value(serde_json::json!({ "dedup0": { "seen": hex } })).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::local(tmp.path(), "p1").unwrap();
        let mut graph = distinct_then_divide()
            .instantiate(RunOptions {
                parallelism: 1,
                ..Default::default()
            })
            .unwrap();
        restore_states(&store, &mut graph, 3, &states, None)
            .await
            .unwrap();
        assert_eq!(xs(&graph.process(0, batch(&[1, 2, 4])).unwrap()), vec![25]);
        // The next checkpoint writes the whole state as a file.
        let next = write_states(&store, &mut graph, 4, &states, &mut Compactions::default())
            .await
            .unwrap();
        assert_eq!(
            files(&next).iter().map(|f| f.rows).collect::<Vec<_>>(),
            vec![3]
        );
    }
}
