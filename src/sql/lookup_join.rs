//! Lowers a join with a table looked up by key (a source whose connector looks rows up, such as
//! `postgres`): the stream's rows ask for their keys as they arrive, and the looked-up side,
//! which may filter and project the table's rows, is planned into the join over a placeholder.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::{EmptyRelation, Expr, Join, JoinType, LogicalPlan};
use datafusion::physical_expr::create_physical_expr;

use super::changes::change_stream_under;
use super::lineage::scan_column;
use super::plan::{lower, plan_physical, push, Lowered, Lowering};
use crate::error::{Error, Result};
use crate::runtime::operator::lookup_join::LookupJoinSpec;
use crate::runtime::plan::OperatorSpec;
use crate::runtime::source_table::SourceTable;

/// The scan under `plan` when `plan` reads a source that can be looked up, through aliases,
/// projections and filters only.
fn lookup_scan(plan: &LogicalPlan) -> Option<(SourceTable, &datafusion::logical_expr::TableScan)> {
    match plan {
        LogicalPlan::SubqueryAlias(a) => lookup_scan(&a.input),
        LogicalPlan::Projection(p) => lookup_scan(&p.input),
        LogicalPlan::Filter(f) => lookup_scan(&f.input),
        LogicalPlan::TableScan(scan) => {
            let provider = datafusion::datasource::source_as_provider(&scan.source).ok()?;
            let table = provider.downcast_ref::<SourceTable>()?;
            table.looks_up().then(|| (table.clone(), scan))
        }
        _ => None,
    }
}

/// Which side of `join` is a table to look up (0, left; 1, right), and its source. The right
/// side is taken when both could be.
pub(super) fn lookup_side(join: &Join) -> Option<(usize, SourceTable)> {
    if let Some((t, _)) = lookup_scan(&join.right) {
        return Some((1, t));
    }
    lookup_scan(&join.left).map(|(t, _)| (0, t))
}

/// A join of a stream with a table looked up by key.
pub(super) fn lower_lookup_join(
    join: &Join,
    lookup_port: usize,
    table: SourceTable,
    cx: &mut Lowering,
) -> Result<Lowered> {
    if cx.carry.is_some() {
        return Err(Error::Unsupported(
            "a lookup join under a GROUP BY over a change stream is not supported yet".into(),
        ));
    }
    let kept = match join.join_type {
        JoinType::Inner => true,
        JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti => lookup_port == 1,
        JoinType::Right | JoinType::RightSemi | JoinType::RightAnti => lookup_port == 0,
        _ => false,
    };
    if !kept || join.null_aware {
        return Err(Error::Unsupported(format!(
            "a {} join with \"{}\" is not supported: each stream row looks its key up in the table when it arrives, so the table may only be on the inner side (INNER JOIN, or the table on the right of a LEFT JOIN)",
            join.join_type.to_string().to_uppercase(),
            table.name()
        )));
    }
    let (stream_plan, lookup_plan) = match lookup_port {
        0 => (&join.right, &join.left),
        _ => (&join.left, &join.right),
    };
    if let Some(changes) = change_stream_under(stream_plan) {
        return Err(Error::Unsupported(format!(
            "a lookup join over change stream \"{}\" is not supported yet: its deletes carry only their key, so they would find nothing to join",
            changes.name()
        )));
    }
    // Each stream row finds the table's rows by columns of the table, with =.
    let mut key_columns = Vec::with_capacity(join.on.len());
    let mut stream_exprs = Vec::with_capacity(join.on.len());
    for (l, r) in &join.on {
        let (s, t) = if lookup_port == 0 { (r, l) } else { (l, r) };
        let column = match t {
            Expr::Column(c) => Some(c),
            Expr::Cast(c) => match c.expr.as_ref() {
                Expr::Column(c) => Some(c),
                _ => None,
            },
            _ => None,
        }
        .and_then(|c| scan_column(lookup_plan, &c.name))
        .filter(|(source, _)| source.name() == table.name())
        .map(|(_, column)| column);
        let Some(column) = column else {
            return Err(Error::Unsupported(format!(
                "a join with \"{}\" looks its rows up by its columns: write ON <stream expression> = {}.<column>, not {t}",
                table.name(),
                table.name()
            )));
        };
        key_columns.push(column);
        stream_exprs.push(s.clone());
    }
    if key_columns.is_empty() {
        return Err(Error::Unsupported(format!(
            "a join with \"{}\" looks its rows up by key, and needs ON <stream expression> = {}.<column>",
            table.name(),
            table.name()
        )));
    }
    // Options and key columns are checked now, not when the pipeline first runs.
    table.lookup(&key_columns)?;
    let Some((_, scan)) = lookup_scan(lookup_plan) else {
        return Err(Error::Internal("a lookup join without its table".into()));
    };
    let projection = scan.projection.clone();
    let table_schema = Arc::new(scan.projected_schema.as_arrow().clone());
    // The join over a placeholder for the stream, and the looked-up side over one for the
    // rows found.
    let looked_up = lookup_plan
        .as_ref()
        .clone()
        .transform_up(|node| match node {
            LogicalPlan::TableScan(scan) => Ok(Transformed::yes(LogicalPlan::EmptyRelation(
                EmptyRelation {
                    produce_one_row: false,
                    schema: scan.projected_schema.clone(),
                },
            ))),
            other => Ok(Transformed::no(other)),
        })?
        .data;
    let stream_placeholder = LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: false,
        schema: stream_plan.schema().clone(),
    });
    let sides = match lookup_port {
        0 => vec![looked_up, stream_placeholder],
        _ => vec![stream_placeholder, looked_up],
    };
    let node = LogicalPlan::Join(join.clone());
    let planned = plan_physical(&node.with_new_exprs(node.expressions(), sides)?, cx.state)?;
    let props = ExecutionProps::new();
    let stream_keys = stream_exprs
        .iter()
        .map(|e| {
            Ok(create_physical_expr(
                e,
                stream_plan.schema(),
                &props,
                &Default::default(),
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    let from = lower(stream_plan, cx)?;
    let spec = LookupJoinSpec {
        join: planned,
        lookup_port,
        stream_keys,
        stream_schema: Arc::new(stream_plan.schema().as_arrow().clone()),
        table,
        key_columns,
        projection,
        table_schema,
    };
    // The join's rows are a stream: what comes after it does not filter a table.
    cx.scanned = None;
    Ok(push(cx, OperatorSpec::LookupJoin(spec), from))
}
