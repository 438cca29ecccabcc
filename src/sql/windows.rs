//! Event time in SQL: the window table functions (`TUMBLE(source, time_column, size)`,
//! `HOP(source, time_column, slide, size)`), which add `window_start` and `window_end` to a
//! source's rows, and the compiled form of a source's `WATERMARK FOR col AS expr`.

use std::sync::Arc;

use arrow::array::{AsArray, Int64Builder, ListBuilder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int64Type, IntervalMonthDayNano, SchemaRef, TimeUnit};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{DFSchema, Diagnostic, ScalarValue};
use datafusion::datasource::{provider_as_source, ViewTable};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{
    lit, ColumnarValue, Expr, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};
use datafusion::physical_expr::create_physical_expr;

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::runtime::event_time::EventTime;
use crate::runtime::source_table::SourceTable;
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

pub(super) fn plan_error(message: String) -> DataFusionError {
    DataFusionError::Plan(message)
}

/// A positive interval of days and smaller units, in nanoseconds.
pub(super) fn interval_nanos(function: &str, what: &str, e: &Expr) -> DfResult<i64> {
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

pub(super) fn column_name(function: &str, what: &str, e: &Expr) -> DfResult<String> {
    match e {
        Expr::Column(c) => Ok(c.name.clone()),
        _ => Err(plan_error(format!(
            "the {what} argument of {function} must be a name, not {e}"
        ))),
    }
}

/// `error` pointing at the place of `e` in the statement, when it is a name whose place is known.
pub(super) fn at(e: &Expr, error: DataFusionError) -> DataFusionError {
    match e {
        Expr::Column(c) => match c.spans().first() {
            Some(span) => {
                let message = error.message().to_string();
                error.with_diagnostic(Diagnostic::new_error(message, Some(span)))
            }
            None => error,
        },
        _ => error,
    }
}

/// A window function's source, resolved and checked.
pub(super) struct WindowedSource {
    pub(super) name: String,
    pub(super) time: String,
    pub(super) table: SourceTable,
}

impl WindowedSource {
    pub(super) fn resolve(
        catalog: &Catalog,
        function: &str,
        source: &Expr,
        time: &Expr,
    ) -> DfResult<Self> {
        Self::resolve_unplaced(catalog, function, source, time).map_err(|e| {
            // Errors about the time column point at it; the others at the source.
            let message = e.message();
            let about_time = message.contains("column") || message.contains("watermark");
            at(if about_time { time } else { source }, e)
        })
    }

    fn resolve_unplaced(
        catalog: &Catalog,
        function: &str,
        source: &Expr,
        time: &Expr,
    ) -> DfResult<Self> {
        let name = column_name(function, "first (source)", source)?;
        let time = column_name(function, "second (time column)", time)?;
        let entry = catalog.source(&name).ok_or_else(|| {
            plan_error(format!("{function} reads a source; \"{name}\" is not one"))
        })?;
        let table = source_table(catalog, &name)
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .ok_or_else(|| plan_error(format!("source \"{name}\" does not exist")))?;
        let schema = table.schema();
        let field = schema.field_with_name(&time).map_err(|_| {
            plan_error(format!(
                "{function} over \"{name}\": it has no column \"{time}\""
            ))
        })?;
        if !matches!(field.data_type(), DataType::Timestamp(_, _)) {
            return Err(plan_error(format!(
                "{function} needs a timestamp column; \"{time}\" of \"{name}\" is {}",
                field.data_type()
            )));
        }
        if let Some((watermarked, _)) = &entry.watermark {
            if *watermarked != time {
                return Err(plan_error(format!(
                    "{function} over \"{time}\", but the watermark of \"{name}\" is on \"{watermarked}\": windows close by the watermark, so they must be on its column"
                )));
            }
        }
        for added in [WINDOW_START, WINDOW_END] {
            if schema.field_with_name(added).is_ok() {
                return Err(plan_error(format!(
                    "source \"{name}\" already has a column \"{added}\", which {function} adds"
                )));
            }
        }
        Ok(WindowedSource { name, time, table })
    }

    pub(super) fn column(&self, name: &str) -> Expr {
        Expr::Column(datafusion::common::Column::new(
            Some(self.name.clone()),
            name,
        ))
    }

    /// The source's columns.
    pub(super) fn columns(&self) -> Vec<Expr> {
        self.table
            .schema()
            .fields()
            .iter()
            .map(|f| self.column(f.name()))
            .collect()
    }

    /// A span of `nanos` to add to the time column: a duration of its unit when it divides.
    pub(super) fn span(&self, nanos: i64) -> Expr {
        let schema = self.table.schema();
        let unit = match schema.field_with_name(&self.time).map(|f| f.data_type()) {
            Ok(DataType::Timestamp(unit, _)) => Some(*unit),
            _ => None,
        };
        match unit.and_then(|u| duration_lit(nanos, &u)) {
            Some(d) => lit(d),
            None => interval_lit(nanos),
        }
    }

    pub(super) fn scan(&self) -> DfResult<LogicalPlanBuilder> {
        LogicalPlanBuilder::scan(
            &self.name,
            provider_as_source(Arc::new(self.table.clone())),
            None,
        )
    }
}

/// Nanoseconds in one unit of a timestamp.
pub(super) fn nanos_per_unit(unit: &TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    }
}

/// `nanos` as a duration in `unit` when it is a whole number of them: adding it to a timestamp
/// of that unit is an integer addition, where an interval goes through the calendar per row.
pub(super) fn duration_lit(nanos: i64, unit: &TimeUnit) -> Option<ScalarValue> {
    let per_unit = nanos_per_unit(unit);
    if nanos % per_unit != 0 {
        return None;
    }
    let n = Some(nanos / per_unit);
    Some(match unit {
        TimeUnit::Second => ScalarValue::DurationSecond(n),
        TimeUnit::Millisecond => ScalarValue::DurationMillisecond(n),
        TimeUnit::Microsecond => ScalarValue::DurationMicrosecond(n),
        TimeUnit::Nanosecond => ScalarValue::DurationNanosecond(n),
    })
}

pub(super) fn interval_lit(nanos: i64) -> Expr {
    lit(ScalarValue::IntervalMonthDayNano(Some(
        IntervalMonthDayNano {
            months: 0,
            days: 0,
            nanoseconds: nanos,
        },
    )))
}

impl TableFunctionImpl for Tumble {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let [source, time, size] = args.exprs() else {
            return Err(plan_error(
                "TUMBLE takes a source, its time column and a size: TUMBLE(bids, date_time, INTERVAL '10' SECOND)"
                    .into(),
            ));
        };
        let size = interval_nanos("TUMBLE", "size", size)?;
        let source = WindowedSource::resolve(&self.catalog, "TUMBLE", source, time)?;
        let start = datafusion::functions::datetime::date_bin()
            .call(vec![interval_lit(size), source.column(&source.time)]);
        let mut columns = source.columns();
        columns.push(start.clone().alias(WINDOW_START));
        columns.push((start + source.span(size)).alias(WINDOW_END));
        let plan = source.scan()?.project(columns)?.build()?;
        Ok(Arc::new(ViewTable::new(plan, None)))
    }
}

/// `HOP(source, time_column, slide, size)`: every row of the source once per window of `size`
/// that holds its time, windows starting every `slide` (at multiples of it from 1970-01-01).
#[derive(Debug)]
pub struct Hop {
    catalog: Arc<Catalog>,
}

impl Hop {
    /// The function over the sources of `catalog`.
    pub fn new(catalog: Arc<Catalog>) -> Self {
        Hop { catalog }
    }
}

/// Column holding a row's window starts before it is unnested into one row per window.
const HOP_STARTS: &str = "__hop_starts";

impl TableFunctionImpl for Hop {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let [source, time, slide, size] = args.exprs() else {
            return Err(plan_error(
                "HOP takes a source, its time column, a slide and a size: HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)"
                    .into(),
            ));
        };
        let slide = interval_nanos("HOP", "slide", slide)?;
        let size = interval_nanos("HOP", "size", size)?;
        if slide > size {
            return Err(plan_error(format!(
                "the slide of HOP ({} s) is larger than its size ({} s): rows between windows would belong to none",
                slide as f64 / 1e9,
                size as f64 / 1e9
            )));
        }
        let source = WindowedSource::resolve(&self.catalog, "HOP", source, time)?;
        let starts =
            ScalarUDF::from(HopStarts::new(slide, size)).call(vec![source.column(&source.time)]);
        let mut columns = source.columns();
        columns.push(starts.alias(HOP_STARTS));
        let start = Expr::Column(datafusion::common::Column::from_name(HOP_STARTS));
        let mut windowed = source.columns();
        windowed.push(start.clone().alias(WINDOW_START));
        windowed.push((start + source.span(size)).alias(WINDOW_END));
        let plan = source
            .scan()?
            .project(columns)?
            .unnest_column(HOP_STARTS)?
            .project(windowed)?
            .build()?;
        Ok(Arc::new(ViewTable::new(plan, None)))
    }
}

/// `hop_starts(time)`: the starts of the windows of `size`, every `slide`, that hold `time`,
/// latest first. HOP unnests them into one row per window.
#[derive(Debug, PartialEq, Eq, Hash)]
struct HopStarts {
    slide: i64,
    size: i64,
    signature: Signature,
}

impl HopStarts {
    fn new(slide: i64, size: i64) -> Self {
        HopStarts {
            slide,
            size,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for HopStarts {
    fn name(&self) -> &str {
        "hop_starts"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        match args {
            [t @ DataType::Timestamp(_, _)] => Ok(DataType::List(Arc::new(Field::new_list_field(
                t.clone(),
                true,
            )))),
            other => Err(plan_error(format!(
                "hop_starts takes a timestamp, not {other:?}"
            ))),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let times = args.args[0].to_array(args.number_rows)?;
        let DataType::Timestamp(unit, tz) = times.data_type().clone() else {
            return Err(plan_error("hop_starts takes a timestamp".into()));
        };
        let per_unit = nanos_per_unit(&unit);
        if self.slide % per_unit != 0 || self.size % per_unit != 0 {
            return Err(plan_error(format!(
                "the slide and size of HOP must be whole multiples of the time column's unit ({unit:?})"
            )));
        }
        let (slide, size) = (self.slide / per_unit, self.size / per_unit);
        let times = cast(&times, &DataType::Int64)?;
        let times = times.as_primitive::<Int64Type>();
        let mut builder = ListBuilder::new(Int64Builder::new());
        for t in times.iter() {
            match t {
                Some(t) => {
                    builder
                        .values()
                        .extend(window_starts(t, slide, size).map(Some));
                    builder.append(true);
                }
                None => builder.append(false),
            }
        }
        let starts = cast(
            &builder.finish(),
            &DataType::List(Arc::new(Field::new_list_field(
                DataType::Timestamp(unit, tz),
                true,
            ))),
        )?;
        Ok(ColumnarValue::Array(starts))
    }
}

/// Starts of the windows of `size`, every `slide` from 0, that hold `t`, latest first.
fn window_starts(t: i64, slide: i64, size: i64) -> impl Iterator<Item = i64> {
    let latest = t.div_euclid(slide) * slide;
    (0..)
        .map(move |k| latest - k * slide)
        .take_while(move |start| *start > t.saturating_sub(size))
}

/// `ts ± INTERVAL '4' SECOND` rewritten as `ts ± 4000 ms` (a duration of the timestamp's unit):
/// the same instants, without the per-row calendar arithmetic an interval costs. Intervals of
/// months, and of days over a time zone, keep their calendar meaning.
fn interval_arithmetic_as_durations(expr: Expr, schema: &DFSchema) -> Result<Expr> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::{BinaryExpr, ExprSchemable, Operator};

    Ok(expr
        .transform(|e| {
            let Expr::BinaryExpr(b) = &e else {
                return Ok(Transformed::no(e));
            };
            let Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) = b.right.as_ref()
            else {
                return Ok(Transformed::no(e));
            };
            let DataType::Timestamp(unit, tz) = b.left.get_type(schema)? else {
                return Ok(Transformed::no(e));
            };
            let plain = matches!(b.op, Operator::Plus | Operator::Minus)
                && v.months == 0
                && (v.days == 0 || tz.is_none());
            let nanos = (v.days as i64)
                .checked_mul(86_400_000_000_000)
                .and_then(|d| d.checked_add(v.nanoseconds));
            match (plain, nanos.and_then(|n| duration_lit(n, &unit))) {
                (true, Some(d)) => Ok(Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(
                    b.left.clone(),
                    b.op,
                    Box::new(lit(d)),
                )))),
                _ => Ok(Transformed::no(e)),
            }
        })?
        .data)
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
    let logical = interval_arithmetic_as_durations(logical, &df_schema)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_arithmetic_on_timestamps_becomes_durations() {
        let schema = DFSchema::try_from(arrow::datatypes::Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new(
                "tz",
                DataType::Timestamp(TimeUnit::Millisecond, Some("+02:00".into())),
                true,
            ),
        ]))
        .unwrap();
        let state = datafusion::prelude::SessionContext::new().state();
        let rewritten = |sql: &str| {
            let e = state.create_logical_expr(sql, &schema).unwrap();
            match interval_arithmetic_as_durations(e, &schema).unwrap() {
                Expr::BinaryExpr(b) => match *b.right {
                    Expr::Literal(v, _) => v,
                    other => panic!("{other}"),
                },
                other => panic!("{other}"),
            }
        };
        assert_eq!(
            rewritten("ts - INTERVAL '4' SECOND"),
            ScalarValue::DurationMillisecond(Some(4_000))
        );
        assert_eq!(
            rewritten("ts + INTERVAL '1' DAY"),
            ScalarValue::DurationMillisecond(Some(86_400_000))
        );
        // Calendar intervals keep their meaning: months, and days in a time zone.
        assert!(matches!(
            rewritten("ts - INTERVAL '1' MONTH"),
            ScalarValue::IntervalMonthDayNano(_)
        ));
        assert!(matches!(
            rewritten("tz - INTERVAL '1' DAY"),
            ScalarValue::IntervalMonthDayNano(_)
        ));
        // Finer than the unit: stays an interval.
        assert!(matches!(
            rewritten("ts - INTERVAL '1' MICROSECOND"),
            ScalarValue::IntervalMonthDayNano(_)
        ));
    }

    #[test]
    fn hop_windows_hold_the_time_and_start_on_the_slide() {
        let starts = |t, slide, size| window_starts(t, slide, size).collect::<Vec<_>>();
        assert_eq!(starts(25, 2, 10), vec![24, 22, 20, 18, 16]);
        assert_eq!(starts(24, 2, 10), vec![24, 22, 20, 18, 16]);
        // A size the slide does not divide: two windows or one.
        assert_eq!(starts(24, 2, 3), vec![24, 22]);
        assert_eq!(starts(25, 2, 3), vec![24]);
        // Before 1970 windows still start on multiples of the slide.
        assert_eq!(starts(-3, 2, 4), vec![-4, -6]);
        assert_eq!(starts(-4, 2, 4), vec![-4, -6]);
        // Tumbling is the slide equal to the size.
        assert_eq!(starts(7, 5, 5), vec![5]);
    }
}
