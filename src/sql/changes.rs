//! How a pipeline's query reads a change stream (a source with `_op`, such as `postgres-cdc`, or
//! a GROUP BY's updates) as the table it describes: a GROUP BY over it aggregates the table's
//! current rows, and into a sink that applies rows by key a WHERE keeps the table's rows that
//! pass it.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan};
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr::PhysicalExpr;

use super::plan::{lower, plan_aggregate, push, window_end_key, Lowered, Lowering};
use crate::error::{Error, Result};
use crate::runtime::operator::stateless::OP;
use crate::runtime::plan::{Input, OperatorSpec};
use crate::runtime::source_table::SourceTable;

/// Whether `table` is a change stream: its rows carry `_op`.
pub(super) fn is_change_stream(table: &SourceTable) -> bool {
    TableProvider::schema(table).field_with_name(OP).is_ok()
}

/// The change stream `plan` reads, if it reads one other than as the table of a join (whose
/// output only appends).
pub(super) fn change_stream_under(plan: &LogicalPlan) -> Option<SourceTable> {
    let mut found = None;
    let _ = plan.apply(|node| {
        if matches!(node, LogicalPlan::Join(_)) {
            return Ok(TreeNodeRecursion::Jump);
        }
        if let LogicalPlan::TableScan(scan) = node {
            let table = datafusion::datasource::source_as_provider(&scan.source)
                .ok()
                .and_then(|p| p.downcast_ref::<SourceTable>().cloned());
            if let Some(table) = table.filter(is_change_stream) {
                found = Some(table);
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// A GROUP BY over a change stream: its input carries the source's primary key and `_op`
/// from the scan up to the aggregate, which keeps the table's current rows by that key.
pub(super) fn lower_change_aggregate(
    agg: &Aggregate,
    table: &SourceTable,
    cx: &mut Lowering,
) -> Result<Lowered> {
    if cx.carry.is_some() {
        return Err(Error::Unsupported(
            "a GROUP BY over a change stream under another GROUP BY's carried rows is not supported"
                .into(),
        )
        .at_place(cx.places.group_by));
    }
    if table.primary_key().is_empty() {
        return Err(Error::Plan(format!(
            "a GROUP BY over change stream \"{}\" aggregates the table it describes, and needs its primary key to know which row each change replaces: declare PRIMARY KEY (...) on the source",
            table.name()
        ))
        .at_place(cx.places.group_by));
    }
    let carried = carried_columns(table, None)?;
    lower_keyed_aggregate(agg, carried, false, cx)
}

/// The GROUP BY without a window under `plan`, through aliases, projections and WHERE: its
/// output is updates, each replacing the row of its group.
pub(super) fn updating_aggregate_under(plan: &LogicalPlan) -> Option<&Aggregate> {
    match plan {
        LogicalPlan::Projection(p) => updating_aggregate_under(&p.input),
        LogicalPlan::Filter(f) => updating_aggregate_under(&f.input),
        LogicalPlan::SubqueryAlias(a) => updating_aggregate_under(&a.input),
        LogicalPlan::Aggregate(agg)
            if !agg.aggr_expr.is_empty()
                && !agg.group_expr.is_empty()
                && window_end_key(agg).is_none() =>
        {
            Some(agg)
        }
        _ => None,
    }
}

/// A GROUP BY over another GROUP BY's updates (Nexmark q4's average of maximums): the inner
/// one's rows carry its group columns and `_op` up to the outer one, which keeps them as the
/// current rows of a table keyed by those columns, as over a change stream.
pub(super) fn lower_aggregate_over_updates(
    agg: &Aggregate,
    inner: &Aggregate,
    cx: &mut Lowering,
) -> Result<Lowered> {
    lower_keyed_aggregate(agg, group_key_columns(inner), true, cx)
}

/// The columns a GROUP BY's updates carry up to the operator that keeps them as a table: its
/// group columns, then `_op`.
pub(super) fn group_key_columns(inner: &Aggregate) -> Vec<Field> {
    inner.schema.fields()[..inner.group_expr.len()]
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .chain([Field::new(OP, DataType::Utf8, true)])
        .collect()
}

/// The GROUP BY whose updates another GROUP BY reads, lowered as itself; after it its rows
/// carry their group columns again and `_op`: `upsert`, or the delete its operator emits.
pub(super) fn lower_carried_aggregate(
    agg: &Aggregate,
    plan: &LogicalPlan,
    cx: &mut Lowering,
) -> Result<Lowered> {
    let Some(carried) = cx.carry.take() else {
        return Err(Error::Internal("no carried columns to add".into()));
    };
    cx.carry_from_group_by = false;
    let lowered = lower(plan, cx);
    cx.carry = Some(carried.clone());
    cx.carry_from_group_by = true;
    let from = lowered?;
    let Input::Node(node) = from else {
        return Err(Error::Internal("a GROUP BY lowered to no operator".into()));
    };
    let emits_op = matches!(
        cx.nodes[node].operator,
        OperatorSpec::ChangeAggregate { .. }
    );
    let fields = agg.schema.fields();
    let width = fields.len();
    let mut exprs: Vec<Arc<dyn PhysicalExpr>> = Vec::with_capacity(width + carried.len());
    for (i, f) in fields
        .iter()
        .enumerate()
        .chain(fields.iter().enumerate().take(agg.group_expr.len()))
    {
        exprs.push(Arc::new(Column::new(f.name(), i)));
    }
    exprs.push(if emits_op {
        Arc::new(Column::new(OP, width))
    } else {
        Arc::new(Literal::new(ScalarValue::Utf8(Some("upsert".into()))))
    });
    let schema = Arc::new(Schema::new(
        fields
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .chain(carried)
            .collect::<Vec<_>>(),
    ));
    Ok(push(cx, OperatorSpec::Project { exprs, schema }, from))
}

/// A GROUP BY over rows that carry a key and `_op` after their own columns (`carried`),
/// keeping the current row of each key.
pub(super) fn lower_keyed_aggregate(
    agg: &Aggregate,
    carried: Vec<Field>,
    from_group_by: bool,
    cx: &mut Lowering,
) -> Result<Lowered> {
    cx.carry = Some(carried.clone());
    cx.carry_from_group_by = from_group_by;
    let lowered = lower(&agg.input, cx);
    cx.carry = None;
    cx.carry_from_group_by = false;
    let from = lowered?;
    let aggregate = plan_aggregate(agg, cx.state)?;
    let fields: Vec<Field> = agg
        .input
        .schema()
        .as_arrow()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .chain(carried)
        .collect();
    let partials = OperatorSpec::ChangePartials {
        aggregate: aggregate.clone(),
        schema: Arc::new(Schema::new(fields)),
    };
    let partials = push(cx, partials, from);
    let operator = OperatorSpec::ChangeAggregate {
        aggregate,
        keys: agg.group_expr.len(),
    };
    let node = push(cx, operator, partials);
    if let Input::Node(n) = node {
        cx.updating = Some(n);
    }
    Ok(node)
}

/// The columns a change stream's rows carry up to the operator that keeps its table: the
/// primary key, `also` (a column the operator needs besides), then `_op`.
pub(super) fn carried_columns(table: &SourceTable, also: Option<&str>) -> Result<Vec<Field>> {
    let schema = TableProvider::schema(table);
    table
        .primary_key()
        .iter()
        .map(String::as_str)
        .chain(also)
        .chain([OP])
        .map(|name| {
            let field = schema.field_with_name(name).map_err(|_| {
                Error::Plan(format!(
                    "source \"{}\" has no column {name}, which its primary key names",
                    table.name()
                ))
            })?;
            Ok(field.clone().with_nullable(true))
        })
        .collect()
}

/// A projection's expressions and schema with the carried columns (the last of its input's)
/// passed through after its own.
pub(super) fn carry_through(
    mut exprs: Vec<Arc<dyn PhysicalExpr>>,
    schema: &Arc<Schema>,
    input: &LogicalPlan,
    carried: &[Field],
) -> (Vec<Arc<dyn PhysicalExpr>>, Arc<Schema>) {
    let width = input.schema().fields().len();
    // A delete carries its key alone: every other column may be NULL.
    let mut fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    for (j, f) in carried.iter().enumerate() {
        exprs.push(Arc::new(Column::new(f.name(), width + j)));
        fields.push(f.clone());
    }
    (exprs, Arc::new(Schema::new(fields)))
}

/// A scan's projection with the carried columns after the ones the query reads.
pub(super) fn carry_from_scan(
    table: &SourceTable,
    projection: Option<&[usize]>,
    carried: &[Field],
) -> Result<Vec<usize>> {
    let schema = TableProvider::schema(table);
    let mut columns: Vec<usize> = match projection {
        Some(p) => p.to_vec(),
        None => (0..schema.fields().len()).collect(),
    };
    for f in carried {
        columns.push(schema.index_of(f.name())?);
    }
    Ok(columns)
}

/// Where `_op` is among the columns of a WHERE's input when the WHERE filters a change stream
/// as a table: under a GROUP BY over it, or into a sink that applies rows by key (unless the
/// condition itself reads `_op`: then it filters the changes). `None`: a plain filter.
pub(super) fn table_filter_op(
    predicate: &Expr,
    input: &LogicalPlan,
    cx: &Lowering,
) -> Result<Option<usize>> {
    let reads_op = predicate.column_refs().iter().any(|c| c.name == OP);
    if let Some(carried) = &cx.carry {
        if reads_op {
            return Err(Error::Unsupported(format!(
                "a GROUP BY over a change stream aggregates its table's current rows, so a condition on {OP} does not apply to it: leave {OP} out of the WHERE"
            ))
            .at_place(cx.places.group_by));
        }
        return Ok(Some(input.schema().fields().len() + carried.len() - 1));
    }
    if !cx.applies_by_key || reads_op || !cx.scanned.as_ref().is_some_and(is_change_stream) {
        return Ok(None);
    }
    Ok(input.schema().fields().iter().position(|f| f.name() == OP))
}
