//! A keyed operator run as several instances at once: each row's key is hashed into one of
//! [`KEY_GROUPS`] key groups, and each instance owns a contiguous range of them, so that a later
//! scale-out can move whole key groups between engines without re-keying.

use std::sync::Arc;

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::hash_utils::{create_hashes, RandomState};
use datafusion::physical_expr::PhysicalExpr;

use super::spill::{SpillWriter, StateChunk};
use super::{block_off_worker, Operator};
use crate::error::{Error, Result};
use crate::runtime::memory::StateMemory;

/// Key groups: the most instances a keyed operator can have (Flink's default max parallelism).
pub const KEY_GROUPS: usize = 128;

/// Seed of the key hash. Only rows of one run are routed by it: restored state is routed again.
const KEY_HASH: RandomState = RandomState::with_seed(0x7472_6962_7574_6172);

/// What keys a keyed operator's rows and state, so that its instances can split them.
#[derive(Debug, Clone)]
pub struct Keying {
    /// The key of an input row, evaluated over the operator's input: one list per input port
    /// (a join keys each side's rows by its own expressions, of the same types).
    pub inputs: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// The state columns holding the same key, in the same order.
    pub state: Vec<usize>,
}

/// Figures of one instance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceStats {
    /// Rows it received.
    pub rows_in: u64,
    /// Rows it emitted.
    pub rows_out: u64,
    /// Rows of state it holds.
    pub state_rows: u64,
    /// Bytes of state it holds in memory.
    pub state_bytes: u64,
    /// Bytes of state it spilled to disk.
    pub spilled_bytes: u64,
}

/// The key group of each row whose key is `columns`.
pub fn key_groups(columns: &[ArrayRef], rows: usize) -> Result<Vec<usize>> {
    let mut hashes = vec![0u64; rows];
    create_hashes(columns, &KEY_HASH, &mut hashes)?;
    Ok(hashes
        .iter()
        .map(|h| (h % KEY_GROUPS as u64) as usize)
        .collect())
}

/// The instance (of `instances`) that owns `key_group`: contiguous ranges, as Flink assigns them.
pub fn instance_of(key_group: usize, instances: usize) -> usize {
    key_group * instances / KEY_GROUPS
}

/// Several instances of one keyed operator.
pub struct Parallel {
    kind: &'static str,
    instances: Vec<Box<dyn Operator>>,
    keying: Keying,
    counts: Vec<(u64, u64)>,
    /// Rows in and out of batches not yet committed, per instance.
    pending: Vec<(u64, u64)>,
    /// Entered by the threads the instances run on (DataFusion may look for a runtime).
    runtime: Option<tokio::runtime::Handle>,
    /// Where restored state files are split between the instances.
    memory: Option<Arc<StateMemory>>,
}

impl Parallel {
    /// Runs `instances` (at least two, at most [`KEY_GROUPS`]) of one operator, keyed by `keying`.
    pub fn new(instances: Vec<Box<dyn Operator>>, keying: Keying) -> Result<Self> {
        if instances.len() < 2 || instances.len() > KEY_GROUPS {
            return Err(Error::Internal(format!(
                "{} parallel instances: expected 2 to {KEY_GROUPS}",
                instances.len()
            )));
        }
        let n = instances.len();
        Ok(Parallel {
            kind: instances[0].kind(),
            instances,
            keying,
            counts: vec![(0, 0); n],
            pending: vec![(0, 0); n],
            runtime: tokio::runtime::Handle::try_current().ok(),
            memory: None,
        })
    }

    /// The same, splitting restored state files into files of `memory` rather than memory.
    pub fn with_memory(mut self, memory: &Arc<StateMemory>) -> Self {
        self.memory = Some(memory.clone());
        self
    }

    /// The key columns of a state batch.
    fn state_keys(&self, batch: &RecordBatch) -> Vec<ArrayRef> {
        self.keying
            .state
            .iter()
            .map(|c| batch.column(*c).clone())
            .collect()
    }

    /// The rows of `batch` whose key is `keys`, split by instance.
    fn split(&self, batch: &RecordBatch, keys: &[ArrayRef]) -> Result<Vec<Option<RecordBatch>>> {
        let n = self.instances.len();
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (row, group) in key_groups(keys, batch.num_rows())?.into_iter().enumerate() {
            rows[instance_of(group, n)].push(row as u32);
        }
        rows.into_iter()
            .map(|r| {
                Ok(match r.len() {
                    0 => None,
                    len if len == batch.num_rows() => Some(batch.clone()),
                    _ => Some(take_record_batch(batch, &UInt32Array::from(r))?),
                })
            })
            .collect()
    }

    /// Runs `f` on each instance that has work, at once, and returns what each emitted.
    fn each<T: Send>(
        &mut self,
        work: Vec<Option<T>>,
        f: impl Fn(&mut dyn Operator, T) -> Result<Vec<RecordBatch>> + Sync,
    ) -> Result<Vec<(usize, Vec<RecordBatch>)>> {
        let jobs: Vec<(usize, &mut Box<dyn Operator>, T)> = self
            .instances
            .iter_mut()
            .zip(work)
            .enumerate()
            .filter_map(|(i, (op, w))| Some((i, op, w?)))
            .collect();
        if jobs.len() <= 1 {
            return jobs
                .into_iter()
                .map(|(i, op, w)| Ok((i, f(op.as_mut(), w)?)))
                .collect();
        }
        let runtime = &self.runtime;
        let f = &f;
        // The instances may wait on the runtime's I/O (a lookup) or tasks (a spilling plan).
        block_off_worker(|| {
            std::thread::scope(|scope| {
                let running: Vec<_> = jobs
                    .into_iter()
                    .map(|(i, op, w)| {
                        scope.spawn(move || {
                            let _entered = runtime.as_ref().map(|r| r.enter());
                            Ok((i, f(op.as_mut(), w)?))
                        })
                    })
                    .collect();
                running
                    .into_iter()
                    .map(|t| {
                        t.join().unwrap_or_else(|_| {
                            Err(Error::Internal("an operator instance panicked".into()))
                        })
                    })
                    .collect()
            })
        })
    }

    /// Flattens what the instances emitted, counting it.
    fn emitted(&mut self, out: Vec<(usize, Vec<RecordBatch>)>, pending: bool) -> Vec<RecordBatch> {
        let mut all = Vec::new();
        for (i, batches) in out {
            let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
            if pending {
                self.pending[i].1 += rows;
            } else {
                self.counts[i].1 += rows;
            }
            all.extend(batches);
        }
        all
    }

    /// Each instance's figures.
    pub fn instance_stats(&self) -> Vec<InstanceStats> {
        self.instances
            .iter()
            .zip(&self.counts)
            .map(|(op, (rows_in, rows_out))| InstanceStats {
                rows_in: *rows_in,
                rows_out: *rows_out,
                state_rows: op.state_rows() as u64,
                state_bytes: op.state_bytes() as u64,
                spilled_bytes: op.spilled_bytes(),
            })
            .collect()
    }
}

impl Operator for Parallel {
    fn emits_only_when_processing(&self) -> bool {
        self.instances[0].emits_only_when_processing()
    }

    fn kind(&self) -> &'static str {
        self.kind
    }

    fn process(&mut self, input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let port = input.min(self.keying.inputs.len().saturating_sub(1));
        let keys = self.keying.inputs[port]
            .iter()
            .map(|e| e.evaluate(&batch)?.into_array(batch.num_rows()))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let parts = self.split(&batch, &keys)?;
        for (i, part) in parts.iter().enumerate() {
            if let Some(p) = part {
                self.pending[i].0 += p.num_rows() as u64;
            }
        }
        let out = self.each(parts, |op, part| op.process(input, part))?;
        Ok(self.emitted(out, true))
    }

    fn commit_batch(&mut self) {
        for (i, op) in self.instances.iter_mut().enumerate() {
            op.commit_batch();
            let (rows_in, rows_out) = std::mem::take(&mut self.pending[i]);
            self.counts[i].0 += rows_in;
            self.counts[i].1 += rows_out;
        }
    }

    fn abort_batch(&mut self) {
        for (i, op) in self.instances.iter_mut().enumerate() {
            op.abort_batch();
            self.pending[i] = (0, 0);
        }
    }

    fn on_watermark(&mut self, watermark: i64) -> Result<Vec<RecordBatch>> {
        let all = vec![Some(()); self.instances.len()];
        let out = self.each(all, |op, ()| op.on_watermark(watermark))?;
        Ok(self.emitted(out, false))
    }

    fn on_input_end(&mut self, port: usize) -> Result<Vec<RecordBatch>> {
        let all = vec![Some(()); self.instances.len()];
        let out = self.each(all, |op, ()| op.on_input_end(port))?;
        Ok(self.emitted(out, false))
    }

    fn on_checkpoint(&mut self) -> Result<Vec<RecordBatch>> {
        let all = vec![Some(()); self.instances.len()];
        let out = self.each(all, |op, ()| op.on_checkpoint())?;
        Ok(self.emitted(out, false))
    }

    fn state_schema(&self) -> Option<SchemaRef> {
        self.instances[0].state_schema()
    }

    /// The instances' snapshots together: state is stored without its placement, and routed
    /// again on restore, so the number of instances may change between runs.
    fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
        let mut all = Vec::new();
        for op in &mut self.instances {
            all.extend(op.snapshot(full)?);
        }
        Ok(all)
    }

    /// Batches are split in memory; files (with a state memory) into a file per instance.
    fn restore(&mut self, state: Vec<StateChunk>, watermark: Option<i64>) -> Result<()> {
        let n = self.instances.len();
        let mut parts: Vec<Vec<StateChunk>> = vec![Vec::new(); n];
        for chunk in state {
            match (&chunk, &self.memory) {
                (StateChunk::Spilled(file), Some(memory)) => {
                    let schema = file.schema()?;
                    let mut writers = (0..n)
                        .map(|_| SpillWriter::new(memory, &schema))
                        .collect::<Result<Vec<_>>>()?;
                    for batch in file.batches()? {
                        let batch = batch?;
                        let keys = self.state_keys(&batch);
                        for (i, part) in self.split(&batch, &keys)?.into_iter().enumerate() {
                            if let Some(p) = part {
                                writers[i].write(&p)?;
                            }
                        }
                    }
                    for (i, w) in writers.into_iter().enumerate() {
                        parts[i].extend(w.finish()?.map(StateChunk::Spilled));
                    }
                }
                _ => {
                    for batch in chunk.batches()? {
                        let batch = batch?;
                        let keys = self.state_keys(&batch);
                        for (i, part) in self.split(&batch, &keys)?.into_iter().enumerate() {
                            parts[i].extend(part.map(StateChunk::Batch));
                        }
                    }
                }
            }
        }
        let work = parts.into_iter().map(Some).collect();
        self.each(work, |op, part| {
            op.restore(part, watermark)?;
            Ok(Vec::new())
        })?;
        Ok(())
    }

    /// One instance after the other: mostly a look at a reservation, not worth threads.
    fn fit_memory(&mut self) -> Result<()> {
        self.instances.iter_mut().try_for_each(|op| op.fit_memory())
    }

    fn wants_full_snapshot(&self) -> bool {
        self.instances.iter().any(|op| op.wants_full_snapshot())
    }

    fn state_rows(&self) -> usize {
        self.instances.iter().map(|op| op.state_rows()).sum()
    }

    fn state_bytes(&self) -> usize {
        self.instances.iter().map(|op| op.state_bytes()).sum()
    }

    fn spilled_bytes(&self) -> u64 {
        self.instances.iter().map(|op| op.spilled_bytes()).sum()
    }

    fn instances(&self) -> Vec<InstanceStats> {
        self.instance_stats()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_expr::expressions::Column;

    use super::*;
    use crate::runtime::operator::block_on_io;

    /// Waits on a runtime timer for each batch, as a lookup waits on its query, and passes the
    /// batch on.
    struct WaitsOnTheRuntime;

    impl Operator for WaitsOnTheRuntime {
        fn kind(&self) -> &'static str {
            "waits"
        }

        fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
            block_on_io(tokio::time::sleep(Duration::from_millis(5)));
            Ok(vec![batch])
        }
    }

    /// Instances that wait on the runtime's timers (or I/O), run from the runtime's only worker
    /// as a pipeline runs them: the worker must not sit in the wait itself, or no thread polls
    /// the timers and the instances never finish (the lookups test hung so in CI).
    #[test]
    fn instances_waiting_on_the_runtime_finish_when_run_from_its_worker() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..64))])
                .unwrap();
        let (done_tx, done) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let keying = Keying {
                inputs: vec![vec![Arc::new(Column::new("k", 0)) as Arc<dyn PhysicalExpr>]],
                state: vec![0],
            };
            let instances: Vec<Box<dyn Operator>> = (0..3)
                .map(|_| Box::new(WaitsOnTheRuntime) as Box<dyn Operator>)
                .collect();
            let mut parallel = Parallel::new(instances, keying).unwrap();
            let mut rows = 0;
            for _ in 0..20 {
                let out = parallel.process(0, batch.clone()).unwrap();
                parallel.commit_batch();
                rows += out.iter().map(|b| b.num_rows()).sum::<usize>();
            }
            let _ = done_tx.send(rows);
        });
        let rows = done.recv_timeout(Duration::from_secs(60));
        if rows.is_err() {
            // The stuck threads would keep a normal shutdown waiting.
            runtime.shutdown_background();
            panic!("the instances never finished: their timers were never polled");
        }
        assert_eq!(rows.unwrap(), 20 * 64);
    }
}
