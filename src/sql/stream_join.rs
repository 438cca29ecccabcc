//! Lowers an inner join of two streams. From the join's conditions it reads, for each side,
//! until when a row can still match the other side's rows to come (`b.ts BETWEEN a.ts AND
//! a.expires` keeps an `a` row until the watermark passes `a.expires`, a `b` row until it
//! passes `b.ts`); a side without such a bound keeps its rows for `state_ttl`, or for ever.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field};
use datafusion::common::{Column, ScalarValue};
use datafusion::execution::SessionState;
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Join, JoinType, LogicalPlan, Operator};
use datafusion::physical_expr::create_physical_expr;
use datafusion::physical_plan::ExecutionPlan;

use super::lineage::is_event_time;
use super::plan::{
    join_over, lower, placeholder_with, plan_over_placeholder, plan_physical, push_n, Lowered,
    Lowering,
};
use super::windows::WINDOW_END;
use crate::error::{Error, Result};
use crate::runtime::operator::stream_join::{
    ExpiryBound, OuterJoin, StreamJoinSpec, RIGHT_ROW_ID, ROW_ID,
};
use crate::runtime::plan::OperatorSpec;

const EXAMPLE: &str = "ON a.k = b.k AND b.ts BETWEEN a.ts - INTERVAL '1' HOUR AND a.ts";

/// An expression over one side's columns plus a constant: (side, expression, microseconds).
type SideTerm = (usize, Expr, i64);

/// Microseconds of an interval or duration literal of fixed length (no months).
fn micros(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            Some(v.days as i64 * 86_400_000_000 + v.nanoseconds / 1000)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Some(v.days as i64 * 86_400_000_000 + v.milliseconds as i64 * 1000)
        }
        ScalarValue::DurationSecond(Some(v)) => v.checked_mul(1_000_000),
        ScalarValue::DurationMillisecond(Some(v)) => v.checked_mul(1000),
        ScalarValue::DurationMicrosecond(Some(v)) => Some(*v),
        ScalarValue::DurationNanosecond(Some(v)) => Some(v / 1000),
        _ => None,
    }
}

/// `e` as an expression over the columns of one of the join's sides, plus a constant.
fn side_term(join: &Join, e: &Expr) -> Option<SideTerm> {
    if let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e {
        let split = match (left.as_ref(), op, right.as_ref()) {
            (t, Operator::Plus, Expr::Literal(v, _)) => Some((t, micros(v)?)),
            (Expr::Literal(v, _), Operator::Plus, t) => Some((t, micros(v)?)),
            (t, Operator::Minus, Expr::Literal(v, _)) => Some((t, micros(v)?.checked_neg()?)),
            _ => None,
        };
        if let Some((term, constant)) = split {
            let (side, expr, offset) = side_term(join, term)?;
            return Some((side, expr, offset.checked_add(constant)?));
        }
    }
    let columns = e.column_refs();
    [&join.left, &join.right]
        .into_iter()
        .position(|side| !columns.is_empty() && columns.iter().all(|c| side.schema().has_column(c)))
        .map(|side| (side, e.clone(), 0))
}

/// Whether `term` is its side's event time plus a constant: rows of that side still to come
/// are at or after the watermark.
fn is_time_term(join: &Join, term: &SideTerm) -> bool {
    let plan = if term.0 == 0 { &join.left } else { &join.right };
    matches!(&term.1, Expr::Column(c) if is_event_time(plan, &c.name))
}

/// The comparisons of one conjunct: `a op b`, and a BETWEEN as two.
fn comparisons(e: &Expr) -> Vec<(Expr, Operator, Expr)> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right })
            if matches!(
                op,
                Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq
            ) =>
        {
            vec![(left.as_ref().clone(), *op, right.as_ref().clone())]
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => vec![
            (expr.as_ref().clone(), Operator::GtEq, low.as_ref().clone()),
            (expr.as_ref().clone(), Operator::LtEq, high.as_ref().clone()),
        ],
        _ => Vec::new(),
    }
}

/// A bound on how long a row can still match: an expression over its side's rows (a time)
/// and microseconds after it.
type Bound = (Expr, i64);

/// Per side, the bounds the join's conditions put on the other side's event time by its rows:
/// with `X.ts <= e(Y)` (X.ts being X's event time), a Y row can match no X row still to come
/// once the watermark passes `e(y)`. Empty for a side without one.
fn bounds(join: &Join) -> [Vec<Bound>; 2] {
    let mut found: [Vec<Bound>; 2] = [Vec::new(), Vec::new()];
    let conjuncts = join
        .filter
        .as_ref()
        .map(split_conjunction)
        .unwrap_or_default();
    // An equality of event times (windows joined on window_end) bounds both ways.
    let equal = join.on.iter().flat_map(|(l, r)| {
        [
            (l.clone(), Operator::LtEq, r.clone()),
            (l.clone(), Operator::GtEq, r.clone()),
        ]
    });
    let compared = conjuncts.into_iter().flat_map(comparisons);
    for (l, op, r) in equal.chain(compared) {
        let (Some(a), Some(b)) = (side_term(join, &l), side_term(join, &r)) else {
            continue;
        };
        if a.0 == b.0 {
            continue;
        }
        // a + a.off <= b + b.off, with a an event time, bounds a's side by b's row: that row
        // can match until the watermark passes b + (b.off - a.off). A > turns it round.
        let (bounded, by) = match op {
            Operator::Lt | Operator::LtEq => (a, b),
            _ => (b, a),
        };
        if !is_time_term(join, &bounded) {
            continue;
        }
        let Some(after) = by.2.checked_sub(bounded.2) else {
            continue;
        };
        found[by.0].push((by.1, after));
    }
    found
}

/// The INNER join of `join`'s conditions, each preserved side's placeholder carrying a row id
/// after its columns: it tells which preserved rows matched.
fn matching_plan(
    join: &Join,
    preserved: [bool; 2],
    state: &SessionState,
) -> Result<Arc<dyn ExecutionPlan>> {
    let placeholder = |plan: &LogicalPlan, row_id: Option<&str>| {
        let extra = row_id.map(|name| Field::new(name, DataType::UInt64, false));
        placeholder_with(plan, extra.into_iter().collect())
    };
    let inner = join_over(
        join,
        placeholder(&join.left, preserved[0].then_some(ROW_ID))?,
        placeholder(&join.right, preserved[1].then_some(RIGHT_ROW_ID))?,
        join.on.clone(),
        JoinType::Inner,
    )?;
    plan_physical(&LogicalPlan::Join(inner), state)
}

/// A join of two streams: INNER, LEFT, RIGHT or FULL.
pub(super) fn lower_stream_join(join: &Join, cx: &mut Lowering) -> Result<Lowered> {
    let preserved = match join.join_type {
        JoinType::Inner => None,
        JoinType::Left => Some([true, false]),
        JoinType::Right => Some([false, true]),
        JoinType::Full => Some([true, true]),
        other => {
            return Err(Error::Unsupported(format!(
                "a {} join of two streams is not supported yet: INNER, LEFT, RIGHT and FULL joins are ({EXAMPLE})",
                other.to_string().to_uppercase()
            )))
        }
    };
    if join.null_aware {
        return Err(Error::Unsupported(
            "NOT IN over a stream is not supported yet: use NOT EXISTS".into(),
        ));
    }
    if join.on.is_empty() {
        return Err(Error::Unsupported(format!(
            "a join of two streams needs an equality between them: {EXAMPLE}"
        )));
    }
    let expiry_of = bounds(join);
    // An outer join with no bound on either side's event time, into a sink that applies rows
    // by key: each row's match (or its absence) is updated as the other side's rows come.
    if preserved.is_some() && cx.applies_by_key && expiry_of.iter().all(Vec::is_empty) {
        return super::change_join::lower_change_join(
            join,
            [
                super::change_join::Side::Appends,
                super::change_join::Side::Appends,
            ],
            cx,
        );
    }
    let updating = cx.updating;
    let inputs = vec![lower(&join.left, cx)?, lower(&join.right, cx)?];
    if cx.updating != updating {
        return Err(Error::Unsupported(
            "a join of a GROUP BY's updates with a stream is not supported yet".into(),
        )
        .at_place(cx.places.group_by));
    }
    let props = ExecutionProps::new();
    let compile = |e: &Expr, side: &LogicalPlan| {
        create_physical_expr(e, side.schema(), &props, &Default::default())
    };
    let mut keys = [Vec::new(), Vec::new()];
    for (l, r) in &join.on {
        keys[0].push(compile(l, &join.left)?);
        keys[1].push(compile(r, &join.right)?);
    }
    let sides = [&join.left, &join.right];
    let mut bounded = false;
    let mut expiry: [Vec<ExpiryBound>; 2] = [Vec::new(), Vec::new()];
    for (side, found) in expiry_of.into_iter().enumerate() {
        for (at, after) in found {
            bounded = true;
            expiry[side].push(ExpiryBound {
                at: compile(&at, sides[side])?,
                after,
            });
        }
    }
    let outer = match preserved {
        Some(p) => Some(OuterJoin {
            preserved: p,
            matching: matching_plan(join, p, cx.state)?,
        }),
        None => None,
    };
    let spec = StreamJoinSpec {
        join: plan_over_placeholder(&LogicalPlan::Join(join.clone()), cx.state)?,
        outer,
        keys,
        schemas: [
            Arc::new(join.left.schema().as_arrow().clone()),
            Arc::new(join.right.schema().as_arrow().clone()),
        ],
        expiry,
    };
    if bounded {
        cx.windowed = true;
    }
    cx.stream_joined = true;
    cx.scanned = None;
    Ok(push_n(cx, OperatorSpec::StreamJoin(spec), inputs))
}

/// How far behind the watermark a window's time column of the rows of a join of two streams can
/// be, in microseconds: `column` of side `side` of `join`. A pair comes out when its later row
/// arrives, at or after the watermark; the join's conditions bound the other side's time by
/// this side's (`a.ts <= b.ts + D`), so this side's time is at most D behind. `window_end` of a
/// window over this side is past its time, and no later than D behind either.
pub(super) fn output_lateness(join: &Join, side: usize, column: &Column) -> Result<i64> {
    if join.join_type != JoinType::Inner {
        return Err(Error::Unsupported(format!(
            "a window over a {} join of two streams is not supported yet: only over an INNER one",
            join.join_type.to_string().to_uppercase()
        )));
    }
    let plan = if side == 0 { &join.left } else { &join.right };
    let windows_its_time = |at: &Expr| match at {
        Expr::Column(c) if c == column => true,
        Expr::Column(c) => column.name == WINDOW_END && is_event_time(plan, &c.name),
        _ => false,
    };
    let [left, right] = bounds(join);
    let found = if side == 0 { left } else { right };
    found
        .into_iter()
        .filter(|(at, _)| windows_its_time(at))
        .map(|(_, after)| after.max(0))
        .min()
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "a window over the rows of a join of two streams closes once no pair for it can come: the join's conditions must bound the other side's event time by {column}'s side's ({EXAMPLE})"
            ))
        })
}
