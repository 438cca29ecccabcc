//! One pipeline run: read the source in a task of its own, push batches through the compiled plan
//! into the sink, and close an epoch (prepare, checkpoint, commit) every checkpoint interval.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, AsArray};
use arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use arrow::record_batch::RecordBatch;
use chrono::Utc;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use tributary_connectors::{
    BadRecord, ConnectorError, ReadOptions, SinkConnector, SinkContext, SinkSpec, SourceBatch,
    SourceConnector, SourcePosition, SourceSpec, SplitRows,
};

use super::checkpoint::{Checkpoint, CheckpointStore};
use super::event_time::END_OF_TIME;
use super::graph::OperatorGraph;
use super::pipeline_watermarks::{InputMarks, PipelineWatermarks};
use super::plan::{PipelinePlan, RunOptions};
use super::readers::{aligned, next_message, read_order, readable, AbortOnDrop, SourceMessage};
use super::state::{restore_states, write_states, Compactions};
use super::status::{CommitRecord, ErrorEntry, ErrorLog, PipelineStatus};
use super::unfilled::UnfilledColumns;
use super::watermarks::Watermarks;
use crate::catalog::{PipelineEntry, PipelineState};
use crate::error::{Error, Result};

/// Batches buffered between the source task and the pipeline task: the backpressure bound. Two
/// keep the reader ahead of the pipeline as well as four did (q0 over the generator, JSON and CSV:
/// the same CPU time) and hold half the batches (q0 over JSON lines: 165 MB peak RSS against 228).
const CHANNEL_BATCHES: usize = 2;
/// An epoch closes early once it has read this many records.
const MAX_EPOCH_ROWS: u64 = 20_000_000;
/// Bad records kept (in `tributary.errors` and on disk) per epoch; beyond that they are only counted.
const MAX_EPOCH_ERRORS: usize = 1_000;

/// What to do with a record that cannot be decoded or processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Count it, keep it in `tributary.errors`, carry on.
    Skip,
    /// Fail the pipeline.
    Fail,
}

/// How a pipeline runs, from its WITH options.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// batch or streaming.
    pub mode: String,
    /// Time between checkpoints.
    pub checkpoint_interval: Duration,
    /// Bad record policy.
    pub on_error: OnError,
    /// Keep rows behind the watermark in `tributary.errors` (`on_late = 'errors'`) rather than
    /// only counting them.
    pub keep_late: bool,
    /// How long a split may give no rows before it stops holding the watermark back.
    pub idle_timeout: Duration,
    /// Instances of each keyed operator.
    pub parallelism: usize,
    /// How long an updating aggregate keeps a group that does not change.
    pub state_ttl: Option<Duration>,
    /// Bytes of operator state held in memory before it spills to disk.
    pub state_memory: Option<usize>,
}

/// Everything a pipeline run needs, resolved by the control plane.
#[derive(Clone)]
pub struct PipelineJob {
    /// The catalog entry.
    pub entry: PipelineEntry,
    /// Compiled query.
    pub plan: PipelinePlan,
    /// Settings.
    pub settings: PipelineSettings,
    /// The sources read, in the order of the plan's inputs.
    pub inputs: Vec<JobInput>,
    /// The key of the rows written (the GROUP BY columns, or the one source's primary key;
    /// empty when none), the default key of upsert sinks.
    pub primary_key: Vec<String>,
    /// The sink.
    pub sink_spec: SinkSpec,
    /// Its connector.
    pub sink_connector: Arc<dyn SinkConnector>,
    /// How to rebuild the job when the source's schema grows.
    pub replan: Option<Replan>,
}

/// One source a run reads.
#[derive(Clone)]
pub struct JobInput {
    /// The source.
    pub spec: SourceSpec,
    /// Its resolved schema.
    pub schema: SchemaRef,
    /// Its connector.
    pub connector: Arc<dyn SourceConnector>,
}

impl JobInput {
    /// The source's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

/// Rebuilds a job over the grown schema of one of its sources (provided by the control plane,
/// which owns planning).
pub type Replan = Arc<
    dyn Fn(String, SchemaRef) -> futures::future::BoxFuture<'static, Result<PipelineJob>>
        + Send
        + Sync,
>;

/// Files and stores a run writes to.
#[derive(Clone)]
pub struct RunContext {
    /// Live status.
    pub status: Arc<PipelineStatus>,
    /// Shared error log.
    pub errors: Arc<ErrorLog>,
    /// Checkpoints of this pipeline.
    pub checkpoints: CheckpointStore,
    /// Durable copy of this pipeline's bad records.
    pub error_file: PathBuf,
    /// The pipeline's directory for sink staging.
    pub state_dir: PathBuf,
    /// Flips to true when the pipeline is asked to stop.
    pub stop: watch::Receiver<bool>,
}

/// Runs a pipeline until its input ends, it is stopped, or it fails.
pub async fn run(job: PipelineJob, mut ctx: RunContext) -> Result<PipelineState> {
    let span = tracing::info_span!("pipeline", name = %job.entry.name);
    async move {
        let status = ctx.status.clone();
        let latest = ctx.checkpoints.latest().await?;
        restore_errors(&ctx, latest.as_ref().map(|c| c.epoch).unwrap_or(0));

        let mut sink = job.sink_connector.create(&job.sink_spec).await?;
        let sink_ctx = SinkContext {
            pipeline: job.entry.name.clone(),
            writer_id: job.entry.id.clone(),
            state_dir: ctx.state_dir.join("sink"),
            primary_key: job.primary_key.clone(),
        };
        sink.open(&sink_ctx, job.plan.output_schema.clone()).await?;

        let mut graph = job.plan.instantiate(RunOptions {
            parallelism: job.settings.parallelism,
            state_ttl: job.settings.state_ttl,
            state_memory: job.settings.state_memory,
        })?;
        let mut operator_states = Default::default();
        let mut compactions = Compactions::default();
        let mut epoch = 0u64;
        let n_inputs = job.inputs.len();
        let mut positions: Vec<Option<SourcePosition>> = vec![None; n_inputs];
        // The watermark of the rows read so far (UTC microseconds): rows before it are late.
        let mut watermark: Option<i64> = None;
        let mut marks: Vec<InputMarks> = vec![InputMarks::default(); n_inputs];
        if let Some(cp) = latest {
            // The last checkpoint's commit may not have happened before a crash: (re)do it; sinks skip it if done.
            sink.commit(cp.epoch, cp.sink.clone()).await?;
            epoch = cp.epoch;
            for (p, input) in positions.iter_mut().zip(&job.inputs) {
                *p = cp.sources.get(input.name()).cloned();
            }
            restore_states(&ctx.checkpoints, &mut graph, cp.epoch, &cp.operators, cp.watermark).await?;
            operator_states = cp.operators.clone();
            watermark = cp.watermark;
            for (m, input) in marks.iter_mut().zip(&job.inputs) {
                *m = match cp.inputs.get(input.name()) {
                    Some(kept) => kept.clone(),
                    // A checkpoint from before sources had marks of their own: one source.
                    None if n_inputs == 1 => InputMarks { watermark: cp.watermark, splits: cp.split_watermarks.clone() },
                    None => InputMarks::default(),
                };
            }
            status.restore([cp.rows_in, cp.rows_out, cp.rows_errored, cp.rows_late], cp.epoch, cp.at);
            tracing::info!(epoch, "Resuming from checkpoint.");
        }

        // One reader task per input, each into a channel of its own: the pipeline task takes
        // their batches as they come, so an epoch's cut is the positions of what it took. While
        // the table of a join gives its initial load, the other inputs wait; in a batch run the
        // larger side of a regular join waits for the smaller.
        let mut committed_positions = positions.clone();
        let bounded = job.settings.mode == "batch";
        let mut remaining = Vec::with_capacity(n_inputs);
        let tables = job.plan.table_inputs();
        let mut loading = vec![false; n_inputs];
        let mut receivers = Vec::with_capacity(n_inputs);
        let mut acks = Vec::with_capacity(n_inputs);
        let mut readers = Vec::with_capacity(n_inputs);
        for (i, (input, position)) in job.inputs.iter().zip(positions).enumerate() {
            let read = ReadOptions {
                bounded,
                preview: false,
                // A single source keeps the directory it always had.
                state_dir: Some(match n_inputs {
                    1 => ctx.state_dir.join("source"),
                    _ => ctx.state_dir.join(format!("source-{}", input.name())),
                }),
            };
            let mut source = input.connector.open(&input.spec, input.schema.clone(), position, read).await?;
            acks.push(source.ack());
            remaining.push(source.remaining_bytes().filter(|_| bounded));
            loading[i] = tables.contains(&i) && source.loading();
            let (tx, rx) = mpsc::channel::<SourceMessage>(CHANNEL_BATCHES);
            receivers.push(rx);
            readers.push(AbortOnDrop(tokio::spawn(
                async move {
                    loop {
                        let next = source.next_batch().await;
                        let end = !matches!(next, Ok(Some(_)));
                        if tx.send(next).await.is_err() || end {
                            break;
                        }
                    }
                }
                .instrument(tracing::info_span!("source", name = %input.name())),
            )));
        }
        let waits = read_order(&job.plan.regular_join_sides(), &remaining);
        for (input, first) in job.inputs.iter().zip(&waits).filter(|(_, w)| !w.is_empty()) {
            let first: Vec<&str> = first.iter().map(|&f| job.inputs[f].name()).collect();
            tracing::debug!(input = %input.name(), after = ?first, "Read after the smaller side of a join.");
        }
        let mut ended = vec![false; n_inputs];
        let mut turn = 0usize;

        let timed = job.plan.inputs.iter().map(|i| i.event_time.is_some());
        let mut watermarks = PipelineWatermarks::new(job.settings.idle_timeout, watermark, timed.zip(marks).collect(), Instant::now());
        let mut unfilled: Vec<UnfilledColumns> = job
            .inputs
            .iter()
            .zip(&job.plan.inputs)
            .map(|(input, planned)| UnfilledColumns::new(&input.schema, planned.scan_projection.as_deref()))
            .collect();
        loop {
            epoch += 1;
            let deadline = tokio::time::Instant::now() + job.settings.checkpoint_interval;
            let mut last_positions: Vec<Option<SourcePosition>> = vec![None; n_inputs];
            let mut epoch_errors = Vec::new();
            let mut epoch_rows = 0u64;
            let mut finished = false;
            let mut stopping = false;
            let mut emitted = 0u64;
            while epoch_rows < MAX_EPOCH_ROWS {
                let mut can_read = readable(&ended, &loading, &waits);
                if bounded {
                    can_read = aligned(can_read, &watermarks.ahead());
                }
                let held: Vec<bool> = can_read.iter().zip(&ended).map(|(r, e)| !r && !e).collect();
                watermarks.hold(&held, Instant::now());
                tokio::select! {
                    biased;
                    changed = ctx.stop.changed() => {
                        if changed.is_err() || *ctx.stop.borrow() {
                            stopping = true;
                            break;
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => break,
                    msg = next_message(&mut receivers, can_read, turn) => match msg {
                        (i, Some(Ok(Some(sb)))) => {
                            turn += 1;
                            loading[i] &= sb.loading;
                            epoch_rows += (sb.batch.num_rows() + sb.bad_records.len()) as u64;
                            let pos = sb.position.clone();
                            unfilled[i].observe(&sb.batch, job.inputs[i].name(), &status);
                            let batch = EpochBatch { epoch, watermark, watermarks: watermarks.input(i, Instant::now()) };
                            handle_batch(&job, i, &mut graph, &status, &mut *sink, sb, batch, &mut epoch_errors).await?;
                            status.set_operators(graph.stats());
                            last_positions[i] = Some(pos);
                            // The watermark moves after each batch; what it closes is written
                            // in this epoch, committed with the state and position behind it.
                            let now = Instant::now();
                            if let Some(w) = watermarks.advance(now) {
                                emitted += emit(&mut graph, &mut *sink, &status, Signal::Watermark(w)).await?;
                                watermark = Some(w);
                                status.set_watermark(watermark);
                            }
                            status.set_split_watermarks(job.inputs[i].name(), watermarks.marks(i).shown(now));
                        }
                        (i, Some(Ok(None)) | None) => {
                            ended[i] = true;
                            loading[i] = false;
                            if ended.iter().all(|e| *e) {
                                finished = true;
                                break;
                            }
                            emitted += emit(&mut graph, &mut *sink, &status, Signal::InputEnded(i)).await?;
                            // The sources still running decide the watermark now.
                            watermarks.end(i);
                            if let Some(w) = watermarks.advance(Instant::now()) {
                                emitted += emit(&mut graph, &mut *sink, &status, Signal::Watermark(w)).await?;
                                watermark = Some(w);
                                status.set_watermark(watermark);
                            }
                        }
                        (i, Some(Err(ConnectorError::SchemaEvolved { description, schema }))) => {
                            return Err(Error::SchemaEvolved { input: job.inputs[i].name().to_string(), description, schema });
                        }
                        (_, Some(Err(e))) => return Err(e.into()),
                    }
                }
            }
            // Splits fall idle with time, not only as batches come: a source that went quiet
            // stops holding the watermark back though no input arrives.
            if !finished && !stopping {
                let now = Instant::now();
                if let Some(w) = watermarks.advance(now) {
                    emitted += emit(&mut graph, &mut *sink, &status, Signal::Watermark(w)).await?;
                    watermark = Some(w);
                    status.set_watermark(watermark);
                }
                for (i, input) in job.inputs.iter().enumerate() {
                    status.set_split_watermarks(input.name(), watermarks.marks(i).shown(now));
                }
            }
            // At the end of the input every window closes and a join lets go of every row it
            // kept (an outer join's unmatched ones are written), event times or not; the
            // checkpoint keeps the rows' own watermark, so a later run over new input still
            // takes rows after it.
            if finished {
                emitted += emit(&mut graph, &mut *sink, &status, Signal::Watermark(END_OF_TIME)).await?;
            }
            // Updates due at every checkpoint (the groups an aggregate changed in the epoch).
            let checkpoint_started = Instant::now();
            emitted += emit(&mut graph, &mut *sink, &status, Signal::Checkpoint).await?;
            // An epoch that read nothing, moved no position and emitted nothing needs no checkpoint.
            let read = last_positions.iter().any(Option::is_some);
            let moved = last_positions.iter().zip(&committed_positions).any(|(l, c)| l.is_some() && l != c);
            let idle = epoch_rows == 0 && emitted == 0 && read && !moved && !graph.state_changed_without_input();
            // The cut: each input's position after its last batch taken (an input that gave
            // nothing in the epoch stays where it was).
            let cut: BTreeMap<String, SourcePosition> = job
                .inputs
                .iter()
                .zip(last_positions.iter().zip(&committed_positions))
                .filter_map(|(input, (l, c))| Some((input.name().to_string(), l.clone().or_else(|| c.clone())?)))
                .collect();
            if (read || (emitted > 0 && !cut.is_empty())) && !idle {
                let prepared = sink.prepare(epoch).await?;
                let marks = watermarks.checkpointed();
                persist_errors(&ctx, &epoch_errors)?;
                let operators = write_states(&ctx.checkpoints, &mut graph, epoch, &operator_states, &mut compactions).await?;
                let at = Utc::now();
                let cp = Checkpoint {
                    epoch,
                    at,
                    duration_ms: checkpoint_started.elapsed().as_millis() as u64,
                    sources: cut,
                    operators: operators.clone(),
                    sink: prepared.clone(),
                    rows_in: status.rows_in.load(Ordering::Relaxed),
                    rows_out: status.rows_out.load(Ordering::Relaxed),
                    rows_errored: status.rows_errored.load(Ordering::Relaxed),
                    rows_late: status.rows_late.load(Ordering::Relaxed),
                    watermark,
                    // One source: its splits also where checkpoints before several sources kept them.
                    split_watermarks: match marks.as_slice() {
                        [only] => only.splits.clone(),
                        _ => BTreeMap::new(),
                    },
                    inputs: job.inputs.iter().map(|i| i.name().to_string()).zip(marks).collect(),
                };
                let bytes = ctx.checkpoints.save(&cp).await?;
                let checkpoint_took = checkpoint_started.elapsed();
                status.checkpoint_durations.observe(checkpoint_took);
                operator_states = operators;
                let commit_started = Instant::now();
                if let Err(e) = sink.commit(epoch, prepared).await {
                    status.commit_failures.fetch_add(1, Ordering::Relaxed);
                    return Err(e.into());
                }
                let commit_took = commit_started.elapsed();
                status.commit_durations.observe(commit_took);
                status.committed(CommitRecord {
                    epoch,
                    at,
                    checkpoint_ms: checkpoint_took.as_millis() as u64,
                    commit_ms: commit_took.as_millis() as u64,
                    bytes: bytes as u64,
                    rows_in: cp.rows_in,
                    rows_out: cp.rows_out,
                    sink: sink.last_commit(),
                });
                for (i, last) in last_positions.into_iter().enumerate() {
                    let Some(pos) = last else { continue };
                    if let Some(ack) = &acks[i] {
                        ack(&pos);
                    }
                    committed_positions[i] = Some(pos);
                }
                status.checkpointed(epoch, at);
                ctx.errors.extend(epoch_errors);
                tracing::debug!(epoch, rows = epoch_rows, bytes, "Checkpoint committed.");
            } else {
                epoch -= 1;
            }
            if finished {
                return Ok(if job.settings.mode == "batch" { PipelineState::Completed } else { PipelineState::Stopped });
            }
            if stopping {
                return Ok(PipelineState::Stopped);
            }
        }
    }
    .instrument(span)
    .await
}

/// What the operators are told between batches.
enum Signal {
    /// The watermark moved here.
    Watermark(i64),
    /// A checkpoint is about to be taken.
    Checkpoint,
    /// An input ended (others go on).
    InputEnded(usize),
}

/// Signals the graph and writes what it emits; returns the rows.
async fn emit(
    graph: &mut OperatorGraph,
    sink: &mut dyn tributary_connectors::Sink,
    status: &PipelineStatus,
    signal: Signal,
) -> Result<u64> {
    let mut rows = 0;
    let out = match signal {
        Signal::Watermark(w) => graph.on_watermark(w)?,
        Signal::Checkpoint => graph.on_checkpoint()?,
        Signal::InputEnded(i) => graph.on_input_end(i)?,
    };
    for out in out {
        let n = out.num_rows() as u64;
        sink.write(out).await?;
        status.rows_out.fetch_add(n, Ordering::Relaxed);
        rows += n;
    }
    status.set_operators(graph.stats());
    Ok(rows)
}

/// Where a batch stands in event time.
struct EpochBatch<'a> {
    epoch: u64,
    /// The watermark: rows before it are late.
    watermark: Option<i64>,
    /// The source's splits' watermarks, which the batch's rows raise.
    watermarks: &'a mut Watermarks,
}

/// Drops the rows of `batch` behind the watermark (counted, and kept as errors when asked) and
/// raises the watermark of each split by its rows that remain.
fn apply_event_time(
    job: &PipelineJob,
    input: usize,
    status: &PipelineStatus,
    batch: RecordBatch,
    splits: &[SplitRows],
    at: &mut EpochBatch,
    errors: &mut Vec<ErrorEntry>,
) -> Result<RecordBatch> {
    let Some(event_time) = &job.plan.inputs[input].event_time else {
        return Ok(batch);
    };
    let late = match at.watermark {
        Some(w) if batch.num_rows() > 0 => Some((w, event_time.late(&batch, w)?)),
        _ => None,
    };
    // The watermark each row that is not late implies.
    let implied = event_time.watermarks(&batch)?;
    let implied: ArrayRef = match &late {
        Some((_, late)) => arrow::compute::nullif(&implied, late)?,
        None => Arc::new(implied),
    };
    let now = Instant::now();
    let whole = [SplitRows {
        split: String::new(),
        rows: batch.num_rows(),
    }];
    let mut offset = 0;
    for split in if splits.is_empty() {
        &whole[..]
    } else {
        splits
    } {
        let end = (offset + split.rows).min(batch.num_rows());
        if split.rows == 0 {
            at.watermarks.see(&split.split, now);
        } else {
            let rows = implied.slice(offset, end - offset);
            let highest = arrow::compute::max(rows.as_primitive::<TimestampMicrosecondType>());
            at.watermarks.rows(&split.split, highest, now);
        }
        offset = end;
    }
    let Some((w, late)) = late else {
        return Ok(batch);
    };
    let n = late.true_count();
    if n == 0 {
        return Ok(batch);
    }
    status.rows_late.fetch_add(n as u64, Ordering::Relaxed);
    if job.settings.keep_late {
        let rows = arrow::compute::filter_record_batch(&batch, &late)?;
        let room = MAX_EPOCH_ERRORS
            .saturating_sub(errors.len())
            .min(rows.num_rows());
        let now = Utc::now();
        let shown = super::event_time::watermark_time(w)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        errors.extend((0..room).map(|i| ErrorEntry {
            pipeline: job.entry.name.clone(),
            source: job.inputs[input].name().to_string(),
            epoch: at.epoch,
            position: format!("epoch {}", at.epoch),
            message: format!(
                "late: \"{}\" is before the watermark {shown}",
                event_time.name
            ),
            raw: row_json(&rows.slice(i, 1)),
            at: now,
        }));
    }
    Ok(arrow::compute::filter_record_batch(
        &batch,
        &arrow::compute::not(&late)?,
    )?)
}

/// Takes one batch of input `input` through the graph into the sink.
#[allow(clippy::too_many_arguments)]
async fn handle_batch(
    job: &PipelineJob,
    input: usize,
    graph: &mut OperatorGraph,
    status: &PipelineStatus,
    sink: &mut dyn tributary_connectors::Sink,
    sb: SourceBatch,
    mut at: EpochBatch<'_>,
    errors: &mut Vec<ErrorEntry>,
) -> Result<()> {
    let epoch = at.epoch;
    status.rows_in.fetch_add(
        (sb.batch.num_rows() + sb.bad_records.len()) as u64,
        Ordering::Relaxed,
    );
    status.bytes_in.fetch_add(sb.bytes, Ordering::Relaxed);
    if !sb.lag.is_empty() {
        status.set_lag(job.inputs[input].name(), sb.lag.clone());
    }
    if sb.phase.is_some() || sb.transient_error.is_some() {
        status.set_source_phase(sb.phase.clone(), sb.transient_error.clone());
    }
    if let Some(bad) = sb.bad_records.first() {
        if job.settings.on_error == OnError::Fail {
            return Err(ConnectorError::BadRecord {
                position: bad.position.clone(),
                message: bad.message.clone(),
            }
            .into());
        }
    }
    let batch = apply_event_time(job, input, status, sb.batch, &sb.splits, &mut at, errors)?;
    let batch = match &job.plan.inputs[input].scan_projection {
        Some(p) => batch.project(p)?,
        None => batch,
    };
    let (outputs, failed) = process_isolating(graph, input, batch)?;
    if let Some((_, msg)) = failed.first() {
        if job.settings.on_error == OnError::Fail {
            return Err(Error::Plan(format!(
                "pipeline query failed on a record: {msg}"
            )));
        }
    }
    let failed = failed.into_iter().map(|(raw, message)| BadRecord {
        position: format!("epoch {epoch}"),
        message,
        raw,
    });
    let bad: Vec<BadRecord> = sb.bad_records.into_iter().chain(failed).collect();
    status
        .rows_errored
        .fetch_add(bad.len() as u64, Ordering::Relaxed);
    let at = Utc::now();
    let room = MAX_EPOCH_ERRORS.saturating_sub(errors.len());
    errors.extend(bad.into_iter().take(room).map(|b| ErrorEntry {
        pipeline: job.entry.name.clone(),
        source: job.inputs[input].name().to_string(),
        epoch,
        position: b.position,
        message: b.message,
        raw: b.raw,
        at,
    }));
    for out in outputs {
        let n = out.num_rows() as u64;
        sink.write(out).await?;
        status.rows_out.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}

/// Runs the graph; when it fails on a batch, splits the batch to find the rows it fails on and
/// returns those (as JSON text, with the error) apart from the rows that went through. State
/// beyond its memory, or a disk that fails, is no row's fault: the pipeline fails.
fn process_isolating(
    graph: &mut OperatorGraph,
    input: usize,
    batch: RecordBatch,
) -> Result<ProcessedBatch> {
    match graph.process(input, batch.clone()) {
        Ok(out) => Ok((out, Vec::new())),
        Err(e) if e.is_resource_error() => Err(e),
        Err(e) if batch.num_rows() <= 1 => {
            Ok((Vec::new(), vec![(row_json(&batch), e.to_string())]))
        }
        Err(_) => {
            let mid = batch.num_rows() / 2;
            let (mut a, mut fa) = process_isolating(graph, input, batch.slice(0, mid))?;
            let (b, fb) =
                process_isolating(graph, input, batch.slice(mid, batch.num_rows() - mid))?;
            a.extend(b);
            fa.extend(fb);
            Ok((a, fa))
        }
    }
}

/// What reached the sink, and the rows the graph failed on (as JSON text, with the error).
type ProcessedBatch = (Vec<RecordBatch>, Vec<(String, String)>);

fn row_json(batch: &RecordBatch) -> String {
    let mut w = arrow_json::LineDelimitedWriter::new(Vec::new());
    if w.write(batch).is_ok() && w.finish().is_ok() {
        return String::from_utf8_lossy(&w.into_inner()).trim().to_string();
    }
    String::new()
}

fn persist_errors(ctx: &RunContext, entries: &[ErrorEntry]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&ctx.error_file)
        .map_err(|e| Error::io(format!("opening {}", ctx.error_file.display()), e))?;
    f.write_all(&to_jsonl(entries))
        .map_err(|e| Error::io(format!("writing {}", ctx.error_file.display()), e))
}

/// Loads the durable bad-record log up to the checkpointed epoch and drops what a crash left after it.
fn restore_errors(ctx: &RunContext, upto_epoch: u64) {
    let kept = read_error_file(&ctx.error_file, upto_epoch);
    let _ = std::fs::write(&ctx.error_file, to_jsonl(&kept));
    ctx.errors.remove_pipeline(&ctx.status.name);
    ctx.errors.extend(kept);
}

/// Entries as JSON lines, the durable log's format.
fn to_jsonl(entries: &[ErrorEntry]) -> Vec<u8> {
    let mut buf = Vec::new();
    for e in entries {
        if let Ok(line) = serde_json::to_vec(e) {
            buf.extend_from_slice(&line);
            buf.push(b'\n');
        }
    }
    buf
}

/// The bad records of a pipeline's durable log that belong to committed epochs.
pub fn read_error_file(path: &std::path::Path, upto_epoch: u64) -> Vec<ErrorEntry> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<ErrorEntry>(l).ok())
        .filter(|e| e.epoch <= upto_epoch)
        .collect()
}
