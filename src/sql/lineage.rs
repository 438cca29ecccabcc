//! Where a column of a logical plan comes from: the source column it is, or whether it is an
//! event time, followed through aliases, filters and projections that pass it on unchanged.

use datafusion::common::Column;
use datafusion::logical_expr::{Expr, Join, LogicalPlan};

use super::windows::WINDOW_END;
use crate::runtime::source_table::SourceTable;

/// Follows output column `name` of `plan` down through aliases, filters and projections that
/// pass a column on unchanged (renamed or not), to the node that makes it and its name there.
fn origin<'a>(plan: &'a LogicalPlan, name: &str) -> Option<(&'a LogicalPlan, String)> {
    match plan {
        LogicalPlan::SubqueryAlias(a) => origin(&a.input, name),
        LogicalPlan::Filter(f) => origin(&f.input, name),
        LogicalPlan::Projection(p) => {
            let i = p.schema.fields().iter().position(|f| f.name() == name)?;
            match p.expr[i].clone().unalias() {
                Expr::Column(c) => origin(&p.input, &c.name),
                _ => None,
            }
        }
        other => Some((other, name.to_string())),
    }
}

/// The source and source column that output column `name` of `plan` is, when `plan` reads it
/// from one source through aliases, filters and projections of plain columns only.
pub(super) fn scan_column(plan: &LogicalPlan, name: &str) -> Option<(SourceTable, String)> {
    let (LogicalPlan::TableScan(scan), name) = origin(plan, name)? else {
        return None;
    };
    let provider = datafusion::datasource::source_as_provider(&scan.source).ok()?;
    let table = provider.downcast_ref::<SourceTable>()?;
    scan.projected_schema
        .fields()
        .iter()
        .find(|f| *f.name() == name)
        .map(|f| (table.clone(), f.name().clone()))
}

/// Whether output column `name` of `plan` is an event time that the watermark bounds from
/// below for rows still to come: its source's `WATERMARK FOR` column (later rows are not
/// late), or a window's end (windows yet to close end after the watermark).
pub(super) fn is_event_time(plan: &LogicalPlan, name: &str) -> bool {
    is_window_end(plan, name)
        || scan_column(plan, name).is_some_and(|(table, column)| {
            table
                .watermark()
                .is_some_and(|(watermarked, _)| *watermarked == column)
        })
}

/// Whether output column `name` of `plan` is the end of a window: a windowed GROUP BY's
/// `window_end`, under any alias, or a GROUP BY key that is one (Nexmark q5's maximum per
/// window groups the windows' counts by their end).
pub(super) fn is_window_end(plan: &LogicalPlan, name: &str) -> bool {
    let Some((LogicalPlan::Aggregate(agg), name)) = origin(plan, name) else {
        return false;
    };
    let Some(i) = agg.schema.fields().iter().position(|f| *f.name() == name) else {
        return false;
    };
    match agg.group_expr.get(i) {
        Some(Expr::Column(c)) => c.name == WINDOW_END || is_window_end(&agg.input, &c.name),
        _ => false,
    }
}

/// The join that output column `column` of `plan` comes from, through aliases, filters and
/// projections that pass it on unchanged: the join, its side (0, left; 1, right) and the column
/// on that side.
pub(super) fn join_side_column<'a>(
    plan: &'a LogicalPlan,
    column: &Column,
) -> Option<(&'a Join, usize, Column)> {
    match plan {
        LogicalPlan::SubqueryAlias(a) => {
            let i = a.schema.index_of_column(column).ok()?;
            let (qualifier, field) = a.input.schema().qualified_field(i);
            join_side_column(&a.input, &Column::new(qualifier.cloned(), field.name()))
        }
        LogicalPlan::Filter(f) => join_side_column(&f.input, column),
        LogicalPlan::Projection(p) => {
            let i = p.schema.index_of_column(column).ok()?;
            match p.expr[i].clone().unalias() {
                Expr::Column(c) => join_side_column(&p.input, &c),
                _ => None,
            }
        }
        LogicalPlan::Join(join) => {
            let i = join.schema.index_of_column(column).ok()?;
            let left = join.left.schema().fields().len();
            let (side, schema, at) = match i < left {
                true => (0, join.left.schema(), i),
                false => (1, join.right.schema(), i - left),
            };
            let (qualifier, field) = schema.qualified_field(at);
            Some((join, side, Column::new(qualifier.cloned(), field.name())))
        }
        _ => None,
    }
}
