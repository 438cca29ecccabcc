//! Compiles a pipeline's SELECT into a [`PipelinePlan`]: DataFusion plans and optimises the query,
//! then the optimised plan is turned into steps (filters, projections) evaluated per Arrow batch.

use std::sync::Arc;

use arrow::compute::filter_record_batch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::common::cast::as_boolean_array;
use datafusion::execution::{FunctionRegistry, SessionState};
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::{Filter, LogicalPlan, Projection, SubqueryAlias, TableScan};
use datafusion::physical_expr::{create_physical_expr, PhysicalExpr};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast;

use crate::error::{Error, Result};
use crate::runtime::source_table::SourceTable;

/// Keys seen by a deduplicating step, as Arrow row-format bytes.
pub type SeenKeys = Arc<parking_lot::Mutex<std::collections::HashSet<Vec<u8>>>>;

/// One step applied to every batch.
#[derive(Debug, Clone)]
pub enum Step {
    /// Keep only the first occurrence of each row (streaming `SELECT DISTINCT`). Stateful: the
    /// keys seen so far are saved in checkpoints.
    Dedup {
        /// Operator id in checkpoints.
        id: String,
        /// Row encoding of the key columns.
        converter: Arc<arrow::row::RowConverter>,
        /// Keys seen so far.
        seen: SeenKeys,
    },
    /// Keep rows where the predicate is true.
    Filter(Arc<dyn PhysicalExpr>),
    /// Compute the output columns.
    Project {
        /// One expression per output column.
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        /// Output schema.
        schema: SchemaRef,
    },
}

/// A compiled pipeline query over one source.
#[derive(Debug, Clone)]
pub struct PipelinePlan {
    /// The source read.
    pub source: String,
    /// Columns of the source the query uses, in the order the first step expects.
    pub scan_projection: Option<Vec<usize>>,
    /// Steps, applied in order.
    pub steps: Vec<Step>,
    /// Schema of the rows handed to the sink (every column nullable).
    pub output_schema: SchemaRef,
    /// The optimised logical plan, for EXPLAIN and messages.
    pub display: String,
}

impl PipelinePlan {
    /// Runs the steps over one source batch. State changes (keys a DISTINCT has now seen) take
    /// effect only when every step succeeded, so a batch that fails leaves no trace: the rows of
    /// it that succeed on their own, when it is split to isolate the bad ones, still come out.
    pub fn process(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let mut batch = match &self.scan_projection {
            Some(p) => batch.project(p)?,
            None => batch,
        };
        let mut newly_seen: Vec<(&SeenKeys, std::collections::HashSet<Vec<u8>>)> = Vec::new();
        for step in &self.steps {
            if batch.num_rows() == 0 {
                break;
            }
            batch = match step {
                Step::Filter(pred) => {
                    let mask = pred.evaluate(&batch)?.into_array(batch.num_rows())?;
                    filter_record_batch(&batch, as_boolean_array(&mask)?)?
                }
                Step::Dedup {
                    converter, seen, ..
                } => {
                    let rows = converter.convert_columns(batch.columns())?;
                    let mut fresh = std::collections::HashSet::new();
                    let keep: arrow::array::BooleanArray = {
                        let seen = seen.lock();
                        rows.iter()
                            .map(|r| {
                                let key = r.as_ref();
                                Some(!seen.contains(key) && fresh.insert(key.to_vec()))
                            })
                            .collect()
                    };
                    newly_seen.push((seen, fresh));
                    filter_record_batch(&batch, &keep)?
                }
                Step::Project { exprs, schema } => {
                    let cols = exprs
                        .iter()
                        .map(|e| {
                            e.evaluate(&batch)
                                .and_then(|v| v.into_array(batch.num_rows()))
                        })
                        .collect::<datafusion::error::Result<Vec<_>>>()?;
                    RecordBatch::try_new_with_options(
                        schema.clone(),
                        cols,
                        &arrow::record_batch::RecordBatchOptions::new()
                            .with_row_count(Some(batch.num_rows())),
                    )?
                }
            };
        }
        let out = if batch.num_rows() == 0 {
            RecordBatch::new_empty(self.output_schema.clone())
        } else {
            RecordBatch::try_new(self.output_schema.clone(), batch.columns().to_vec())?
        };
        for (seen, fresh) in newly_seen {
            seen.lock().extend(fresh);
        }
        Ok(out)
    }
}

impl PipelinePlan {
    /// State of every stateful step, by operator id, for a checkpoint.
    pub fn snapshot_state(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        let mut out = std::collections::BTreeMap::new();
        for step in &self.steps {
            if let Step::Dedup { id, seen, .. } = step {
                let mut keys: Vec<String> = seen.lock().iter().map(hex).collect();
                keys.sort_unstable();
                out.insert(id.clone(), serde_json::json!({ "seen": keys }));
            }
        }
        out
    }

    /// Restores stateful steps from a checkpoint's operator states.
    pub fn restore_state(
        &self,
        state: &std::collections::BTreeMap<String, serde_json::Value>,
    ) -> Result<()> {
        for step in &self.steps {
            if let Step::Dedup { id, seen, .. } = step {
                let mut set = seen.lock();
                set.clear();
                if let Some(keys) = state
                    .get(id)
                    .and_then(|v| v.get("seen"))
                    .and_then(|v| v.as_array())
                {
                    for k in keys {
                        let bytes = k
                            .as_str()
                            .and_then(unhex)
                            .ok_or_else(|| Error::Internal(format!("unreadable state of {id}")))?;
                        set.insert(bytes);
                    }
                }
            }
        }
        Ok(())
    }
}

fn hex(b: &Vec<u8>) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Plans `query` (the SELECT of `CREATE PIPELINE ... AS INSERT INTO sink SELECT ...`).
pub async fn compile(state: &SessionState, query: &ast::Query) -> Result<PipelinePlan> {
    // A pipeline reads the clock per batch: DataFusion's now() would be folded into the time
    // the pipeline was planned.
    let mut state = state.clone();
    let timezone = state.config_options().execution.time_zone.clone();
    for f in super::clock::per_batch_clock_functions(timezone.as_deref()) {
        state.register_udf(f)?;
    }
    let logical = state
        .statement_to_plan(DFStatement::Statement(Box::new(ast::Statement::Query(
            Box::new(query.clone()),
        ))))
        .await?;
    let optimized = state.optimize(&logical)?;
    let display = optimized.display_indent().to_string();
    let mut steps = Vec::new();
    let (source, scan_projection) = walk(&optimized, &mut steps)?;
    // Name checks: sinks need real column names.
    let schema = optimized.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    for (i, f) in schema.fields().iter().enumerate() {
        let name = f.name();
        let simple = name.chars().all(|c| c.is_alphanumeric() || c == '_') && !name.is_empty();
        if !simple {
            return Err(Error::Plan(format!(
                "column {} of the pipeline's SELECT ({name}) needs a name a sink can store: add AS <name>",
                i + 1
            )));
        }
        if fields.iter().any(|g: &Field| g.name() == name) {
            return Err(Error::Plan(format!(
                "the pipeline's SELECT yields two columns named \"{name}\"; rename one with AS"
            )));
        }
        fields.push(f.as_ref().clone().with_nullable(true));
    }
    Ok(PipelinePlan {
        source,
        scan_projection,
        steps,
        output_schema: Arc::new(Schema::new(fields)),
        display,
    })
}

fn walk(plan: &LogicalPlan, steps: &mut Vec<Step>) -> Result<(String, Option<Vec<usize>>)> {
    let props = ExecutionProps::new();
    let compile_expr = |e: &datafusion::logical_expr::Expr,
                        input: &LogicalPlan|
     -> Result<Arc<dyn PhysicalExpr>> {
        Ok(create_physical_expr(
            e,
            input.schema(),
            &props,
            &Default::default(),
        )?)
    };
    match plan {
        LogicalPlan::Projection(Projection {
            expr,
            input,
            schema,
            ..
        }) => {
            let src = walk(input, steps)?;
            let exprs = expr
                .iter()
                .map(|e| compile_expr(e, input))
                .collect::<Result<Vec<_>>>()?;
            steps.push(Step::Project {
                exprs,
                schema: Arc::new(schema.as_arrow().clone()),
            });
            Ok(src)
        }
        LogicalPlan::Filter(Filter {
            predicate, input, ..
        }) => {
            let src = walk(input, steps)?;
            steps.push(Step::Filter(compile_expr(predicate, input)?));
            Ok(src)
        }
        LogicalPlan::SubqueryAlias(SubqueryAlias { input, .. }) => walk(input, steps),
        LogicalPlan::TableScan(TableScan {
            table_name,
            source,
            projection,
            filters,
            fetch,
            ..
        }) => {
            let provider = datafusion::datasource::source_as_provider(source)?;
            let Some(table) = provider.downcast_ref::<SourceTable>() else {
                return Err(Error::Plan(format!(
                    "a pipeline reads from a source; \"{table_name}\" is not one (sinks and system tables cannot be read by pipelines)"
                )));
            };
            if !filters.is_empty() || fetch.is_some() {
                return Err(Error::Unsupported(
                    "LIMIT in a pipeline is not supported".into(),
                ));
            }
            Ok((table.name().to_string(), projection.clone()))
        }
        LogicalPlan::Limit(_) => Err(Error::Unsupported(
            "LIMIT in a pipeline is not supported".into(),
        )),
        // SELECT DISTINCT arrives as a grouping without aggregates: emit each row's first occurrence.
        LogicalPlan::Aggregate(agg) if agg.aggr_expr.is_empty() => {
            let src = walk(&agg.input, steps)?;
            let exprs = agg
                .group_expr
                .iter()
                .map(|e| compile_expr(e, &agg.input))
                .collect::<Result<Vec<_>>>()?;
            let schema = Arc::new(agg.schema.as_arrow().clone());
            let fields = schema
                .fields()
                .iter()
                .map(|f| arrow::row::SortField::new(f.data_type().clone()))
                .collect();
            let converter = arrow::row::RowConverter::new(fields)?;
            steps.push(Step::Project { exprs, schema });
            let id = format!("dedup{}", steps.len());
            steps.push(Step::Dedup {
                id,
                converter: Arc::new(converter),
                seen: Default::default(),
            });
            Ok(src)
        }
        LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_) => Err(Error::Unsupported(
            "aggregate functions in pipelines are not supported yet (SELECT DISTINCT is)".into(),
        )),
        LogicalPlan::Join(_) => Err(Error::Unsupported(
            "joins in pipelines are not supported yet".into(),
        )),
        LogicalPlan::Window(_) => Err(Error::Unsupported(
            "window functions in pipelines are not supported yet".into(),
        )),
        LogicalPlan::Sort(_) => Err(Error::Unsupported(
            "ORDER BY in a pipeline is not supported (a stream has no end to sort at)".into(),
        )),
        LogicalPlan::Union(_) => Err(Error::Unsupported(
            "UNION in pipelines is not supported yet".into(),
        )),
        other => Err(Error::Unsupported(format!(
            "this query shape is not supported in pipelines yet: {}",
            other.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::DataType;
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{binary, col, lit};

    /// `SELECT 100 / a AS x FROM (SELECT DISTINCT a FROM s)` by hand: a dedup, then a projection
    /// that fails on `a = 0`.
    fn distinct_then_divide() -> PipelinePlan {
        let input = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let out = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let divide = binary(
            lit(100i64),
            Operator::Divide,
            col("a", &input).unwrap(),
            &input,
        )
        .unwrap();
        PipelinePlan {
            source: "s".into(),
            scan_projection: None,
            steps: vec![
                Step::Dedup {
                    id: "dedup1".into(),
                    converter: Arc::new(
                        arrow::row::RowConverter::new(vec![arrow::row::SortField::new(
                            DataType::Int64,
                        )])
                        .unwrap(),
                    ),
                    seen: Default::default(),
                },
                Step::Project {
                    exprs: vec![divide],
                    schema: out.clone(),
                },
            ],
            output_schema: out,
            display: String::new(),
        }
    }

    fn batch(values: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap()
    }

    fn xs(b: &RecordBatch) -> Vec<i64> {
        let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        (0..a.len()).map(|i| a.value(i)).collect()
    }

    #[test]
    fn a_failed_batch_marks_no_key_as_seen() {
        let plan = distinct_then_divide();
        assert!(plan.process(batch(&[1, 2, 0, 2, 5])).is_err());
        // Nothing was recorded: the same rows without the bad one all come out, duplicates once.
        assert_eq!(
            xs(&plan.process(batch(&[1, 2, 2, 5])).unwrap()),
            vec![100, 50, 20]
        );
        assert!(plan.process(batch(&[0])).is_err());
        // Seen keys stay seen; new ones pass.
        assert_eq!(xs(&plan.process(batch(&[5, 1, 4, 4])).unwrap()), vec![25]);
        let state = plan.snapshot_state();
        assert_eq!(state["dedup1"]["seen"].as_array().unwrap().len(), 4);
        // Restored state behaves the same.
        let restored = distinct_then_divide();
        restored.restore_state(&state).unwrap();
        assert_eq!(xs(&restored.process(batch(&[4, 10])).unwrap()), vec![10]);
    }
}
