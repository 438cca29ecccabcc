//! Lowers a join: a stream joined with a table kept by its change stream (a `postgres-cdc`
//! source), in processing time, or two streams bounded by event time
//! ([`super::stream_join`]). The table side carries its primary key and `_op` to the join,
//! which keeps the table's current rows; DataFusion plans the join itself. A join with a table
//! looked up by key goes to [`super::lookup_join`].

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema};
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::{Expr, Join, JoinType, LogicalPlan};
use datafusion::physical_expr::{create_physical_expr, PhysicalExpr};
use datafusion::physical_plan::ExecutionPlan;

use super::change_join::{lower_change_join, side_of, Side};
use super::changes::{carried_columns, change_stream_under};
use super::plan::{lower, plan_over_placeholder, push_n, Lowered, Lowering};
use crate::error::{Error, Result};
use crate::runtime::operator::temporal_join::TemporalJoinSpec;
use crate::runtime::plan::OperatorSpec;
use crate::runtime::source_table::SourceTable;

/// A join of a stream with the table of a change stream.
pub(super) fn lower_join(join: &Join, cx: &mut Lowering) -> Result<Lowered> {
    if let Some(as_of) = super::as_of::as_of_join(join)? {
        // A table looked up by key is read as it is when each row looks it up.
        if let Some((port, table)) = super::lookup_join::lookup_side(&as_of.join) {
            return super::lookup_join::lower_lookup_join(&as_of.join, port, table, cx);
        }
        return super::versioned_join::lower_versioned_join(as_of, cx);
    }
    if let Some((port, table)) = super::lookup_join::lookup_side(join) {
        return super::lookup_join::lower_lookup_join(join, port, table, cx);
    }
    if cx.carry.is_some() {
        return Err(Error::Unsupported(
            "a join under a GROUP BY over a change stream is not supported yet".into(),
        ));
    }
    // A GROUP BY's updates joined: both sides are kept as tables (a stream's rows each as a
    // row of its own), and the joined rows are updated as either changes.
    let kinds = [side_of(&join.left), side_of(&join.right)];
    if kinds.iter().any(|k| matches!(k, Some(Side::GroupBy(_)))) {
        let [l, r] = kinds.map(|k| k.unwrap_or(Side::Appends));
        return lower_change_join(join, [l, r], cx);
    }
    let (table_port, table) = match (
        change_stream_under(&join.left),
        change_stream_under(&join.right),
    ) {
        (None, Some(t)) => (1, t),
        (Some(t), None) => (0, t),
        (Some(l), Some(r)) => {
            return lower_change_join(join, [Side::Changes(l), Side::Changes(r)], cx)
        }
        (None, None) => return super::stream_join::lower_stream_join(join, cx),
    };
    let carried = carried_columns(&table, None)?;
    let plan = plan_over_placeholder(&LogicalPlan::Join(join.clone()), cx.state)?;
    let (spec, inputs) = lower_table_join(join, table_port, &table, carried, plan, cx)?;
    // The join's rows are a stream: what comes after it does not filter a table.
    cx.scanned = None;
    Ok(push_n(cx, OperatorSpec::TemporalJoin(spec), inputs))
}

/// The inputs and operator spec of a join of a stream with the table of change stream `table`
/// on side `table_port`, whose rows carry `carried` (its primary key, ..., `_op`) to the join,
/// joined by `plan` (over a placeholder for each side, left first).
pub(super) fn lower_table_join(
    join: &Join,
    table_port: usize,
    table: &SourceTable,
    carried: Vec<Field>,
    plan: Arc<dyn ExecutionPlan>,
    cx: &mut Lowering,
) -> Result<(TemporalJoinSpec, Vec<Lowered>)> {
    let kept = match join.join_type {
        JoinType::Inner => true,
        JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti => table_port == 1,
        JoinType::Right | JoinType::RightSemi | JoinType::RightAnti => table_port == 0,
        _ => false,
    };
    if !kept || join.null_aware {
        return Err(Error::Unsupported(format!(
            "a {} join with change stream \"{}\" is not supported: every stream row joins the table as it is when the row arrives, so the table may only be on the inner side (INNER JOIN, or the table on the right of a LEFT JOIN)",
            join.join_type.to_string().to_uppercase(),
            table.name()
        )));
    }
    // Each stream row finds its table rows by the table's primary key.
    let key = table.primary_key();
    let on_table: Vec<&Expr> = join
        .on
        .iter()
        .map(|(l, r)| if table_port == 0 { l } else { r })
        .collect();
    let named: BTreeSet<&str> = on_table
        .iter()
        .filter_map(|e| match e {
            Expr::Column(c) => Some(c.name.as_str()),
            Expr::Cast(c) => match c.expr.as_ref() {
                Expr::Column(c) => Some(c.name.as_str()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let wanted: BTreeSet<&str> = key.iter().map(String::as_str).collect();
    if key.is_empty() || named != wanted || on_table.len() != wanted.len() {
        return Err(Error::Unsupported(format!(
            "a join with change stream \"{}\" must be on its primary key ({}) with = : each stream row then finds the table's row by its key",
            table.name(),
            if key.is_empty() { "none declared".to_string() } else { key.join(", ") }
        )));
    }
    let (stream_plan, table_plan) = match table_port {
        0 => (&join.right, &join.left),
        _ => (&join.left, &join.right),
    };
    let mut inputs = Vec::with_capacity(2);
    for (port, side) in [&join.left, &join.right].into_iter().enumerate() {
        if port == table_port {
            cx.carry = Some(carried.clone());
        }
        let lowered = lower(side, cx);
        cx.carry = None;
        inputs.push(lowered?);
    }
    let props = ExecutionProps::new();
    let compile = |e: &Expr, side: &LogicalPlan| -> Result<Arc<dyn PhysicalExpr>> {
        Ok(create_physical_expr(
            e,
            side.schema(),
            &props,
            &Default::default(),
        )?)
    };
    let (stream_keys, table_keys) = join
        .on
        .iter()
        .map(|(l, r)| {
            let (s, t) = if table_port == 0 { (r, l) } else { (l, r) };
            Ok((compile(s, stream_plan)?, compile(t, table_plan)?))
        })
        .collect::<Result<(Vec<_>, Vec<_>)>>()?;
    let table_schema = Arc::new(table_plan.schema().as_arrow().clone());
    let change_schema = Arc::new(Schema::new(
        table_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .chain(carried)
            .collect::<Vec<Field>>(),
    ));
    let spec = TemporalJoinSpec {
        join: plan,
        table_port,
        stream_keys,
        table_keys,
        stream_schema: Arc::new(stream_plan.schema().as_arrow().clone()),
        table_schema,
        change_schema,
    };
    Ok((spec, inputs))
}
