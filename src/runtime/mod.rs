//! The data plane: runs pipelines as tasks, keeps their live status and bad-record log, and
//! stores their checkpoints. It takes compiled jobs from the control plane and knows nothing of SQL text.

pub mod checkpoint;
pub mod durations;
pub mod event_time;
pub mod graph;
pub mod memory;
pub mod operator;
pub mod pipeline;
pub mod pipeline_watermarks;
pub mod plan;
pub mod readers;
pub mod source_table;
pub mod state;
pub mod status;
pub mod unfilled;
pub mod watermarks;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::catalog::{Catalog, PipelineState};
use crate::error::{Error, Result};
use checkpoint::CheckpointStore;
use pipeline::{PipelineJob, RunContext};
use status::{ErrorLog, PipelineStatus};

/// Bad records kept in memory for `tributary.errors`.
const ERROR_LOG_CAPACITY: usize = 10_000;

struct Running {
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

/// Runs pipelines and answers questions about them.
pub struct Runtime {
    data_dir: PathBuf,
    catalog: Arc<Catalog>,
    statuses: Mutex<HashMap<String, Arc<PipelineStatus>>>,
    running: Mutex<HashMap<String, Running>>,
    errors: Arc<ErrorLog>,
    /// Set at server shutdown: pipelines stopped now resume at the next start.
    shutting_down: std::sync::atomic::AtomicBool,
}

impl Runtime {
    /// A runtime storing checkpoints and error logs under `data_dir`.
    pub fn new(data_dir: PathBuf, catalog: Arc<Catalog>) -> Self {
        Runtime {
            data_dir,
            catalog,
            statuses: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            errors: Arc::new(ErrorLog::new(ERROR_LOG_CAPACITY)),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The checkpoint store of a pipeline.
    pub fn checkpoints(&self, pipeline_id: &str) -> Result<CheckpointStore> {
        CheckpointStore::local(&self.data_dir.join("checkpoints"), pipeline_id)
    }

    /// A pipeline's own directory for sink staging files.
    pub fn state_dir(&self, pipeline_id: &str) -> PathBuf {
        self.data_dir.join("state").join(pipeline_id)
    }

    fn error_file(&self, pipeline_id: &str) -> Result<PathBuf> {
        let dir = self.data_dir.join("errors");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(dir.join(format!("{pipeline_id}.jsonl")))
    }

    /// The shared log of bad records.
    pub fn errors(&self) -> &Arc<ErrorLog> {
        &self.errors
    }

    /// Loads the durable bad-record logs of `pipelines` (name, id) into `tributary.errors`, and
    /// their counters from the last checkpoint, so a restarted engine shows what happened before.
    pub async fn load_history(
        &self,
        pipelines: &[(String, String, String, PipelineState, Option<String>)],
    ) -> Result<()> {
        for (name, id, mode, state, error) in pipelines {
            let latest = match self.checkpoints(id)?.latest().await {
                Ok(latest) => latest,
                Err(e) => {
                    // The pipeline fails when it starts; the engine serves the others.
                    tracing::error!(pipeline = %name, error = %e, "Unreadable checkpoint.");
                    self.status(name, mode, *state, error.clone());
                    continue;
                }
            };
            let epoch = latest.as_ref().map(|c| c.epoch).unwrap_or(0);
            self.errors
                .extend(pipeline::read_error_file(&self.error_file(id)?, epoch));
            let status = self.status(name, mode, *state, error.clone());
            if let Some(cp) = latest {
                status.restore(
                    [cp.rows_in, cp.rows_out, cp.rows_errored, cp.rows_late],
                    cp.epoch,
                    cp.at,
                );
            }
        }
        Ok(())
    }

    /// Status of a pipeline, created on first use.
    pub fn status(
        &self,
        name: &str,
        mode: &str,
        state: PipelineState,
        error: Option<String>,
    ) -> Arc<PipelineStatus> {
        self.statuses
            .lock()
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(PipelineStatus::new(name, mode, state, error)))
            .clone()
    }

    /// Every known status, by pipeline name.
    pub fn statuses(&self) -> Vec<Arc<PipelineStatus>> {
        let mut all: Vec<_> = self.statuses.lock().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Whether a pipeline task is running now.
    pub fn is_running(&self, name: &str) -> bool {
        self.running
            .lock()
            .get(name)
            .map(|r| !*r.done.borrow())
            .unwrap_or(false)
    }

    /// Starts a pipeline task.
    pub fn start(self: &Arc<Self>, job: PipelineJob) -> Result<()> {
        let name = job.entry.name.clone();
        // Checked and claimed under one lock: of two concurrent starts, one runs, one is refused.
        let mut running = self.running.lock();
        if running.get(&name).is_some_and(|r| !*r.done.borrow()) {
            return Err(already_running(&name));
        }
        let status = self.status(&name, &job.settings.mode, PipelineState::Running, None);
        status.set_state(PipelineState::Running, None);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        let ctx = RunContext {
            status: status.clone(),
            errors: self.errors.clone(),
            checkpoints: self.checkpoints(&job.entry.id)?,
            error_file: self.error_file(&job.entry.id)?,
            state_dir: self.state_dir(&job.entry.id),
            stop: stop_rx,
        };
        running.insert(
            name.clone(),
            Running {
                stop: stop_tx,
                done: done_rx,
            },
        );
        drop(running);
        let this = self.clone();
        tokio::spawn(async move {
            let mut job = job;
            let outcome = loop {
                let outcome = pipeline::run(job.clone(), ctx.clone()).await;
                // The upstream table grew: re-plan over the new columns and resume from the last checkpoint.
                if let Err(Error::SchemaEvolved {
                    input: source,
                    description,
                    schema,
                }) = &outcome
                {
                    if let Some(replan) = job.replan.clone() {
                        tracing::warn!(pipeline = %name, source = %source, change = %description, "Source schema changed; re-planning the pipeline.");
                        match replan(source.clone(), schema.clone()).await {
                            Ok(j) => {
                                job = j;
                                continue;
                            }
                            Err(e) => break Err(e),
                        }
                    }
                }
                break outcome;
            };
            let (state, error) = match outcome {
                Ok(s) => (s, None),
                Err(e) => {
                    tracing::error!(pipeline = %name, error = %e, "Pipeline failed.");
                    (PipelineState::Failed, Some(e.to_string()))
                }
            };
            status.set_state(state, error.clone());
            let resume_later = state == PipelineState::Stopped
                && this.shutting_down.load(std::sync::atomic::Ordering::SeqCst);
            if resume_later {
                // Keep `running` in the catalog so the next start resumes it.
            } else if let Err(e) = this.catalog.set_pipeline_state(&name, state, error).await {
                tracing::error!(pipeline = %name, error = %e, "Could not record pipeline state.");
            }
            let _ = done_tx.send(true);
        });
        Ok(())
    }

    /// Asks a pipeline to stop after a final checkpoint and waits for it.
    pub async fn stop(&self, name: &str) -> Result<()> {
        let done = {
            let running = self.running.lock();
            let Some(r) = running.get(name) else {
                return Ok(());
            };
            let _ = r.stop.send(true);
            r.done.clone()
        };
        wait_done(done).await;
        Ok(())
    }

    /// Waits until a pipeline's task has ended (returns at once if none runs).
    pub async fn wait(&self, name: &str) {
        let done = self.running.lock().get(name).map(|r| r.done.clone());
        if let Some(d) = done {
            wait_done(d).await;
        }
    }

    /// Forgets a pipeline's status and errors (DROP PIPELINE).
    pub fn forget(&self, name: &str) {
        self.statuses.lock().remove(name);
        self.running.lock().remove(name);
        self.errors.remove_pipeline(name);
    }

    /// Stops every pipeline (server shutdown), each after a final checkpoint.
    pub async fn shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let names: Vec<String> = self.running.lock().keys().cloned().collect();
        for n in names {
            let _ = self.stop(&n).await;
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &PathBuf {
        &self.data_dir
    }
}

/// The error for starting a pipeline that runs already.
pub fn already_running(name: &str) -> Error {
    Error::InvalidState(format!("pipeline \"{name}\" is already running"))
}

async fn wait_done(mut done: watch::Receiver<bool>) {
    while !*done.borrow() {
        if done.changed().await.is_err() {
            break;
        }
    }
}
