//! Lowers an inner join of two streams. From the join's conditions it reads, for each side,
//! how long after its event time a row can still match the other side (`b.ts BETWEEN a.ts -
//! INTERVAL '1' HOUR AND a.ts` keeps an `a` row until the watermark passes `a.ts`, a `b` row
//! until it passes `b.ts + 1 hour`); a side without such a bound keeps its rows for
//! `state_ttl`, or for ever.

use std::sync::Arc;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Join, JoinType, LogicalPlan, Operator};
use datafusion::physical_expr::create_physical_expr;

use super::lineage::is_event_time;
use super::plan::{lower, plan_over_placeholder, push_n, Lowered, Lowering};
use crate::error::{Error, Result};
use crate::runtime::operator::stream_join::StreamJoinSpec;
use crate::runtime::plan::OperatorSpec;

const EXAMPLE: &str = "ON a.k = b.k AND b.ts BETWEEN a.ts - INTERVAL '1' HOUR AND a.ts";

/// An event-time column of one side, plus a constant: (side, column index, microseconds).
type TimeTerm = (usize, usize, i64);

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

/// `e` as an event-time column of one of the join's sides plus a constant.
fn time_term(join: &Join, e: &Expr) -> Option<TimeTerm> {
    match e {
        Expr::Column(c) => {
            for (side, plan) in [&join.left, &join.right].into_iter().enumerate() {
                if let Ok(i) = plan.schema().index_of_column(c) {
                    return is_event_time(plan, &c.name).then_some((side, i, 0));
                }
            }
            None
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (term, constant, sign) = match (left.as_ref(), op, right.as_ref()) {
                (t, Operator::Plus, Expr::Literal(v, _)) => (t, v, 1),
                (Expr::Literal(v, _), Operator::Plus, t) => (t, v, 1),
                (t, Operator::Minus, Expr::Literal(v, _)) => (t, v, -1),
                _ => return None,
            };
            let (side, column, offset) = time_term(join, term)?;
            Some((side, column, offset.checked_add(sign * micros(constant)?)?))
        }
        _ => None,
    }
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

/// Per side, its event-time column and how long after it a row can still match: the
/// tightest bound the join's conditions put on the other side's time, when they put one.
fn bounds(join: &Join) -> [Option<(usize, i64)>; 2] {
    let mut found: [Option<(usize, i64)>; 2] = [None, None];
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
        let (Some(a), Some(b)) = (time_term(join, &l), time_term(join, &r)) else {
            continue;
        };
        if a.0 == b.0 {
            continue;
        }
        // a.ts + a.off <= b.ts + b.off bounds a's side by b's row: that row can match
        // until the watermark passes b.ts + (b.off - a.off). A > turns it round.
        let (bounded, by) = match op {
            Operator::Lt | Operator::LtEq => (a, b),
            _ => (b, a),
        };
        let Some(after) = by.2.checked_sub(bounded.2) else {
            continue;
        };
        let slot = &mut found[by.0];
        *slot = Some(match *slot {
            Some((column, old)) => (column, old.min(after)),
            None => (by.1, after),
        });
    }
    found
}

/// An inner join of two streams.
pub(super) fn lower_stream_join(join: &Join, cx: &mut Lowering) -> Result<Lowered> {
    if join.join_type != JoinType::Inner {
        return Err(Error::Unsupported(format!(
            "a {} join of two streams is not supported yet: only INNER JOIN ({EXAMPLE})",
            join.join_type.to_string().to_uppercase()
        )));
    }
    if join.on.is_empty() {
        return Err(Error::Unsupported(format!(
            "a join of two streams needs an equality between them: {EXAMPLE}"
        )));
    }
    let expiry = bounds(join);
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
    let spec = StreamJoinSpec {
        join: plan_over_placeholder(&LogicalPlan::Join(join.clone()), cx.state)?,
        keys,
        schemas: [
            Arc::new(join.left.schema().as_arrow().clone()),
            Arc::new(join.right.schema().as_arrow().clone()),
        ],
        expiry,
    };
    if expiry.iter().any(Option::is_some) {
        cx.windowed = true;
    }
    cx.stream_joined = true;
    cx.scanned = None;
    Ok(push_n(cx, OperatorSpec::StreamJoin(spec), inputs))
}
