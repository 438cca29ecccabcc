//! The checkpoint store: one JSON document per pipeline epoch, holding every source position,
//! the operator state files and the sink's prepared commit, written atomically through
//! object_store, with the state files beside them.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use tributary_connectors::{PreparedCommit, SourcePosition};

use super::pipeline_watermarks::InputMarks;
use super::state::{files_of, OperatorState};
use crate::error::{Error, Result};

/// How many checkpoints are kept per pipeline.
const KEEP: usize = 3;

/// Everything needed to resume a pipeline after epoch `epoch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Epoch number, from 1.
    pub epoch: u64,
    /// When it was taken.
    pub at: DateTime<Utc>,
    /// Milliseconds the epoch's prepare + checkpoint write took.
    pub duration_ms: u64,
    /// Position of every source after the epoch.
    pub sources: BTreeMap<String, SourcePosition>,
    /// State of stateful operators, by operator id.
    #[serde(default)]
    pub operators: BTreeMap<String, OperatorState>,
    /// The sink's prepared commit for this epoch.
    pub sink: PreparedCommit,
    /// Cumulative counters at the end of the epoch.
    pub rows_in: u64,
    /// Cumulative rows handed to the sink.
    pub rows_out: u64,
    /// Cumulative bad records.
    pub rows_errored: u64,
    /// Cumulative rows that arrived behind the watermark.
    #[serde(default)]
    pub rows_late: u64,
    /// The watermark after the epoch (UTC microseconds), when the source has one.
    #[serde(default)]
    pub watermark: Option<i64>,
    /// The watermark of each split of the source (Kafka partitions), so that a restart does not
    /// let one that is ahead decide alone.
    #[serde(default)]
    pub split_watermarks: BTreeMap<String, i64>,
    /// Each source's watermark and its splits', by source (the top-level `watermark` is the
    /// pipeline's, the least of them).
    #[serde(default)]
    pub inputs: BTreeMap<String, InputMarks>,
}

/// Stores checkpoints of one pipeline under `<root>/<pipeline id>/`.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    /// Where the store is, for messages.
    root: std::path::PathBuf,
    dir: Path,
    /// State files being written that no checkpoint lists yet: garbage collection leaves them.
    held: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl CheckpointStore {
    /// A store under a local directory (the data dir's `checkpoints/`).
    pub fn local(root: &std::path::Path, pipeline_id: &str) -> Result<Self> {
        std::fs::create_dir_all(root)
            .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        let fs =
            LocalFileSystem::new_with_prefix(root).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(CheckpointStore {
            store: Arc::new(fs),
            root: root.to_path_buf(),
            dir: Path::from(pipeline_id),
            held: Default::default(),
        })
    }

    fn path(&self, epoch: u64) -> Path {
        self.dir.clone().join(format!("{epoch:020}.json"))
    }

    /// Writes checkpoint `cp` atomically, then prunes old ones and the state files no kept
    /// checkpoint lists. Returns the bytes written.
    pub async fn save(&self, cp: &Checkpoint) -> Result<usize> {
        let bytes = serde_json::to_vec(cp).map_err(|e| Error::Internal(e.to_string()))?;
        let n = bytes.len();
        self.store
            .put(&self.path(cp.epoch), PutPayload::from(bytes))
            .await
            .map_err(|e| Error::Internal(format!("writing checkpoint {}: {e}", cp.epoch)))?;
        let epochs = self.epochs().await?;
        if epochs.len() > KEEP {
            for e in &epochs[..epochs.len() - KEEP] {
                let _ = self.store.delete(&self.path(*e)).await;
            }
            self.collect_state_garbage().await?;
        }
        Ok(n)
    }

    /// Deletes the state files that no stored checkpoint lists (replaced by compaction, or left
    /// by a run that failed before its checkpoint). The whole set is computed before anything
    /// is deleted, from checkpoints that all parse: an unreadable one keeps every file.
    async fn collect_state_garbage(&self) -> Result<()> {
        let mut live = std::collections::HashSet::new();
        for epoch in self.epochs().await? {
            let Ok(cp) = self.read(epoch).await else {
                return Ok(());
            };
            live.extend(files_of(&cp.operators).map(str::to_string));
        }
        live.extend(
            self.held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
        let prefix = self.dir.clone().join("state");
        let files: Vec<_> = match self.store.list(Some(&prefix)).try_collect().await {
            Ok(f) => f,
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(Error::Internal(format!("listing state files: {e}"))),
        };
        let dir = format!("{}/", self.dir);
        for meta in files {
            let relative = meta
                .location
                .as_ref()
                .strip_prefix(&dir)
                .unwrap_or_default();
            if !live.contains(relative) {
                let _ = self.store.delete(&meta.location).await;
            }
        }
        Ok(())
    }

    /// Keeps the state file at `path` (being written, listed by no checkpoint yet) from garbage
    /// collection until [`CheckpointStore::release`].
    pub fn hold(&self, path: &str) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.insert(path.to_string());
    }

    /// Lets garbage collection delete the file at `path` again when no checkpoint lists it.
    pub fn release(&self, path: &str) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.remove(path);
    }

    /// Starts writing a state file in parts (immutable; `path` is inside the pipeline's
    /// directory): it appears whole when finished, or not at all.
    pub async fn upload(&self, path: &str) -> Result<StateUpload> {
        let failed = |e: object_store::Error| {
            Error::Internal(format!(
                "writing state file {}: {e}",
                self.describe_file(path)
            ))
        };
        let upload = self
            .store
            .put_multipart(&self.file_path(path))
            .await
            .map_err(failed)?;
        Ok(StateUpload {
            upload: WriteMultipart::new(upload),
            bytes: 0,
            file: self.describe_file(path),
        })
    }

    /// Copies a state file to the local file `to`, a part at a time; a missing or unreadable
    /// one is a damaged checkpoint.
    pub async fn download(&self, path: &str, to: &std::path::Path) -> Result<()> {
        use std::io::Write;
        let unreadable = |e: object_store::Error| Error::CheckpointUnreadable {
            file: self.describe_file(path),
            reason: e.to_string(),
        };
        let mut parts = self
            .store
            .get(&self.file_path(path))
            .await
            .map_err(unreadable)?
            .into_stream();
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(to)
                .map_err(|e| Error::io(format!("creating {}", to.display()), e))?,
        );
        while let Some(part) = parts.try_next().await.map_err(unreadable)? {
            out.write_all(&part)
                .map_err(|e| Error::io(format!("writing {}", to.display()), e))?;
        }
        out.flush()
            .map_err(|e| Error::io(format!("writing {}", to.display()), e))
    }

    fn file_path(&self, path: &str) -> Path {
        path.split('/')
            .fold(self.dir.clone(), |p, part| p.join(part))
    }

    /// A checkpoint's file, for messages.
    pub fn describe(&self, epoch: u64) -> String {
        self.root
            .join(self.path(epoch).as_ref())
            .display()
            .to_string()
    }

    /// A state file, for messages.
    pub fn describe_file(&self, path: &str) -> String {
        self.root
            .join(self.file_path(path).as_ref())
            .display()
            .to_string()
    }

    async fn read(&self, epoch: u64) -> std::result::Result<Checkpoint, String> {
        let bytes = self
            .store
            .get(&self.path(epoch))
            .await
            .map_err(|e| e.to_string())?
            .bytes()
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_slice::<Checkpoint>(&bytes).map_err(|e| e.to_string())
    }

    async fn epochs(&self) -> Result<Vec<u64>> {
        // The checkpoints themselves, not the state files under state/.
        let metas = match self.store.list_with_delimiter(Some(&self.dir)).await {
            Ok(listed) => listed.objects,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(Error::Internal(format!("listing checkpoints: {e}"))),
        };
        let mut epochs: Vec<u64> = metas
            .iter()
            .filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse().ok())
            .collect();
        epochs.sort_unstable();
        Ok(epochs)
    }

    /// The newest checkpoint, if any. Checkpoints are written whole (a rename), so one that
    /// cannot be read is damage, and an error naming its file: falling back to an older one
    /// would replay epochs whose output is already committed downstream.
    pub async fn latest(&self) -> Result<Option<Checkpoint>> {
        let Some(epoch) = self.epochs().await?.last().copied() else {
            return Ok(None);
        };
        self.read(epoch)
            .await
            .map(Some)
            .map_err(|reason| Error::CheckpointUnreadable {
                file: self.describe(epoch),
                reason,
            })
    }

    /// Every stored checkpoint's summary (for `tributary.checkpoints`).
    pub async fn list(&self) -> Result<Vec<Checkpoint>> {
        let mut out = Vec::new();
        for epoch in self.epochs().await? {
            if let Ok(cp) = self.read(epoch).await {
                out.push(cp);
            }
        }
        Ok(out)
    }

    /// Removes every checkpoint and state file (DROP PIPELINE).
    pub async fn clear(&self) -> Result<()> {
        for e in self.epochs().await? {
            let _ = self.store.delete(&self.path(e)).await;
        }
        let files: Vec<_> = self
            .store
            .list(Some(&self.dir.clone().join("state")))
            .try_collect()
            .await
            .unwrap_or_default();
        for meta in files {
            let _ = self.store.delete(&meta.location).await;
        }
        Ok(())
    }
}

/// A state file being written in parts.
pub struct StateUpload {
    upload: WriteMultipart,
    bytes: u64,
    file: String,
}

impl StateUpload {
    /// Appends `bytes`, waiting while too many parts are in flight.
    pub async fn write(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.upload
            .wait_for_capacity(4)
            .await
            .map_err(|e| Error::Internal(format!("writing state file {}: {e}", self.file)))?;
        self.bytes += bytes.len() as u64;
        self.upload.put(bytes.into());
        Ok(())
    }

    /// Gives the file up: nothing of it stays (a failed upload's parts included).
    pub async fn abort(self) {
        if let Err(e) = self.upload.abort().await {
            tracing::warn!(file = %self.file, error = %e, "Could not abort a state file's upload.");
        }
    }

    /// Completes the file; returns its size.
    pub async fn finish(self) -> Result<u64> {
        let file = self.file;
        self.upload
            .finish()
            .await
            .map_err(|e| Error::Internal(format!("writing state file {file}: {e}")))?;
        Ok(self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(epoch: u64) -> Checkpoint {
        Checkpoint {
            epoch,
            at: Utc::now(),
            duration_ms: 1,
            sources: BTreeMap::new(),
            operators: BTreeMap::new(),
            sink: PreparedCommit::default(),
            rows_in: epoch * 10,
            rows_out: epoch * 10,
            rows_errored: 0,
            rows_late: 0,
            watermark: None,
            split_watermarks: BTreeMap::new(),
            inputs: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn an_unreadable_latest_checkpoint_is_an_error_not_a_fallback() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::local(tmp.path(), "p1").unwrap();
        assert!(store.latest().await.unwrap().is_none());
        for e in 1..=3 {
            store.save(&checkpoint(e)).await.unwrap();
        }
        assert_eq!(store.latest().await.unwrap().unwrap().epoch, 3);
        let file = tmp.path().join("p1").join(format!("{:020}.json", 3));
        std::fs::write(&file, b"{\"epoch\": 3, \"at\"").unwrap();
        let e = store.latest().await.unwrap_err();
        assert!(matches!(e, Error::CheckpointUnreadable { .. }), "{e}");
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
    }
}
