//! Lowers a join of two change streams read as the tables they describe: each side carries its
//! primary key and `_op` to the join, which keeps both tables and emits the joined rows that
//! their changes add, change or remove, as upserts and deletes (`_op`), for a sink that applies
//! rows by key. An outer join of two streams without bounds on their event times, into such a
//! sink, is lowered the same way: each stream row is a table row of its own, inserted once.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::{Aggregate, Join, JoinType, LogicalPlan};
use datafusion::physical_expr::create_physical_expr;

use super::changes::{
    carried_columns, change_stream_under, group_key_columns, updating_aggregate_under,
};
use super::plan::{join_over, lower, placeholder_with, plan_physical, push_n, Lowered, Lowering};
use crate::error::{Error, Result};
use crate::runtime::operator::change_join::ChangeJoinSpec;
use crate::runtime::operator::stateless::OP;
use crate::runtime::operator::stream_join::ROW_ID;
use crate::runtime::plan::{Input, OperatorSpec};
use crate::runtime::source_table::SourceTable;

/// What one side of a join kept as two tables is.
#[derive(Clone)]
pub(super) enum Side<'a> {
    /// A change stream: its rows carry its primary key and `_op`.
    Changes(SourceTable),
    /// A GROUP BY's updates: its rows carry their group columns and `_op`.
    GroupBy(&'a Aggregate),
    /// A stream that only appends: each row gets an id of its own.
    Appends,
}

impl Side<'_> {
    /// The columns the side's rows carry to the join: their key, then `_op`.
    fn carried(&self) -> Result<Vec<Field>> {
        Ok(match self {
            Side::Changes(table) => carried_columns(table, None)?,
            Side::GroupBy(agg) => group_key_columns(agg),
            Side::Appends => vec![
                Field::new(ROW_ID, DataType::UInt64, true),
                Field::new(OP, DataType::Utf8, true),
            ],
        })
    }
}

/// What side `plan` of a join is, when it is kept as a table: a GROUP BY's updates, or a change
/// stream (`None`: a stream).
pub(super) fn side_of(plan: &LogicalPlan) -> Option<Side<'_>> {
    if let Some(agg) = updating_aggregate_under(plan) {
        return Some(Side::GroupBy(agg));
    }
    change_stream_under(plan).map(Side::Changes)
}

/// A join of two sides kept as tables (left, right).
pub(super) fn lower_change_join(
    join: &Join,
    kinds: [Side<'_>; 2],
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
        let fits = name_fields(&kinds)?.len() + 1 == names.len();
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
    for (s, kind) in kinds.iter().enumerate() {
        let fields = kind.carried()?;
        cx.carry = (!matches!(kind, Side::Appends)).then(|| fields.clone());
        cx.carry_from_group_by = matches!(kind, Side::GroupBy(_));
        let lowered = lower(sides[s], cx);
        cx.carry = None;
        cx.carry_from_group_by = false;
        inputs.push(lowered?);
        carried.push(fields);
    }
    let grouped = kinds.iter().any(|k| matches!(k, Side::GroupBy(_)));
    if cx.updating != updating && !grouped {
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
    // Each side's placeholder: its columns, then its key, renamed; its rows as they arrive: its
    // columns, then what it carries.
    let left = placeholder_with(sides[0], renamed_key(0, &carried[0]))?;
    let right = placeholder_with(sides[1], renamed_key(1, &carried[1]))?;
    let planned = join_over(join, left, right, join.on.clone(), join.join_type)?;
    let change_schemas = [0, 1].map(|s| {
        Arc::new(Schema::new(
            sides[s]
                .schema()
                .as_arrow()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .chain(carried[s].iter().cloned())
                .collect::<Vec<_>>(),
        ))
    });
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
        change_schemas,
        output,
        appends: [0, 1].map(|s| matches!(kinds[s], Side::Appends)),
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

/// The join of two sides kept as tables under `plan` (through aliases, projections and WHERE),
/// and what its sides are.
pub(super) fn change_join_under(plan: &LogicalPlan) -> Option<(&Join, [Side<'_>; 2])> {
    match plan {
        LogicalPlan::Projection(p) => change_join_under(&p.input),
        LogicalPlan::Filter(f) => change_join_under(&f.input),
        LogicalPlan::SubqueryAlias(a) => change_join_under(&a.input),
        LogicalPlan::Join(join) => {
            let l = side_of(&join.left)?;
            let r = side_of(&join.right)?;
            Some((join, [l, r]))
        }
        _ => None,
    }
}

/// Side `s`'s key among the columns it carries (all but `_op` last), renamed so that it names
/// the side's rows in the join's output.
fn renamed_key(s: usize, carried: &[Field]) -> Vec<Field> {
    carried[..carried.len().saturating_sub(1)]
        .iter()
        .enumerate()
        .map(|(i, f)| Field::new(format!("__key{s}_{i}"), f.data_type().clone(), true))
        .collect()
}

/// The columns that name a joined row of two tables: each side's key, renamed.
fn name_fields(kinds: &[Side<'_>; 2]) -> Result<Vec<Field>> {
    let mut out = Vec::new();
    for (s, kind) in kinds.iter().enumerate() {
        out.extend(renamed_key(s, &kind.carried()?));
    }
    Ok(out)
}

/// A GROUP BY over a join of two tables: the joined rows carry their names and `_op` up to it,
/// and it keeps them as a table, as over a change stream.
pub(super) fn lower_aggregate_over_join(
    agg: &Aggregate,
    kinds: &[Side<'_>; 2],
    cx: &mut Lowering,
) -> Result<Lowered> {
    super::changes::lower_keyed_aggregate(agg, carried_names(kinds)?, false, cx)
}

/// What the joined rows of two tables carry up to the operator that keeps them as a table: the
/// columns that name them, then `_op`.
pub(super) fn carried_names(kinds: &[Side<'_>; 2]) -> Result<Vec<Field>> {
    let mut carried = name_fields(kinds)?;
    carried.push(Field::new(OP, DataType::Utf8, true));
    Ok(carried)
}
