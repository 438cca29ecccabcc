//! The operator trait: one step of a pipeline's dataflow, fed Arrow batches, whose state is
//! snapshotted as Arrow batches at each checkpoint.

pub mod change_aggregate;
pub mod change_join;
pub mod change_times;
pub mod change_top_n;
pub mod distinct;
pub mod distinct_marks;
pub mod key_index;
pub mod key_runs;
pub mod keyed_rows;
mod lookup_cache;
pub mod lookup_join;
pub mod open_states;
pub mod parallel;
pub mod row_groups;
pub mod sessions;
pub mod spill;
pub mod stateless;
pub mod stream_join;
pub mod temporal_join;
pub mod top_n;
pub mod two_stage;
pub mod unnest;
pub mod updating_aggregate;
pub mod versioned_join;
pub mod window_aggregate;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{
    collect, execute_stream, ExecutionPlan, SendableRecordBatchStream,
};
use futures::StreamExt;

use crate::error::Result;
use parallel::{InstanceStats, Keying};
use spill::StateChunk;

/// One operator of a running pipeline. The graph calls [`Operator::process`] for each batch on
/// each input, then either [`Operator::commit_batch`] or, when any operator failed on the batch,
/// [`Operator::abort_batch`]: a batch that fails leaves no trace in any operator's state, so
/// that its rows that succeed on their own, when it is split to isolate the bad ones, still pass.
pub trait Operator: Send {
    /// What it is, as `tributary.operators` shows it: filter, project, distinct...
    fn kind(&self) -> &'static str;

    /// Processes a batch that arrived on input `input` (0 for single-input operators) and
    /// returns what it emits. State changes stay pending until the batch is committed.
    fn process(&mut self, input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>>;

    /// Makes the pending state changes of the batches processed since the last call permanent.
    fn commit_batch(&mut self) {}

    /// Drops the pending state changes: an operator failed on the batch.
    fn abort_batch(&mut self) {}

    /// The watermark (UTC microseconds; [`crate::runtime::event_time::END_OF_TIME`] at the end of
    /// a bounded input) advanced to `watermark`: emits what it completes. Called between
    /// batches, after the batches before it were committed.
    fn on_watermark(&mut self, _watermark: i64) -> Result<Vec<RecordBatch>> {
        Ok(Vec::new())
    }

    /// Whether everything it emits comes out of [`Operator::process`] (nothing on a watermark,
    /// checkpoint or input end): then, once its inputs' sources ended, no more rows come out
    /// of it, and operators after it learn so ([`Operator::on_input_end`]).
    fn emits_only_when_processing(&self) -> bool {
        false
    }

    /// Every row that will reach input `port` in this run has arrived (the sources it reads
    /// ended, through operators that emit only when processing): emits what that completes.
    /// Called between batches, once per port.
    fn on_input_end(&mut self, _port: usize) -> Result<Vec<RecordBatch>> {
        Ok(Vec::new())
    }

    /// A checkpoint is about to be taken: emits what is due at every checkpoint (an updating
    /// aggregate's changed groups). Called after [`Operator::on_watermark`].
    fn on_checkpoint(&mut self) -> Result<Vec<RecordBatch>> {
        Ok(Vec::new())
    }

    /// Schema of the operator's state batches; `None` for a stateless operator.
    fn state_schema(&self) -> Option<SchemaRef> {
        None
    }

    /// The committed state as chunks of [`Operator::state_schema`] (batches in memory, or
    /// files of state spilled to disk): when `full`, all of it; otherwise what changed since
    /// the previous snapshot. Restoring a full snapshot followed by the changes taken after it,
    /// in order, rebuilds the state.
    fn snapshot(&mut self, _full: bool) -> Result<Vec<StateChunk>> {
        Ok(Vec::new())
    }

    /// Rebuilds the state from snapshots (a full one, then changes, in the order taken), as it
    /// was at a checkpoint whose watermark was `watermark`. Called once, on a fresh operator.
    fn restore(&mut self, _state: Vec<StateChunk>, _watermark: Option<i64>) -> Result<()> {
        Ok(())
    }

    /// Brings the state held in memory within the operator's share of the run's
    /// [`crate::runtime::memory::StateMemory`], spilling state to disk when it can; fails with
    /// [`crate::error::Error::StateMemoryExhausted`] when it cannot. Called after each batch
    /// is committed and after each watermark and checkpoint.
    fn fit_memory(&mut self) -> Result<()> {
        Ok(())
    }

    /// Rows of state held (committed), in memory or spilled.
    fn state_rows(&self) -> usize {
        0
    }

    /// Bytes of state held in memory (committed), approximately.
    fn state_bytes(&self) -> usize {
        0
    }

    /// Bytes of state spilled to disk.
    fn spilled_bytes(&self) -> u64 {
        0
    }

    /// For a keyed operator, what keys its rows and state: it can then run as several
    /// instances, each with the keys of its key groups ([`parallel::Parallel`]).
    fn keying(&self) -> Option<Keying> {
        None
    }

    /// Whether the next snapshot must hold the whole state (state left in a way that change
    /// files cannot record, such as groups past their TTL).
    fn wants_full_snapshot(&self) -> bool {
        false
    }

    /// Figures of each parallel instance; empty when the operator runs as one.
    fn instances(&self) -> Vec<InstanceStats> {
        Vec::new()
    }
}

/// Runs a DataFusion plan, whose one input is replaced by `batches` (of `schema`), to completion
/// on this thread. A fresh plan each time: executed plans can keep state (dynamic filters).
/// DataFusion's streams take part in tokio's cooperative scheduling: inside a tokio task, an
/// exhausted budget defers their wake-up to the worker's next park, which never comes while
/// this thread waits here; so the plan runs outside the budget.
pub fn run_plan(
    plan: &Arc<dyn ExecutionPlan>,
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    task: &Arc<TaskContext>,
) -> Result<Vec<RecordBatch>> {
    let input = MemorySourceConfig::try_new_exec(&[batches], schema.clone(), None)?;
    let plan = plan.clone().replace_children(
        vec![input],
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
    )?;
    let out = wait(collect(plan, task.clone()), task)?;
    Ok(out.into_iter().filter(|b| b.num_rows() > 0).collect())
}

/// The wall clock in UTC microseconds (processing time, as state TTLs count it).
pub(crate) fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Runs a DataFusion plan whose inputs are placeholders (leaves without children), replaced in
/// order, leftmost first, by `inputs` (schema and batches each), to completion on this thread,
/// as [`run_plan`] does.
pub fn run_plan_inputs(
    plan: &Arc<dyn ExecutionPlan>,
    inputs: Vec<(SchemaRef, Vec<RecordBatch>)>,
    task: &Arc<TaskContext>,
) -> Result<Vec<RecordBatch>> {
    let leaves = inputs
        .into_iter()
        .map(|(schema, batches)| {
            Ok(MemorySourceConfig::try_new_exec(&[batches], schema, None)?
                as Arc<dyn ExecutionPlan>)
        })
        .collect::<Result<Vec<_>>>()?;
    run_plan_on(plan, leaves, task)
}

/// Runs a DataFusion plan whose inputs are placeholders (leaves without children), replaced in
/// order, leftmost first, by `leaves`, to completion on this thread, as [`run_plan`] does.
pub fn run_plan_on(
    plan: &Arc<dyn ExecutionPlan>,
    leaves: Vec<Arc<dyn ExecutionPlan>>,
    task: &Arc<TaskContext>,
) -> Result<Vec<RecordBatch>> {
    use datafusion::common::tree_node::{Transformed, TreeNode};

    let mut inputs = leaves.into_iter();
    let plan = plan.clone().transform_up(|node| {
        if !node.children().is_empty() {
            // A join keeps its build side once built (and counts its probes in it): each run
            // starts afresh.
            return Ok(Transformed::yes(node.reset_state()?));
        }
        match inputs.next() {
            Some(leaf) => Ok(Transformed::yes(leaf)),
            None => Err(datafusion::error::DataFusionError::Internal(
                "a plan with more inputs than batches for them".into(),
            )),
        }
    })?;
    let out = wait(collect(plan.data, task.clone()), task)?;
    Ok(out.into_iter().filter(|b| b.num_rows() > 0).collect())
}

/// Runs a DataFusion plan, whose one input is replaced by the batches of `chunks` (of `schema`,
/// files read one batch at a time), and returns its output batches one at a time: with a budget
/// in `task`, DataFusion's aggregations spill rather than hold everything.
pub fn stream_plan(
    plan: &Arc<dyn ExecutionPlan>,
    schema: &SchemaRef,
    chunks: Vec<StateChunk>,
    task: &Arc<TaskContext>,
) -> Result<PlanOutput> {
    let input = Arc::new(ChunkInput {
        schema: schema.clone(),
        chunks,
    });
    let input = StreamingTableExec::try_new(schema.clone(), vec![input], None, [], false, None)?;
    let plan = plan.clone().replace_children(
        vec![Arc::new(input)],
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
    )?;
    Ok(PlanOutput {
        stream: execute_stream(plan, task.clone())?,
        task: task.clone(),
    })
}

/// Runs `f`, which blocks this thread waiting on other threads or on I/O the runtime drives,
/// without holding up the runtime. On a worker of the multi-threaded runtime the worker's core
/// (its queued tasks, and the turn to poll the I/O and timer driver) first moves to another
/// thread (`block_in_place`); a worker that just blocked would leave the driver unpolled when the
/// other workers are parked, and every wait on I/O or a timer, this one's too, would never end.
pub(crate) fn block_off_worker<R>(f: impl FnOnce() -> R) -> R {
    let on_worker = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if on_worker {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Waits on this thread for `f`, I/O the runtime drives.
pub(crate) fn block_on_io<F: std::future::Future>(f: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            block_off_worker(|| handle.block_on(f))
        }
        _ => futures::executor::block_on(f),
    }
}

/// Waits on this thread for `f`, a plan running in `task`. A plan with a bounded memory pool
/// may spill, and DataFusion then hands work to tokio tasks: on a worker of the multi-threaded
/// runtime, the worker's queued tasks first move to another thread (`block_in_place`), or those
/// tasks would wait forever behind this wait.
fn wait<F: std::future::Future>(f: F, task: &TaskContext) -> F::Output {
    use datafusion::execution::memory_pool::MemoryLimit;
    let run = || futures::executor::block_on(tokio::task::unconstrained(f));
    let may_spill = !matches!(task.memory_pool().memory_limit(), MemoryLimit::Infinite);
    if may_spill {
        block_off_worker(run)
    } else {
        run()
    }
}

/// A plan's output batches, pulled on this thread (outside tokio's cooperative budget, as in
/// [`run_plan`]).
pub struct PlanOutput {
    stream: SendableRecordBatchStream,
    task: Arc<TaskContext>,
}

impl Iterator for PlanOutput {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let next = wait(self.stream.next(), &self.task);
            match next {
                Some(Ok(b)) if b.num_rows() == 0 => continue,
                other => return other.map(|r| r.map_err(Into::into)),
            }
        }
    }
}

/// State chunks as a plan's input partition.
#[derive(Debug)]
struct ChunkInput {
    schema: SchemaRef,
    chunks: Vec<StateChunk>,
}

impl PartitionStream for ChunkInput {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let chunks = self.chunks.clone();
        let batches = futures::stream::iter(chunks).flat_map(|c| {
            let batches: Box<dyn Iterator<Item = Result<RecordBatch>> + Send> = match c.batches() {
                Ok(b) => b,
                Err(e) => Box::new(std::iter::once(Err(e))),
            };
            futures::stream::iter(
                batches.map(|b| {
                    b.map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
                }),
            )
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batches))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use arrow::datatypes::SchemaRef;
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_plan::aggregates::AggregateExec;
    use datafusion::physical_plan::ExecutionPlan;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// `state` of `op` as a checkpoint holds it: one file of `op`'s state schema, each
    /// batch checked against it.
    pub fn through_files(
        memory: &crate::runtime::memory::StateMemory,
        op: &dyn super::Operator,
        state: Vec<super::StateChunk>,
    ) -> Vec<super::StateChunk> {
        let schema = op.state_schema().expect("a stateful operator");
        let batches = state
            .iter()
            .flat_map(|c| c.batches().unwrap().map(|b| b.unwrap()));
        super::spill::SpillFile::write(memory, &schema, batches)
            .unwrap()
            .map(super::StateChunk::Spilled)
            .into_iter()
            .collect()
    }

    /// The seed of a randomised test: `TRIBUTARY_SEED`, or a random one; printed, so that a
    /// failure can be replayed.
    pub fn seed() -> u64 {
        let seed: u64 = std::env::var("TRIBUTARY_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        eprintln!("seed {seed} (TRIBUTARY_SEED={seed} replays it)");
        seed
    }

    /// A context over empty tables of `tables` (name, schema) that plans as the SQL front end
    /// does: one partition, no physical optimizer.
    pub fn planning_context(tables: &[(&str, SchemaRef)]) -> SessionContext {
        let state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(1))
            .with_default_features()
            .with_physical_optimizer_rules(vec![])
            .build();
        let ctx = SessionContext::new_with_state(state);
        for (name, schema) in tables {
            let table = MemTable::try_new(schema.clone(), vec![vec![]]).unwrap();
            ctx.register_table(*name, Arc::new(table)).unwrap();
        }
        ctx
    }

    /// `orders(order_id, customer)`, the stream side of the join tests.
    pub fn orders() -> SchemaRef {
        Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("order_id", arrow::datatypes::DataType::Int32, true),
            arrow::datatypes::Field::new("customer", arrow::datatypes::DataType::Int32, true),
        ]))
    }

    /// `customers(id, name)`, the table side of the join tests.
    pub fn customers() -> SchemaRef {
        Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int32, true),
            arrow::datatypes::Field::new("name", arrow::datatypes::DataType::Utf8, true),
        ]))
    }

    /// The hash join of `sql` over empty `tables`, planned as the SQL front end plans it.
    pub async fn join_plan(tables: &[(&str, SchemaRef)], sql: &str) -> Arc<dyn ExecutionPlan> {
        let ctx = planning_context(tables);
        let mut join = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        while join
            .downcast_ref::<datafusion::physical_plan::joins::HashJoinExec>()
            .is_none()
        {
            join = join.children()[0].clone();
        }
        join
    }

    /// The ROW_NUMBER plan of `sql` over table `r` of `input` columns (with the row number
    /// before them, as the SQL front end adds it), planned with the sort under its window (here
    /// by DataFusion's sort enforcement), kept to its rows partitioned by column 0.
    pub async fn row_number_spec(
        input: &[arrow::datatypes::Field],
        sql: &str,
    ) -> super::top_n::TopNSpec {
        use arrow::datatypes::{DataType, Field, Schema};
        let state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(1))
            .with_default_features()
            .build();
        let ctx = SessionContext::new_with_state(state);
        // Every input column nullable, as the SQL front end plans it.
        let mut fields: Vec<Field> = input
            .iter()
            .map(|f| f.clone().with_nullable(true))
            .collect();
        fields.push(Field::new(
            super::top_n::RANK_BEFORE,
            DataType::UInt64,
            false,
        ));
        let table = MemTable::try_new(Arc::new(Schema::new(fields)), vec![vec![]]).unwrap();
        ctx.register_table("r", Arc::new(table)).unwrap();
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let mut output = input.to_vec();
        output.push(Field::new("rn", DataType::UInt64, false));
        super::top_n::TopNSpec {
            plan,
            partition: vec![0],
            output: Arc::new(Schema::new(output)),
        }
    }

    /// Rows of `batches` as their cells' text joined by spaces, sorted.
    pub fn rows_as_text(batches: &[arrow::record_batch::RecordBatch]) -> Vec<String> {
        let mut out: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                (0..b.num_rows()).map(move |i| {
                    b.columns()
                        .iter()
                        .map(|c| arrow::util::display::array_value_to_string(c, i).unwrap())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
            })
            .collect();
        out.sort();
        out
    }

    /// The Final aggregate of `sql` (a GROUP BY over table `t` of `schema`), planned as the SQL
    /// front end plans it: Final over Partial, no physical optimizer.
    pub async fn aggregate_plan(schema: SchemaRef, sql: &str) -> Arc<dyn ExecutionPlan> {
        let ctx = planning_context(&[("t", schema)]);
        let mut node = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        while node.downcast_ref::<AggregateExec>().is_none() {
            node = node.children()[0].clone();
        }
        node
    }
}
