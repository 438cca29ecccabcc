//! The stateless operators: filter, projection and HAVING over updates, each one DataFusion
//! physical expression evaluation per batch.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, StringArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::cast::as_boolean_array;
use datafusion::physical_expr::PhysicalExpr;

use super::Operator;
use crate::error::Result;

/// Whether `predicate` is true of each row of `batch` (NULL where it is NULL).
fn passes(predicate: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<BooleanArray> {
    let mask = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
    Ok(as_boolean_array(&mask)?.clone())
}

/// Keeps the rows for which a predicate is true.
pub struct Filter {
    predicate: Arc<dyn PhysicalExpr>,
}

impl Filter {
    /// A filter on `predicate`.
    pub fn new(predicate: Arc<dyn PhysicalExpr>) -> Self {
        Filter { predicate }
    }
}

impl Operator for Filter {
    fn emits_only_when_processing(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "filter"
    }

    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        Ok(vec![filter_record_batch(
            &batch,
            &passes(&self.predicate, &batch)?,
        )?])
    }
}

/// WHERE over a change stream seen as a table (into a sink that applies rows by key, or under
/// a GROUP BY): the table's rows that pass are kept, so a change whose new row fails the
/// condition becomes a delete of its key (the row may have passed, and been written, before),
/// and a delete always passes (it may carry only its key). An insert that fails is dropped.
pub struct ChangeFilter {
    predicate: Arc<dyn PhysicalExpr>,
    /// Where `_op` is among the columns.
    op: usize,
}

impl ChangeFilter {
    /// A filter on `predicate` over changes whose kind is column `op`.
    pub fn new(predicate: Arc<dyn PhysicalExpr>, op: usize) -> Self {
        ChangeFilter { predicate, op }
    }
}

impl Operator for ChangeFilter {
    fn emits_only_when_processing(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "change_filter"
    }

    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let passes = passes(&self.predicate, &batch)?;
        let ops = batch.column(self.op);
        let Some(ops) = ops.as_any().downcast_ref::<StringArray>() else {
            return Err(crate::error::Error::Internal(format!(
                "{OP} is not text: {}",
                ops.data_type()
            )));
        };
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut changed = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let op = ops.is_valid(i).then(|| ops.value(i));
            if passes.is_valid(i) && passes.value(i) || op == Some("delete") {
                keep.push(true);
                changed.push(op);
            } else {
                keep.push(op != Some("insert"));
                changed.push(Some("delete"));
            }
        }
        let mut columns = batch.columns().to_vec();
        columns[self.op] = Arc::new(StringArray::from(changed));
        let batch = RecordBatch::try_new(batch.schema(), columns)?;
        Ok(vec![filter_record_batch(
            &batch,
            &BooleanArray::from(keep),
        )?])
    }
}

/// The change-kind column HAVING adds to an updating aggregate's rows, as upsert sinks read it.
pub const OP: &str = "_op";

/// HAVING over the updates of a GROUP BY without a window: a group that passes is upserted; one
/// that does not is deleted (it may have passed, and been written, before). Adds (or, after
/// another HAVING, updates) the `_op` column: `upsert` or `delete`.
pub struct Having {
    predicate: Arc<dyn PhysicalExpr>,
    schema: SchemaRef,
}

impl Having {
    /// HAVING `predicate`, its rows then of `schema` (its input's columns and `_op` last).
    pub fn new(predicate: Arc<dyn PhysicalExpr>, schema: SchemaRef) -> Self {
        Having { predicate, schema }
    }
}

impl Operator for Having {
    fn emits_only_when_processing(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "having"
    }

    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let passes = passes(&self.predicate, &batch)?;
        let mut columns = batch.columns().to_vec();
        // After another HAVING: a group it deleted stays deleted.
        let before = match batch.schema().fields().last() {
            Some(f) if f.name() == OP => columns.pop(),
            _ => None,
        };
        let deleted_before = |i: usize| {
            before.as_ref().is_some_and(|b| {
                b.as_any()
                    .downcast_ref::<StringArray>()
                    .is_some_and(|b| b.is_valid(i) && b.value(i) == "delete")
            })
        };
        let op: StringArray = (0..batch.num_rows())
            .map(|i| {
                let upsert = passes.is_valid(i) && passes.value(i) && !deleted_before(i);
                Some(if upsert { "upsert" } else { "delete" })
            })
            .collect();
        columns.push(Arc::new(op));
        Ok(vec![RecordBatch::try_new(self.schema.clone(), columns)?])
    }
}

/// UNION ALL: every input's rows, relabelled as the union's columns (the planner has cast each
/// input to the union's types).
pub struct Union {
    schema: SchemaRef,
}

impl Union {
    /// A union whose rows are of `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        Union { schema }
    }
}

impl Operator for Union {
    fn emits_only_when_processing(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "union"
    }

    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        Ok(vec![RecordBatch::try_new_with_options(
            self.schema.clone(),
            batch.columns().to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )?])
    }
}

/// Computes one column per expression.
pub struct Project {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
}

impl Project {
    /// A projection producing `schema` from `exprs`.
    pub fn new(exprs: Vec<Arc<dyn PhysicalExpr>>, schema: SchemaRef) -> Self {
        Project { exprs, schema }
    }
}

impl Operator for Project {
    fn emits_only_when_processing(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "project"
    }

    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let columns = self
            .exprs
            .iter()
            .map(|e| {
                e.evaluate(&batch)
                    .and_then(|v| v.into_array(batch.num_rows()))
            })
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        Ok(vec![RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )?])
    }
}
