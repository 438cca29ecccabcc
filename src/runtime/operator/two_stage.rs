//! DataFusion's two-stage aggregation as the stateful aggregates run it: the Partial stage turns
//! rows into partial states, PartialReduce merges partial states, the Final stage turns partial
//! states into result rows. Any DataFusion aggregate works; none is written here.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::ExecutionPlan;

use super::spill::StateChunk;
use super::{run_plan, stream_plan, PlanOutput};
use crate::error::{Error, Result};
use crate::runtime::memory::StateMemory;

/// The three stages of one planned GROUP BY.
pub struct TwoStage {
    partial: Arc<dyn ExecutionPlan>,
    final_: Arc<dyn ExecutionPlan>,
    reduce: Arc<dyn ExecutionPlan>,
    input_schema: SchemaRef,
    state_schema: SchemaRef,
    groups: usize,
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// Where the Partial stage runs: unbounded, it holds one batch's groups.
    task: Arc<TaskContext>,
    /// Where the merges run: within the state memory's budget for them, spilling past it.
    merge_task: Arc<TaskContext>,
}

fn as_aggregate(plan: &Arc<dyn ExecutionPlan>, mode: AggregateMode) -> Result<&AggregateExec> {
    plan.downcast_ref::<AggregateExec>()
        .filter(|a| *a.mode() == mode)
        .ok_or_else(|| {
            Error::Internal(format!(
                "expected an AggregateExec in {mode:?} mode, found {}",
                plan.name()
            ))
        })
}

impl TwoStage {
    /// The stages of the Final aggregate of a planned GROUP BY, whose input is the Partial one.
    pub fn new(final_: Arc<dyn ExecutionPlan>) -> Result<Self> {
        let partial = as_aggregate(&final_, AggregateMode::Final)?.input().clone();
        let partial_agg = as_aggregate(&partial, AggregateMode::Partial)?;
        let state_schema = partial.schema();
        let reduce: Arc<dyn ExecutionPlan> = Arc::new(AggregateExec::try_new(
            AggregateMode::PartialReduce,
            partial_agg.group_expr().as_final(),
            partial_agg.aggr_expr().to_vec(),
            vec![None; partial_agg.aggr_expr().len()],
            partial.clone(),
            partial_agg.input_schema(),
        )?);
        if reduce.schema().fields() != state_schema.fields() {
            return Err(Error::Internal(
                "merged partial states do not have the partial states' columns".into(),
            ));
        }
        Ok(TwoStage {
            groups: partial_agg.group_expr().expr().len(),
            group_exprs: partial_agg
                .group_expr()
                .expr()
                .iter()
                .map(|(e, _)| e.clone())
                .collect(),
            input_schema: partial_agg.input().schema(),
            partial,
            final_,
            reduce,
            state_schema,
            task: Arc::new(TaskContext::default()),
            merge_task: Arc::new(TaskContext::default()),
        })
    }

    /// Runs the stages within `memory`'s budget for DataFusion's work, spilling through its
    /// disk manager when the merges need more.
    pub fn use_memory(&mut self, memory: &StateMemory) {
        self.merge_task = memory.task().clone();
    }

    /// The partial states' schema: the group columns, then each aggregate's state fields.
    pub fn state_schema(&self) -> &SchemaRef {
        &self.state_schema
    }

    /// The schema of the rows the Partial stage takes.
    pub fn input_schema(&self) -> &SchemaRef {
        &self.input_schema
    }

    /// The group expressions over the input rows (whose values lead the partial states).
    pub fn group_exprs(&self) -> &[Arc<dyn PhysicalExpr>] {
        &self.group_exprs
    }

    /// How many group columns lead the partial states.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Partial states of the rows of `batch`, one per group.
    pub fn partial(&self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        run_plan(&self.partial, &self.input_schema, vec![batch], &self.task)
    }

    /// Partial states merged into one per group.
    pub fn reduce(&self, states: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        run_plan(&self.reduce, &self.state_schema, states, &self.merge_task)
    }

    /// Partial states of `chunks` (files read a batch at a time) merged into one per group,
    /// streamed: each group comes once.
    pub fn reduce_chunks(&self, chunks: Vec<StateChunk>) -> Result<PlanOutput> {
        stream_plan(&self.reduce, &self.state_schema, chunks, &self.merge_task)
    }

    /// Result rows of partial states that hold each group once (a merge's output): no merge
    /// is left to do, so it runs as the Partial stage does, outside the merges' memory.
    pub fn finish_merged(&self, states: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        run_plan(&self.final_, &self.state_schema, states, &self.task)
    }

    /// Result rows of partial states, one per group.
    pub fn finish(&self, states: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        run_plan(&self.final_, &self.state_schema, states, &self.merge_task)
    }
}
