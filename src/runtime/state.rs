//! Operator state in checkpoints: each stateful operator's snapshots are immutable Arrow IPC
//! files beside the checkpoints (a full snapshot, then the changes of later epochs), and each
//! checkpoint lists the files that rebuild every operator's state at its epoch.

use std::collections::BTreeMap;

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

/// An operator's state is rewritten whole (compacted into one file) once it spans this many files.
const COMPACT_AFTER_FILES: usize = 8;

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

/// Writes the state of every stateful operator of `graph` for `epoch`: a file of what changed
/// since `previous` (the last checkpoint's states), or the whole state when there is no
/// previous file list or it has grown long. Returns the states the new checkpoint records.
pub async fn write_states(
    store: &CheckpointStore,
    graph: &mut OperatorGraph,
    epoch: u64,
    previous: &BTreeMap<String, OperatorState>,
) -> Result<BTreeMap<String, OperatorState>> {
    let mut out = BTreeMap::new();
    for (id, schema) in graph.stateful() {
        let mut files = match previous.get(&id) {
            Some(OperatorState::Files { files }) => files.clone(),
            _ => Vec::new(),
        };
        let full = files.is_empty()
            || files.len() >= COMPACT_AFTER_FILES
            || graph.wants_full_snapshot(&id);
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
        for epoch in 1..=12u64 {
            let e = epoch as i64;
            graph.process(batch(&[e, e + 100, e])).unwrap();
            states = write_states(&store, &mut graph, epoch, &states)
                .await
                .unwrap();
            store
                .save(&checkpoint(epoch, states.clone()))
                .await
                .unwrap();
            let listed = files(&states);
            // A whole snapshot at epoch 1, changes up to 8 files, compacted at epoch 9.
            let expected = if epoch <= 8 { epoch } else { epoch - 8 };
            assert_eq!(listed.len() as u64, expected, "epoch {epoch}");
        }
        let listed = files(&states);
        assert_eq!(
            listed.iter().map(|f| f.rows).collect::<Vec<_>>(),
            vec![18, 2, 2, 2]
        );
        // Only the files that the kept checkpoints (10, 11, 12) list are left.
        let on_disk = std::fs::read_dir(tmp.path().join("p1/state/dedup0"))
            .unwrap()
            .count();
        assert_eq!(on_disk, 4);

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
            xs(&restored.process(batch(&[12, 13, 112, 113])).unwrap()),
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
        assert_eq!(xs(&graph.process(batch(&[1, 2, 4])).unwrap()), vec![25]);
        // The next checkpoint writes the whole state as a file.
        let next = write_states(&store, &mut graph, 4, &states).await.unwrap();
        assert_eq!(
            files(&next).iter().map(|f| f.rows).collect::<Vec<_>>(),
            vec![3]
        );
    }
}
