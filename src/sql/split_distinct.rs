//! Splits a GROUP BY's DISTINCT aggregates in two: a marking stage in front of the aggregate
//! marks the first row of each group and value (passing each FILTER), and the aggregate counts
//! the marked rows, without DISTINCT. An updating aggregate then keeps a number per group
//! rather than the list of every distinct value, merged again at every checkpoint.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Aggregate, Expr};
use datafusion::physical_expr::{create_physical_expr, PhysicalExpr};

use super::placeholders::placeholder_with;
use super::plan::{push, Lowering};
use crate::error::Result;
use crate::runtime::operator::distinct_marks::{DistinctMarksSpec, MarkedValue, MAX_FILTERS};
use crate::runtime::plan::{Input, OperatorSpec};

/// The aggregates whose DISTINCT result is their result over the first row of each value.
const MARKABLE: [&str; 3] = ["count", "sum", "avg"];

/// The mark column of argument `value`'s filter `filter`.
fn mark_name(value: usize, filter: usize) -> String {
    format!("__distinct_{value}_{filter}")
}

/// When `agg` has DISTINCT aggregates over one argument of a kind that counts marked rows,
/// pushes the marking stage over `from` and returns it with the aggregate rewritten over its
/// rows (same output columns); otherwise `from` and `agg` as they are.
pub(super) fn split_distinct(
    agg: &Aggregate,
    from: Input,
    cx: &mut Lowering,
) -> Result<(Input, Aggregate)> {
    let keys = agg.group_expr.len();
    // Per DISTINCT argument, its filters (None: none), in the order the marks come.
    let mut values: Vec<(Expr, Vec<Option<Expr>>)> = Vec::new();
    let mut rewritten = Vec::with_capacity(agg.aggr_expr.len());
    for (i, e) in agg.aggr_expr.iter().enumerate() {
        let name = agg.schema.field(keys + i).name().clone();
        let inner = match e {
            Expr::Alias(alias) => alias.expr.as_ref(),
            other => other,
        };
        let Expr::AggregateFunction(f) = inner else {
            rewritten.push(e.clone());
            continue;
        };
        let params = &f.params;
        let markable =
            params.distinct && params.args.len() == 1 && MARKABLE.contains(&f.func.name());
        if !markable {
            rewritten.push(e.clone());
            continue;
        }
        let value = &params.args[0];
        let filter = params.filter.as_deref().cloned();
        let v = match values.iter().position(|(x, _)| x == value) {
            Some(v) => v,
            None => {
                values.push((value.clone(), Vec::new()));
                values.len() - 1
            }
        };
        let filters = &mut values[v].1;
        let j = match filters.iter().position(|x| *x == filter) {
            Some(j) => j,
            None if filters.len() < MAX_FILTERS => {
                filters.push(filter);
                filters.len() - 1
            }
            None => {
                rewritten.push(e.clone());
                continue;
            }
        };
        let mark = Expr::Column(datafusion::common::Column::new_unqualified(mark_name(v, j)));
        let counted = AggregateFunction::new_udf(
            f.func.clone(),
            params.args.clone(),
            false,
            Some(Box::new(mark)),
            params.order_by.clone(),
            params.null_treatment,
        );
        rewritten.push(Expr::AggregateFunction(counted).alias(name));
    }
    if values.is_empty() {
        return Ok((from, agg.clone()));
    }
    let marks: Vec<Field> = values
        .iter()
        .enumerate()
        .flat_map(|(v, (_, filters))| {
            (0..filters.len()).map(move |j| Field::new(mark_name(v, j), DataType::Boolean, false))
        })
        .collect();
    let over_marks = placeholder_with(&agg.input, marks.clone())?;
    let split = Aggregate::try_new(Arc::new(over_marks), agg.group_expr.clone(), rewritten)?;
    // The aggregate after the marks must have the same output, or the plan above it breaks:
    // leave the query as it is when it would not.
    if split.schema.fields() != agg.schema.fields() {
        tracing::debug!("DISTINCT aggregates not split: the output would differ");
        return Ok((from, agg.clone()));
    }
    let input = agg.input.schema();
    let props = datafusion::logical_expr::execution_props::ExecutionProps::new();
    let physical = |e: &Expr| -> Result<Arc<dyn PhysicalExpr>> {
        Ok(create_physical_expr(e, input, &props, &Default::default())?)
    };
    let spec = DistinctMarksSpec {
        groups: agg
            .group_expr
            .iter()
            .map(&physical)
            .collect::<Result<_>>()?,
        values: values
            .iter()
            .map(|(value, filters)| {
                Ok(MarkedValue {
                    value: physical(value)?,
                    filters: filters
                        .iter()
                        .map(|f| f.as_ref().map(&physical).transpose())
                        .collect::<Result<_>>()?,
                })
            })
            .collect::<Result<_>>()?,
        input: Arc::new(input.as_arrow().clone()),
        output: Arc::new(Schema::new(
            input
                .as_arrow()
                .fields()
                .iter()
                .cloned()
                .chain(marks.into_iter().map(Arc::new))
                .collect::<Vec<_>>(),
        )),
    };
    let node = push(cx, OperatorSpec::DistinctMarks(spec), from);
    Ok((node, split))
}
