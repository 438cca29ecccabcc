//! Numbering rows with DataFusion's window function: the ROW_NUMBER plan without its sort, and
//! candidate rows sorted here in one piece and numbered by it (shared by `top_n` and
//! `change_top_n`).

use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, UInt64Array};
use arrow::compute::{concat, concat_batches, take};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_plan::sorts::sort::sort_batch;
use datafusion::physical_plan::ExecutionPlan;

use crate::error::{Error, Result};
use crate::runtime::operator::run_plan_on;

/// The numbering plan without its sort, and the sort's order: the operator sorts itself.
pub(in crate::runtime::operator) fn split_sort(
    plan: &Arc<dyn ExecutionPlan>,
) -> Result<(Arc<dyn ExecutionPlan>, LexOrdering)> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::physical_plan::sorts::sort::SortExec;

    let mut order = None;
    let plan = plan
        .clone()
        .transform_up(|node| match node.downcast_ref::<SortExec>() {
            Some(sort) => {
                order = Some(sort.expr().clone());
                Ok(Transformed::yes(sort.input().clone()))
            }
            None => Ok(Transformed::no(node)),
        })?
        .data;
    match order {
        Some(order) => Ok((plan, order)),
        None => Err(Error::Internal(
            "a ROW_NUMBER plan without the sort under its window".into(),
        )),
    }
}

/// Numbers `candidates` (of `schema`, the plan's input) with `plan` (its sort split off):
/// sorted here in one piece by `order`, then given to the window as a source known to be
/// sorted (DataFusion's SortExec would merge the runs of its split input on tokio tasks,
/// which wait behind this thread's wait for the plan).
pub(in crate::runtime::operator) fn number_rows(
    plan: &Arc<dyn ExecutionPlan>,
    order: &LexOrdering,
    schema: &SchemaRef,
    candidates: &[RecordBatch],
    task: &Arc<TaskContext>,
) -> Result<Vec<RecordBatch>> {
    let candidates = concat_batches(schema, candidates)?;
    let sorted = sort_batch(&candidates, order, None)?;
    let source = MemorySourceConfig::try_new(&[vec![sorted]], schema.clone(), None)?
        .try_with_sort_information(vec![order.clone()])?;
    run_plan_on(plan, vec![DataSourceExec::from_data_source(source)], task)
}

/// Numbers `candidates` as [`number_rows`] does, giving the plan only the columns it reads
/// (`read`; the others go as NULLs, so no row is copied whole to be sorted and numbered).
/// The plan carries the last column (`RANK_BEFORE`) through untouched, so it goes in holding
/// each candidate's position and comes out holding the candidate's own value again. Returns
/// the numbered rows (their unread columns NULL) and the position of each among `candidates`.
pub(in crate::runtime::operator) fn number_read_columns(
    plan: &Arc<dyn ExecutionPlan>,
    order: &LexOrdering,
    schema: &SchemaRef,
    candidates: &[RecordBatch],
    read: &[bool],
    task: &Arc<TaskContext>,
) -> Result<(RecordBatch, UInt64Array)> {
    let width = schema.fields().len() - 1;
    let rows: usize = candidates.iter().map(RecordBatch::num_rows).sum();
    let column = |c: usize| -> Result<ArrayRef> {
        let parts: Vec<&dyn Array> = candidates.iter().map(|b| b.column(c).as_ref()).collect();
        Ok(concat(&parts)?)
    };
    let mut columns = (0..width)
        .map(|c| match read.get(c) {
            Some(true) => column(c),
            _ => Ok(new_null_array(schema.field(c).data_type(), rows)),
        })
        .collect::<Result<Vec<_>>>()?;
    let own = column(width)?;
    columns.push(Arc::new(UInt64Array::from_iter_values(0..rows as u64)));
    let narrow = RecordBatch::try_new(schema.clone(), columns)?;
    let numbered = number_rows(plan, order, schema, &[narrow], task)?;
    let mut numbered = concat_batches(&plan.schema(), &numbered)?;
    let positions = numbered
        .column(width)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(|| Error::Internal("a numbering plan that changed its row positions".into()))?
        .clone();
    let mut columns = numbered.columns().to_vec();
    columns[width] = take(&own, &positions, None)?;
    numbered = RecordBatch::try_new(numbered.schema(), columns)?;
    Ok((numbered, positions))
}
