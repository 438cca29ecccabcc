//! The session window table function, `SESSION(source, time_column, gap [, key...])`: rows of a
//! key whose times are less than `gap` apart share a session `[first time, last time + gap)`.
//!
//! A session depends on the rows around it, not on one row, so the function has two forms. A
//! query (and the oracle of the tests) gets DataFusion window functions that compute each row's
//! session over the whole input. A pipeline gets each row as its own session `[time, time + gap)`
//! marked by [`SessionWindowEnd`]; its GROUP BY becomes a session aggregate that merges the
//! sessions of a key as rows arrive, the key being the GROUP BY's other columns.

use std::sync::Arc;

use arrow::array::{AsArray, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::datasource::ViewTable;
use datafusion::error::Result as DfResult;
use datafusion::functions_aggregate::min_max::{max_udaf, min_udaf};
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::functions_window::lead_lag::lag_udwf;
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::{
    col, lit, when, ColumnarValue, Expr, ExprFunctionExt, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};

use super::windows::{
    at, column_name, interval_nanos, nanos_per_unit, plan_error, WindowedSource, WINDOW_END,
    WINDOW_START,
};
use crate::catalog::Catalog;

/// The names SESSION is looked up by (DataFusion looks table functions up as written).
pub const SESSION_NAMES: [&str; 3] = ["session", "SESSION", "Session"];

/// `SESSION(source, time_column, gap [, key...])`.
#[derive(Debug)]
pub struct Session {
    catalog: Arc<Catalog>,
    /// Plan for a pipeline (each row its own session, merged by the aggregate) rather than
    /// for a query.
    streaming: bool,
}

impl Session {
    /// The function over the sources of `catalog`, as queries run it.
    pub fn new(catalog: Arc<Catalog>) -> Self {
        Session {
            catalog,
            streaming: false,
        }
    }

    /// The same function as pipelines plan it.
    pub fn streaming(&self) -> Self {
        Session {
            catalog: self.catalog.clone(),
            streaming: true,
        }
    }
}

const PREVIOUS: &str = "__session_previous";
const BREAK: &str = "__session_break";
const NUMBER: &str = "__session_number";
const FIRST: &str = "__session_first";
const LAST: &str = "__session_last";

impl TableFunctionImpl for Session {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let [source, time, gap, keys @ ..] = args.exprs() else {
            return Err(plan_error(
                "SESSION takes a source, its time column, a gap and optionally the keys sessions are per: SESSION(bids, date_time, INTERVAL '10' SECOND, bidder)"
                    .into(),
            ));
        };
        let gap = interval_nanos("SESSION", "gap", gap)?;
        let source = WindowedSource::resolve(&self.catalog, "SESSION", source, time)?;
        let keys = keys
            .iter()
            .map(|k| {
                let name = column_name("SESSION", "key", k)?;
                source.table.schema().field_with_name(&name).map_err(|_| {
                    at(
                        k,
                        plan_error(format!(
                            "SESSION over \"{}\": it has no column \"{name}\" to key sessions by",
                            source.name
                        )),
                    )
                })?;
                Ok(name)
            })
            .collect::<DfResult<Vec<_>>>()?;
        let ts = source.column(&source.time);
        let plan = if self.streaming {
            let end = ScalarUDF::from(SessionWindowEnd::new(gap, keys)).call(vec![ts.clone()]);
            let mut columns = source.columns();
            columns.push(ts.alias(WINDOW_START));
            columns.push(end.alias(WINDOW_END));
            source.scan()?.project(columns)?.build()?
        } else {
            // Each row's session over the whole input: a session starts at a key's first row and
            // at each row `gap` or more after the one before; its rows are numbered by a running
            // count of starts.
            let keys: Vec<Expr> = keys.iter().map(|k| source.column(k)).collect();
            let order = vec![ts.clone().sort(true, true)];
            let previous = lag_udwf()
                .call(vec![ts.clone()])
                .partition_by(keys.clone())
                .order_by(order.clone())
                .build()?
                .alias(PREVIOUS);
            let starts = ts
                .clone()
                .is_null()
                .or(col(PREVIOUS).is_null())
                .or((col(PREVIOUS) + source.span(gap)).lt_eq(ts.clone()));
            let mut with_break = source.columns();
            with_break.push(when(starts, lit(1i64)).otherwise(lit(0i64))?.alias(BREAK));
            // ORDER BY's default frame takes rows of equal time together: they get one number.
            let number = Expr::from(WindowFunction::new(sum_udaf(), vec![col(BREAK)]))
                .partition_by(keys.clone())
                .order_by(order)
                .build()?
                .alias(NUMBER);
            let mut session_keys = keys;
            session_keys.push(col(NUMBER));
            let first = Expr::from(WindowFunction::new(min_udaf(), vec![ts.clone()]))
                .partition_by(session_keys.clone())
                .build()?
                .alias(FIRST);
            let last = Expr::from(WindowFunction::new(max_udaf(), vec![ts]))
                .partition_by(session_keys)
                .build()?
                .alias(LAST);
            let mut windowed = source.columns();
            windowed.push(col(FIRST).alias(WINDOW_START));
            windowed.push((col(LAST) + source.span(gap)).alias(WINDOW_END));
            source
                .scan()?
                .window(vec![previous])?
                .project(with_break)?
                .window(vec![number])?
                .window(vec![first, last])?
                .project(windowed)?
                .build()?
        };
        Ok(Arc::new(ViewTable::new(plan, None)))
    }
}

/// `session_window_end(time)`: `time + gap`, the end of a row's own session. It marks a
/// pipeline's session window: the planner finds the gap and the keys named in SESSION here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionWindowEnd {
    /// The gap, in nanoseconds.
    pub gap: i64,
    /// The keys named in SESSION(...) (empty: the GROUP BY's).
    pub keys: Vec<String>,
    signature: Signature,
}

impl SessionWindowEnd {
    fn new(gap: i64, keys: Vec<String>) -> Self {
        SessionWindowEnd {
            gap,
            keys,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for SessionWindowEnd {
    fn name(&self) -> &str {
        "session_window_end"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        match args {
            [t @ DataType::Timestamp(_, _)] => Ok(t.clone()),
            other => Err(plan_error(format!(
                "session_window_end takes a timestamp, not {other:?}"
            ))),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let times = args.args[0].to_array(args.number_rows)?;
        let data_type = times.data_type().clone();
        let DataType::Timestamp(unit, _) = &data_type else {
            return Err(plan_error("session_window_end takes a timestamp".into()));
        };
        let per_unit = nanos_per_unit(unit);
        if self.gap % per_unit != 0 {
            return Err(plan_error(format!(
                "the gap of SESSION must be a whole multiple of the time column's unit ({unit:?})"
            )));
        }
        let gap = self.gap / per_unit;
        let values = cast(&times, &DataType::Int64)?;
        let ends: Int64Array = values
            .as_primitive::<Int64Type>()
            .iter()
            .map(|t| t.map(|t| t.saturating_add(gap)))
            .collect();
        Ok(ColumnarValue::Array(cast(&ends, &data_type)?))
    }
}
