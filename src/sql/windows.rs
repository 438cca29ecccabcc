//! Event time in SQL: the window table functions (`TUMBLE(source, time_column, size)`), which
//! add `window_start` and `window_end` to a source's rows, and the compiled form of a source's
//! `WATERMARK FOR col AS expr`.

use std::sync::Arc;

use arrow::datatypes::{DataType, IntervalMonthDayNano, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::{provider_as_source, ViewTable};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{lit, Expr, LogicalPlanBuilder};
use datafusion::physical_expr::create_physical_expr;

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::runtime::event_time::EventTime;
use crate::system_tables::source_table;

/// Names of the columns a window function adds.
pub const WINDOW_START: &str = "window_start";
/// See [`WINDOW_START`].
pub const WINDOW_END: &str = "window_end";

/// `TUMBLE(source, time_column, size)`: every row of the source with the fixed-size,
/// non-overlapping window `[window_start, window_end)` its time falls in (windows start at
/// multiples of `size` from 1970-01-01).
#[derive(Debug)]
pub struct Tumble {
    catalog: Arc<Catalog>,
}

impl Tumble {
    /// The function over the sources of `catalog`.
    pub fn new(catalog: Arc<Catalog>) -> Self {
        Tumble { catalog }
    }
}

fn plan_error(message: String) -> DataFusionError {
    DataFusionError::Plan(message)
}

/// A positive interval of days and smaller units, in nanoseconds.
fn interval_nanos(function: &str, what: &str, e: &Expr) -> DfResult<i64> {
    let nanos = match e {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) if v.months == 0 => (v.days
            as i64)
            .checked_mul(86_400_000_000_000)
            .and_then(|d| d.checked_add(v.nanoseconds)),
        Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) => (v.days as i64)
            .checked_mul(86_400_000)
            .and_then(|d| d.checked_add(v.milliseconds as i64))
            .and_then(|ms| ms.checked_mul(1_000_000)),
        _ => None,
    };
    match nanos {
        Some(n) if n > 0 => Ok(n),
        _ => Err(plan_error(format!(
            "the {what} of {function} must be a positive interval of days or less, such as INTERVAL '10' SECOND, not {e}"
        ))),
    }
}

fn column_name(function: &str, what: &str, e: &Expr) -> DfResult<String> {
    match e {
        Expr::Column(c) => Ok(c.name.clone()),
        _ => Err(plan_error(format!(
            "the {what} argument of {function} must be a name, not {e}"
        ))),
    }
}

impl TableFunctionImpl for Tumble {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let [source, time, size] = args.exprs() else {
            return Err(plan_error(
                "TUMBLE takes a source, its time column and a size: TUMBLE(bids, date_time, INTERVAL '10' SECOND)"
                    .into(),
            ));
        };
        let source = column_name("TUMBLE", "first (source)", source)?;
        let time = column_name("TUMBLE", "second (time column)", time)?;
        let size = interval_nanos("TUMBLE", "size", size)?;
        let entry = self
            .catalog
            .source(&source)
            .ok_or_else(|| plan_error(format!("TUMBLE reads a source; \"{source}\" is not one")))?;
        let table = source_table(&self.catalog, &source)
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .ok_or_else(|| plan_error(format!("source \"{source}\" does not exist")))?;
        let schema = table.schema();
        let field = schema.field_with_name(&time).map_err(|_| {
            plan_error(format!(
                "TUMBLE over \"{source}\": it has no column \"{time}\""
            ))
        })?;
        if !matches!(field.data_type(), DataType::Timestamp(_, _)) {
            return Err(plan_error(format!(
                "TUMBLE needs a timestamp column; \"{time}\" of \"{source}\" is {}",
                field.data_type()
            )));
        }
        if let Some((watermarked, _)) = &entry.watermark {
            if *watermarked != time {
                return Err(plan_error(format!(
                    "TUMBLE over \"{time}\", but the watermark of \"{source}\" is on \"{watermarked}\": windows close by the watermark, so they must be on its column"
                )));
            }
        }
        for added in [WINDOW_START, WINDOW_END] {
            if schema.field_with_name(added).is_ok() {
                return Err(plan_error(format!(
                    "source \"{source}\" already has a column \"{added}\", which TUMBLE adds"
                )));
            }
        }
        let size = lit(ScalarValue::IntervalMonthDayNano(Some(
            IntervalMonthDayNano {
                months: 0,
                days: 0,
                nanoseconds: size,
            },
        )));
        let time_col = Expr::Column(datafusion::common::Column::new(Some(source.clone()), &time));
        let start = datafusion::functions::datetime::date_bin().call(vec![size.clone(), time_col]);
        let mut columns: Vec<Expr> = schema
            .fields()
            .iter()
            .map(|f| {
                Expr::Column(datafusion::common::Column::new(
                    Some(source.clone()),
                    f.name(),
                ))
            })
            .collect();
        columns.push(start.clone().alias(WINDOW_START));
        columns.push((start + size).alias(WINDOW_END));
        let plan = LogicalPlanBuilder::scan(&source, provider_as_source(Arc::new(table)), None)?
            .project(columns)?
            .build()?;
        Ok(Arc::new(ViewTable::new(plan, None)))
    }
}

/// Compiles a source's `WATERMARK FOR column AS expression` over its columns: the column and
/// the expression must both be timestamps.
pub fn event_time(
    state: &SessionState,
    schema: &SchemaRef,
    column: &str,
    expression: &str,
) -> Result<EventTime> {
    let index = schema.index_of(column).map_err(|_| {
        Error::Plan(format!(
            "WATERMARK FOR \"{column}\": the source has no such column"
        ))
    })?;
    let column_type = schema.field(index).data_type();
    if !matches!(column_type, DataType::Timestamp(_, _)) {
        return Err(Error::Plan(format!(
            "WATERMARK FOR \"{column}\": the column is {column_type}, not a timestamp"
        )));
    }
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    let logical = state.create_logical_expr(expression, &df_schema)?;
    let watermark = create_physical_expr(
        &logical,
        &df_schema,
        state.execution_props(),
        &Default::default(),
    )?;
    let watermark_type = watermark.data_type(schema)?;
    if !matches!(watermark_type, DataType::Timestamp(_, _)) {
        return Err(Error::Plan(format!(
            "the watermark expression {expression} is {watermark_type}, not a timestamp (write it as {column} - INTERVAL '5' SECOND)"
        )));
    }
    Ok(EventTime {
        column: index,
        name: column.to_string(),
        watermark,
    })
}
