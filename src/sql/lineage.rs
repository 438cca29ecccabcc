//! Where a column of a logical plan comes from: the source column it is, or whether it is an
//! event time, followed through aliases, filters and projections that pass it on unchanged.

use datafusion::logical_expr::{Expr, LogicalPlan};

use super::windows::WINDOW_END;
use crate::runtime::source_table::SourceTable;

/// The source and source column that output column `name` of `plan` is, when `plan` reads it
/// from one source through aliases, filters and projections of plain columns only.
pub(super) fn scan_column(plan: &LogicalPlan, name: &str) -> Option<(SourceTable, String)> {
    match plan {
        LogicalPlan::SubqueryAlias(a) => scan_column(&a.input, name),
        LogicalPlan::Filter(f) => scan_column(&f.input, name),
        LogicalPlan::Projection(p) => {
            let i = p.schema.fields().iter().position(|f| f.name() == name)?;
            match p.expr[i].clone().unalias() {
                Expr::Column(c) => scan_column(&p.input, &c.name),
                _ => None,
            }
        }
        LogicalPlan::TableScan(scan) => {
            let provider = datafusion::datasource::source_as_provider(&scan.source).ok()?;
            let table = provider.downcast_ref::<SourceTable>()?;
            scan.projected_schema
                .fields()
                .iter()
                .find(|f| f.name() == name)
                .map(|f| (table.clone(), f.name().clone()))
        }
        _ => None,
    }
}

/// Whether output column `name` of `plan` is an event time that the watermark bounds from
/// below for rows still to come: its source's `WATERMARK FOR` column (later rows are not
/// late), or a window's `window_end` (windows yet to close end after the watermark).
pub(super) fn is_event_time(plan: &LogicalPlan, name: &str) -> bool {
    match plan {
        LogicalPlan::SubqueryAlias(a) => is_event_time(&a.input, name),
        LogicalPlan::Filter(f) => is_event_time(&f.input, name),
        LogicalPlan::Projection(p) => {
            let Some(i) = p.schema.fields().iter().position(|f| f.name() == name) else {
                return false;
            };
            match p.expr[i].clone().unalias() {
                Expr::Column(c) => is_event_time(&p.input, &c.name),
                _ => false,
            }
        }
        LogicalPlan::Aggregate(agg) => {
            let Some(i) = agg.schema.fields().iter().position(|f| f.name() == name) else {
                return false;
            };
            matches!(agg.group_expr.get(i), Some(Expr::Column(c)) if c.name == WINDOW_END)
        }
        LogicalPlan::TableScan(_) => scan_column(plan, name).is_some_and(|(table, column)| {
            table
                .watermark()
                .is_some_and(|(watermarked, _)| *watermarked == column)
        }),
        _ => false,
    }
}
