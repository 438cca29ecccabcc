//! Plans DataFusion's physical plans over placeholders: the aggregates and joins an operator
//! runs over the rows it hands them, each leaf a placeholder the runtime replaces per run.

use std::sync::Arc;

use arrow::datatypes::Field;
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;

use crate::error::{Error, Result};

/// DataFusion's physical plan of one GROUP BY over its input's rows, as AggregateExec in Final
/// mode over AggregateExec in Partial mode; the runtime replaces the Partial one's input per batch.
pub(super) fn plan_aggregate(
    agg: &datafusion::logical_expr::Aggregate,
    state: &SessionState,
) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
    use datafusion::logical_expr::Expr;

    if agg
        .group_expr
        .iter()
        .any(|e| matches!(e, Expr::GroupingSet(_)))
    {
        return Err(Error::Unsupported(
            "GROUPING SETS, ROLLUP and CUBE are not supported in pipelines".into(),
        ));
    }
    plan_over_placeholder(&LogicalPlan::Aggregate(agg.clone()), state)
}

/// DataFusion's physical plan of one logical node over a placeholder for each of its inputs,
/// which the runtime replaces per batch. The physical optimizer is off: it would fuse a Partial
/// aggregate with its Final one.
pub(super) fn plan_over_placeholder(
    node: &LogicalPlan,
    state: &SessionState,
) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
    use datafusion::logical_expr::EmptyRelation;

    let placeholders = node
        .inputs()
        .iter()
        .map(|input| {
            LogicalPlan::EmptyRelation(EmptyRelation {
                produce_one_row: false,
                schema: input.schema().clone(),
            })
        })
        .collect();
    let logical = node.with_new_exprs(node.expressions(), placeholders)?;
    plan_physical(&logical, state)
}

/// `join`'s conditions over other inputs (placeholders), with keys `on` and type `join_type`:
/// the join an operator plans over the rows it hands DataFusion.
pub(super) fn join_over(
    join: &datafusion::logical_expr::Join,
    left: LogicalPlan,
    right: LogicalPlan,
    on: Vec<(
        datafusion::logical_expr::Expr,
        datafusion::logical_expr::Expr,
    )>,
    join_type: datafusion::logical_expr::JoinType,
) -> Result<datafusion::logical_expr::Join> {
    Ok(datafusion::logical_expr::Join::try_new(
        Arc::new(left),
        Arc::new(right),
        on,
        join.filter.clone(),
        join_type,
        join.join_constraint,
        join.null_equality,
        false,
    )?)
}

/// A placeholder for `plan`'s rows with `extra` columns (unqualified) after its own: what an
/// operator hands a planned join besides the rows (row ids, keys).
pub(super) fn placeholder_with(plan: &LogicalPlan, extra: Vec<Field>) -> Result<LogicalPlan> {
    use datafusion::common::{DFSchema, TableReference};
    use datafusion::logical_expr::EmptyRelation;

    let base = plan.schema();
    let fields: Vec<(Option<TableReference>, Arc<Field>)> = base
        .iter()
        .map(|(q, f)| (q.cloned(), f.clone()))
        .chain(extra.into_iter().map(|f| (None, Arc::new(f))))
        .collect();
    Ok(LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: false,
        schema: Arc::new(DFSchema::new_with_metadata(
            fields,
            base.metadata().clone(),
        )?),
    }))
}

/// DataFusion's physical plan of a logical plan whose leaves are placeholders, as
/// [`plan_over_placeholder`] plans it.
pub(super) fn plan_physical(
    logical: &LogicalPlan,
    state: &SessionState,
) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};

    let mut config = state.config().clone();
    config.options_mut().execution.target_partitions = 1;
    // The built state shares the session's catalogs: it must not install empty default ones.
    config
        .options_mut()
        .catalog
        .create_default_catalog_and_schema = false;
    let planning = SessionStateBuilder::new_from_existing(state.clone())
        .with_config(config)
        .with_physical_optimizer_rules(vec![])
        .build();
    // Planning one aggregate over an empty input does no I/O and spawns nothing.
    Ok(futures::executor::block_on(tokio::task::unconstrained(
        DefaultPhysicalPlanner::default().create_physical_plan(logical, &planning),
    ))?)
}
