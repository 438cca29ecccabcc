//! UNNEST (how HOP gives a row once per window): DataFusion's UnnestExec run per batch.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;

use super::{run_plan, Operator};
use crate::error::{Error, Result};

/// Unnests list columns into one row per element.
pub struct Unnest {
    /// The planned UnnestExec; its one input is replaced per batch.
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
}

impl Unnest {
    /// An operator running `plan`, an UnnestExec over a placeholder input.
    pub fn new(plan: Arc<dyn ExecutionPlan>) -> Result<Self> {
        if plan.children().len() != 1 {
            return Err(Error::Internal(format!(
                "an unnest plan has one input, not {}",
                plan.children().len()
            )));
        }
        Ok(Unnest {
            plan,
            task: Arc::new(TaskContext::default()),
        })
    }
}

impl Operator for Unnest {
    fn emits_only_when_processing(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "unnest"
    }

    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let schema = batch.schema();
        run_plan(&self.plan, &schema, vec![batch], &self.task)
    }
}
