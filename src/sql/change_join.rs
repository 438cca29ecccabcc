//! Lowers a join of two change streams read as the tables they describe: each side carries its
//! primary key and `_op` to the join, which keeps both tables and emits the joined rows that
//! their changes add, change or remove, as upserts and deletes (`_op`), for a sink that applies
//! rows by key. An outer join of two streams without bounds on their event times, into such a
//! sink, is lowered the same way: each stream row is a table row of its own, inserted once.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::{Join, JoinType, LogicalPlan};
use datafusion::physical_expr::create_physical_expr;

use super::changes::{carried_columns, change_stream_under};
use super::plan::{lower, placeholder_with, plan_physical, push_n, Lowered, Lowering};
use crate::error::{Error, Result};
use crate::runtime::operator::change_join::ChangeJoinSpec;
use crate::runtime::operator::stateless::OP;
use crate::runtime::operator::stream_join::ROW_ID;
use crate::runtime::plan::{Input, OperatorSpec};
use crate::runtime::source_table::SourceTable;

/// A join of the tables of change streams `tables` (left, right; `None`: a stream that only
/// appends).
pub(super) fn lower_change_join(
    join: &Join,
    tables: [Option<SourceTable>; 2],
    cx: &mut Lowering,
) -> Result<Lowered> {
    if !matches!(
        join.join_type,
        JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full
    ) || join.null_aware
    {
        return Err(Error::Unsupported(format!(
            "a {} join of two change streams is not supported yet: INNER, LEFT, RIGHT and FULL joins are",
            join.join_type.to_string().to_uppercase()
        )));
    }
    if join.on.is_empty() {
        return Err(Error::Unsupported(
            "a join of two change streams needs an equality between them (ON a.k = b.k)".into(),
        ));
    }
    // Under a GROUP BY, the joined rows carry both sides' keys (which name them) and `_op` up
    // to it: it keeps them as a table.
    let names_out = cx.carry.take();
    if let Some(names) = &names_out {
        let fits = match tables.clone() {
            [Some(l), Some(r)] => name_fields(&[l, r])?.len() + 1 == names.len(),
            _ => false,
        };
        if cx.carry_from_group_by || !fits {
            return Err(Error::Unsupported(
                "this join under a GROUP BY over changes is not supported yet".into(),
            ));
        }
    }
    let sides = [&join.left, &join.right];
    let mut inputs: Vec<Input> = Vec::with_capacity(2);
    let mut carried: Vec<Vec<Field>> = Vec::with_capacity(2);
    let updating = cx.updating;
    for (s, table) in tables.iter().enumerate() {
        let fields = match table {
            Some(table) => carried_columns(table, None)?,
            None => vec![
                Field::new(ROW_ID, DataType::UInt64, true),
                Field::new(OP, DataType::Utf8, true),
            ],
        };
        cx.carry = table.as_ref().map(|_| fields.clone());
        let lowered = lower(sides[s], cx);
        cx.carry = None;
        inputs.push(lowered?);
        carried.push(fields);
    }
    if cx.updating != updating {
        return Err(Error::Unsupported(
            "a join of a GROUP BY's updates is not supported yet".into(),
        )
        .at_place(cx.places.group_by));
    }
    let props = ExecutionProps::new();
    let mut keys = [Vec::new(), Vec::new()];
    for (l, r) in &join.on {
        for (s, e) in [l, r].into_iter().enumerate() {
            keys[s].push(create_physical_expr(
                e,
                sides[s].schema(),
                &props,
                &Default::default(),
            )?);
        }
    }
    // Each side's placeholder: its columns, then its primary key, renamed.
    let mut placeholders = Vec::with_capacity(2);
    let mut change_schemas = Vec::with_capacity(2);
    for s in 0..2 {
        let base = sides[s].schema();
        let key = &carried[s][..carried[s].len() - 1];
        let renamed = key
            .iter()
            .enumerate()
            .map(|(i, f)| Field::new(format!("__key{s}_{i}"), f.data_type().clone(), true))
            .collect();
        placeholders.push(placeholder_with(sides[s], renamed)?);
        change_schemas.push(Arc::new(Schema::new(
            base.as_arrow()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .chain(carried[s].iter().cloned())
                .collect::<Vec<_>>(),
        )));
    }
    let right = placeholders.pop().expect("two sides");
    let left = placeholders.pop().expect("two sides");
    let planned = Join::try_new(
        Arc::new(left),
        Arc::new(right),
        join.on.clone(),
        join.filter.clone(),
        join.join_type,
        join.join_constraint,
        join.null_equality,
        false,
    )?;
    let output = Arc::new(Schema::new(
        join.schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .chain(names_out.iter().flatten().cloned())
            .chain(
                names_out
                    .is_none()
                    .then(|| Field::new(OP, DataType::Utf8, true)),
            )
            .collect::<Vec<_>>(),
    ));
    let spec = ChangeJoinSpec {
        join: plan_physical(&LogicalPlan::Join(planned), cx.state)?,
        keys,
        schemas: [0, 1].map(|s| Arc::new(sides[s].schema().as_arrow().clone())),
        change_schemas: [change_schemas[0].clone(), change_schemas[1].clone()],
        output,
        appends: [tables[0].is_none(), tables[1].is_none()],
        names_out: names_out.is_some(),
    };
    cx.scanned = None;
    let carried_out = names_out.is_some();
    cx.carry = names_out;
    let node = push_n(cx, OperatorSpec::ChangeJoin(spec), inputs);
    if let (Input::Node(n), false) = (node, carried_out) {
        cx.updating = Some(n);
    }
    Ok(node)
}

/// The join of two change streams under `plan` (through aliases, projections and WHERE), and
/// the two streams.
pub(super) fn change_join_under(plan: &LogicalPlan) -> Option<(&Join, [SourceTable; 2])> {
    match plan {
        LogicalPlan::Projection(p) => change_join_under(&p.input),
        LogicalPlan::Filter(f) => change_join_under(&f.input),
        LogicalPlan::SubqueryAlias(a) => change_join_under(&a.input),
        LogicalPlan::Join(join) => {
            let l = change_stream_under(&join.left)?;
            let r = change_stream_under(&join.right)?;
            Some((join, [l, r]))
        }
        _ => None,
    }
}

/// The columns that name a joined row of two tables: each side's primary key, renamed.
fn name_fields(tables: &[SourceTable; 2]) -> Result<Vec<Field>> {
    let mut out = Vec::new();
    for (s, table) in tables.iter().enumerate() {
        let key = carried_columns(table, None)?;
        for (i, f) in key[..key.len() - 1].iter().enumerate() {
            out.push(Field::new(
                format!("__key{s}_{i}"),
                f.data_type().clone(),
                true,
            ));
        }
    }
    Ok(out)
}

/// A GROUP BY over a join of two change streams: the joined rows carry their names and `_op`
/// up to it, and it keeps them as a table, as over a change stream.
pub(super) fn lower_aggregate_over_join(
    agg: &datafusion::logical_expr::Aggregate,
    tables: &[SourceTable; 2],
    cx: &mut Lowering,
) -> Result<Lowered> {
    super::changes::lower_keyed_aggregate(agg, carried_names(tables)?, false, cx)
}

/// What the joined rows of two tables carry up to the operator that keeps them as a table: the
/// columns that name them, then `_op`.
pub(super) fn carried_names(tables: &[SourceTable; 2]) -> Result<Vec<Field>> {
    let mut carried = name_fields(tables)?;
    carried.push(Field::new(OP, DataType::Utf8, true));
    Ok(carried)
}
