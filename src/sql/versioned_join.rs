//! Lowers a join with a change stream read FOR SYSTEM_TIME AS OF the stream's event time: each
//! stream row joins the table's version valid at the row's time. The table side carries its
//! version time (its source's WATERMARK column) with its primary key and `_op`; the join is
//! planned with one more key pair, the stream row's number on both sides, so that each row
//! meets only the version picked for it.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field};
use datafusion::common::Column;
use datafusion::execution::SessionState;
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::{Expr, Join, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_expr::create_physical_expr;
use datafusion::physical_plan::ExecutionPlan;

use super::as_of::AsOfJoin;
use super::changes::{carried_columns, change_stream_under};
use super::joins::lower_table_join;
use super::lineage::is_event_time;
use super::plan::{join_over, placeholder_with, plan_physical, push_n, Lowered, Lowering};
use crate::error::{Error, Result};
use crate::runtime::operator::versioned_join::{VersionedJoinSpec, PROBE, PROBE_TABLE};
use crate::runtime::plan::OperatorSpec;

/// A join of a stream with a change stream's table as of the stream's event time.
pub(super) fn lower_versioned_join(as_of: AsOfJoin, cx: &mut Lowering) -> Result<Lowered> {
    let AsOfJoin {
        time,
        table_column,
        join,
    } = as_of;
    let table_port = match &table_column {
        Expr::Column(c) if join.right.schema().has_column(c) => 1,
        _ => 0,
    };
    let sides = [&join.left, &join.right];
    let Some(table) = change_stream_under(sides[table_port]) else {
        return Err(Error::Unsupported(
            "FOR SYSTEM_TIME AS OF reads the versions of a change stream, read as it is (no GROUP BY or join of its own)".into(),
        ));
    };
    if change_stream_under(sides[1 - table_port]).is_some() {
        return Err(Error::Unsupported(
            "a join of two change streams is not supported yet: join a stream with one table kept by change data capture".into(),
        ));
    }
    if cx.carry.is_some() {
        return Err(Error::Unsupported(
            "a join under a GROUP BY over a change stream is not supported yet".into(),
        ));
    }
    let name = table.name().to_string();
    let Some((version_time, _)) = table.watermark().cloned() else {
        return Err(Error::Plan(format!(
            "change stream \"{name}\" is read FOR SYSTEM_TIME AS OF, so each of its changes needs the time it took effect: declare its event time, as in CREATE SOURCE {name} (..., WATERMARK FOR _commit_ts AS _commit_ts)"
        )));
    };
    let stream = sides[1 - table_port];
    let event_time = match &time {
        Expr::Column(c) => stream.schema().has_column(c) && is_event_time(stream, &c.name),
        _ => false,
    };
    if !event_time {
        return Err(Error::Unsupported(format!(
            "FOR SYSTEM_TIME AS OF takes the event time of the stream joined with \"{name}\" (the column its source declares WATERMARK FOR), not {time}: rows wait for the watermark to pass their time, when every version up to it has arrived"
        )));
    }
    let props = ExecutionProps::new();
    let time = create_physical_expr(&time, stream.schema(), &props, &Default::default())?;
    let carried = carried_columns(&table, Some(&version_time))?;
    let plan = probe_plan(&join, table_port, cx.state)?;
    let (base, inputs) = lower_table_join(&join, table_port, &table, carried, plan, cx)?;
    cx.scanned = None;
    Ok(push_n(
        cx,
        OperatorSpec::VersionedJoin(VersionedJoinSpec { base, time }),
        inputs,
    ))
}

/// `join` with one more key pair, [`PROBE`] of the stream side's rows and [`PROBE_TABLE`] of
/// the table side's (each after its side's columns), and its own columns only out.
fn probe_plan(
    join: &Join,
    table_port: usize,
    state: &SessionState,
) -> Result<Arc<dyn ExecutionPlan>> {
    let placeholder = |plan: &LogicalPlan, name: &str| {
        placeholder_with(plan, vec![Field::new(name, DataType::UInt64, false)])
    };
    let names = match table_port {
        0 => [PROBE_TABLE, PROBE],
        _ => [PROBE, PROBE_TABLE],
    };
    let mut on = join.on.clone();
    on.push((
        Expr::Column(Column::new_unqualified(names[0])),
        Expr::Column(Column::new_unqualified(names[1])),
    ));
    let probed = join_over(
        join,
        placeholder(&join.left, names[0])?,
        placeholder(&join.right, names[1])?,
        on,
        join.join_type,
    )?;
    let columns: Vec<Expr> = join
        .schema
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    let plan = LogicalPlanBuilder::from(LogicalPlan::Join(probed))
        .project(columns)?
        .build()?;
    plan_physical(&plan, state)
}
