//! The checkpoint store: one JSON document per pipeline epoch, holding every source position,
//! operator state and the sink's prepared commit, written atomically through object_store.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tributary_connectors::{PreparedCommit, SourcePosition};

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
    pub operators: BTreeMap<String, serde_json::Value>,
    /// The sink's prepared commit for this epoch.
    pub sink: PreparedCommit,
    /// Cumulative counters at the end of the epoch.
    pub rows_in: u64,
    /// Cumulative rows handed to the sink.
    pub rows_out: u64,
    /// Cumulative bad records.
    pub rows_errored: u64,
}

/// Stores checkpoints of one pipeline under `<root>/<pipeline id>/`.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    dir: Path,
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
            dir: Path::from(pipeline_id),
        })
    }

    fn path(&self, epoch: u64) -> Path {
        self.dir.clone().join(format!("{epoch:020}.json"))
    }

    /// Writes checkpoint `cp` atomically, then prunes old ones. Returns the bytes written.
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
        }
        Ok(n)
    }

    async fn epochs(&self) -> Result<Vec<u64>> {
        let metas: Vec<_> = match self.store.list(Some(&self.dir)).try_collect().await {
            Ok(m) => m,
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

    /// The newest complete checkpoint, if any.
    pub async fn latest(&self) -> Result<Option<Checkpoint>> {
        for epoch in self.epochs().await?.into_iter().rev() {
            let bytes = match self.store.get(&self.path(epoch)).await {
                Ok(r) => r
                    .bytes()
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?,
                Err(_) => continue,
            };
            match serde_json::from_slice::<Checkpoint>(&bytes) {
                Ok(cp) => return Ok(Some(cp)),
                Err(e) => tracing::warn!(epoch, error = %e, "Skipping unreadable checkpoint."),
            }
        }
        Ok(None)
    }

    /// Every stored checkpoint's summary (for `tributary.checkpoints`).
    pub async fn list(&self) -> Result<Vec<Checkpoint>> {
        let mut out = Vec::new();
        for epoch in self.epochs().await? {
            if let Ok(r) = self.store.get(&self.path(epoch)).await {
                if let Ok(bytes) = r.bytes().await {
                    if let Ok(cp) = serde_json::from_slice::<Checkpoint>(&bytes) {
                        out.push(cp);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes every checkpoint (DROP PIPELINE).
    pub async fn clear(&self) -> Result<()> {
        for e in self.epochs().await? {
            let _ = self.store.delete(&self.path(e)).await;
        }
        Ok(())
    }
}
