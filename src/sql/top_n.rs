//! ROW_NUMBER() in a pipeline: `WHERE rn <= N` over `ROW_NUMBER() OVER (PARTITION BY ...
//! ORDER BY ...)` (Nexmark q9's winning bid per auction) lowered to the operator that keeps
//! each partition's first N rows and emits them as updates.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field};
use datafusion::common::{DFSchema, ScalarValue, TableReference};
use datafusion::logical_expr::{
    lit, BinaryExpr, EmptyRelation, Expr, Filter, LogicalPlan, LogicalPlanBuilder, Operator,
    SortExpr, Window,
};

use super::plan::{lower, plan_physical, push, Lowered, Lowering};
use crate::error::{Error, Result};
use crate::runtime::operator::top_n::{TopNSpec, RANK_BEFORE};
use crate::runtime::plan::{Input, OperatorSpec};

/// What a pipeline's window functions may be, for the errors that refuse the others.
const SUPPORTED: &str = "a pipeline supports ROW_NUMBER() OVER (PARTITION BY ... ORDER BY ...) kept to its first rows with WHERE row_number <= N";

/// The window under `plan`, through aliases and projections of plain columns, and the name
/// there of `column`, which `plan` outputs.
fn window_under<'a>(plan: &'a LogicalPlan, column: &str) -> Option<(&'a Window, String)> {
    match plan {
        LogicalPlan::Window(w) => Some((w, column.to_string())),
        LogicalPlan::SubqueryAlias(a) => window_under(&a.input, column),
        LogicalPlan::Projection(p) => {
            let i = p.schema.fields().iter().position(|f| f.name() == column)?;
            match p.expr[i].clone().unalias() {
                Expr::Column(c) => window_under(&p.input, &c.name),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether `filter` keeps the first rows by a window function under it (through projections
/// of plain columns): then [`lower_ranked_filter`] lowers it.
pub(super) fn filters_a_window(filter: &Filter) -> bool {
    filter
        .predicate
        .column_refs()
        .iter()
        .any(|c| window_under(&filter.input, &c.name).is_some())
}

/// A WHERE keeping the first rows of a window function under it: the window becomes the
/// operator keeping them ([`lower_top_n`]), so the WHERE itself is done by it.
pub(super) fn lower_ranked_filter(filter: &Filter, cx: &mut Lowering) -> Result<Lowered> {
    let refuse = || {
        Error::Unsupported(format!("WHERE {}: {SUPPORTED}", filter.predicate))
            .at_place(cx.places.select)
    };
    let column = match &filter.predicate {
        Expr::BinaryExpr(BinaryExpr { left, right, .. }) => match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(..)) | (Expr::Literal(..), Expr::Column(c)) => c,
            _ => return Err(refuse()),
        },
        _ => return Err(refuse()),
    };
    let Some((window, name)) = window_under(&filter.input, &column.name) else {
        return Err(refuse());
    };
    // The WHERE's column must be the row number, under whatever name it has there.
    let number = window
        .schema
        .field(window.input.schema().fields().len())
        .name();
    let Some(limit) = (name == *number)
        .then(|| limit_of(&filter.predicate, &column.name))
        .flatten()
    else {
        return Err(refuse());
    };
    cx.row_number_limit = Some(limit);
    let lowered = lower(&filter.input, cx);
    if cx.row_number_limit.take().is_some() {
        return Err(Error::Internal(
            "a ROW_NUMBER's limit was not taken by its window".into(),
        ));
    }
    lowered
}

/// `window` kept to its first `limit` rows per partition.
pub(super) fn lower_top_n(window: &Window, limit: usize, cx: &mut Lowering) -> Result<Lowered> {
    let refuse = |what: String| {
        Error::Unsupported(format!("{what}: {SUPPORTED}")).at_place(cx.places.select)
    };
    let [expr] = window.window_expr.as_slice() else {
        return Err(refuse(format!(
            "{} window functions in one SELECT",
            window.window_expr.len()
        )));
    };
    let Expr::WindowFunction(function) = expr.clone().unalias() else {
        return Err(refuse(format!("window expression {expr}")));
    };
    if function.fun.name() != "row_number" || function.params.filter.is_some() {
        return Err(refuse(format!("window function {}", function.fun.name())));
    }
    let input_schema = window.input.schema();
    let partition = function
        .params
        .partition_by
        .iter()
        .map(|e| match e {
            Expr::Column(c) => Ok(input_schema.index_of_column(c)?),
            other => Err(refuse(format!("PARTITION BY {other} (not a column)"))),
        })
        .collect::<Result<Vec<usize>>>()?;
    if partition.is_empty() {
        return Err(refuse(
            "ROW_NUMBER() without PARTITION BY numbers the whole stream".into(),
        ));
    }
    let number = window.schema.qualified_field(input_schema.fields().len());
    let keep = Expr::Column(number.into()).lt_eq(lit(limit as u64));
    if cx.carry.is_some() {
        return Err(Error::Unsupported(
            "ROW_NUMBER() under a GROUP BY over changes is not supported".into(),
        )
        .at_place(cx.places.select));
    }
    // Over updates (a GROUP BY's, a change stream's), each row carries its table key and `_op`
    // up to the window, which keeps every current row.
    let over_join = super::change_join::change_join_under(&window.input);
    let carried = match (super::changes::updating_aggregate_under(&window.input), over_join) {
        (Some(inner), _) => Some((super::changes::group_key_columns(inner), true)),
        (None, Some((_, kinds))) => Some((super::change_join::carried_names(&kinds)?, false)),
        (None, None) => match super::changes::change_stream_under(&window.input) {
            Some(table) if table.primary_key().is_empty() => {
                return Err(Error::Plan(format!(
                    "a ROW_NUMBER() over change stream \"{}\" numbers the rows of the table it describes, and needs its primary key to know which row each change replaces: declare PRIMARY KEY (...) on the source",
                    table.name()
                ))
                .at_place(cx.places.select))
            }
            Some(table) => Some((super::changes::carried_columns(&table, None)?, false)),
            None => None,
        },
    };
    let updating = cx.updating;
    if let Some((fields, from_group_by)) = &carried {
        cx.carry = Some(fields.clone());
        cx.carry_from_group_by = *from_group_by;
    }
    let lowered = lower(&window.input, cx);
    cx.carry = None;
    cx.carry_from_group_by = false;
    let from = lowered?;
    if carried.is_none() && cx.updating != updating {
        return Err(Error::Unsupported(
            "a ROW_NUMBER() over a join's updates (a join of two change streams, or an outer join of two streams into a sink that applies rows by key) is not supported yet".into(),
        )
        .at_place(cx.places.select));
    }
    // Each partition's rows in order, numbered, the first `limit` kept: DataFusion's window
    // needs its input sorted, and the plan has no physical optimizer to sort it.
    let sort: Vec<SortExpr> = function
        .params
        .partition_by
        .iter()
        .map(|e| e.clone().sort(true, false))
        .chain(function.params.order_by.iter().cloned())
        .collect();
    // The rows to number carry their number before (0 for new ones) after their columns, any
    // of which may be NULL: kept rows keep only the columns numbering reads (see TopN).
    let mut fields: Vec<(Option<TableReference>, Arc<Field>)> = input_schema
        .iter()
        .map(|(q, f)| (q.cloned(), Arc::new(f.as_ref().clone().with_nullable(true))))
        .collect();
    fields.push((
        None,
        Arc::new(Field::new(RANK_BEFORE, DataType::UInt64, false)),
    ));
    let placeholder = LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: false,
        schema: Arc::new(DFSchema::new_with_metadata(
            fields,
            input_schema.metadata().clone(),
        )?),
    });
    let logical = LogicalPlanBuilder::from(placeholder)
        .sort(sort)?
        .window(window.window_expr.clone())?
        .filter(keep)?
        .build()?;
    let plan = plan_physical(&logical, cx.state)?;
    let spec = TopNSpec {
        plan,
        partition,
        output: Arc::new(window.schema.as_arrow().clone()),
    };
    let operator = match carried {
        None => OperatorSpec::TopN { spec, limit },
        Some((fields, _)) => {
            let schema = Arc::new(arrow::datatypes::Schema::new(
                input_schema
                    .as_arrow()
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone().with_nullable(true))
                    .chain(fields)
                    .collect::<Vec<_>>(),
            ));
            OperatorSpec::ChangeTopN {
                spec,
                limit,
                schema,
            }
        }
    };
    let node = push(cx, operator, from);
    if let Input::Node(n) = node {
        cx.updating = Some(n);
    }
    Ok(node)
}

/// N of `column <= N` (or `< N + 1`, `= 1`, and the same turned round), N at least 1.
fn limit_of(predicate: &Expr, column: &str) -> Option<usize> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = predicate else {
        return None;
    };
    let (op, value) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) if c.name == column => (*op, v),
        (Expr::Literal(v, _), Expr::Column(c)) if c.name == column => (op.swap()?, v),
        _ => return None,
    };
    let ScalarValue::Int64(Some(n)) = value.cast_to(&DataType::Int64).ok()? else {
        return None;
    };
    let limit = match op {
        Operator::LtEq => n,
        Operator::Lt => n - 1,
        Operator::Eq if n == 1 => 1,
        _ => return None,
    };
    usize::try_from(limit).ok().filter(|&l| l >= 1)
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;

    #[test]
    fn limits_are_read_from_the_filter_on_the_row_number() {
        assert_eq!(limit_of(&col("rn").lt_eq(lit(3u64)), "rn"), Some(3));
        assert_eq!(limit_of(&col("rn").lt(lit(3i32)), "rn"), Some(2));
        assert_eq!(limit_of(&col("rn").eq(lit(1i64)), "rn"), Some(1));
        assert_eq!(limit_of(&lit(2i64).gt_eq(col("rn")), "rn"), Some(2));
        assert_eq!(limit_of(&col("rn").eq(lit(2i64)), "rn"), None);
        assert_eq!(limit_of(&col("rn").gt(lit(2i64)), "rn"), None);
        assert_eq!(limit_of(&col("rn").lt(lit(1i64)), "rn"), None);
        assert_eq!(limit_of(&col("other").lt_eq(lit(3i64)), "rn"), None);
    }
}
