//! Clock functions for pipelines: `now()`, `current_timestamp`, `current_date` and `current_time`
//! read the clock each time a batch is evaluated, where DataFusion folds them into constants at
//! planning (right for one query, wrong for a pipeline that runs for weeks).

use std::sync::Arc;

use arrow::array::timezone::Tz;
use arrow::datatypes::{DataType, Field, FieldRef, TimeUnit};
use chrono::{DateTime, NaiveDateTime, TimeZone, Timelike, Utc};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

/// Which clock reading a function returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Reading {
    /// A timestamp in the session's time zone (`now()`, `current_timestamp`).
    Timestamp,
    /// The date in the session's time zone (`current_date`, `today()`).
    Date,
    /// The time of day in the session's time zone (`current_time`).
    Time,
}

/// A clock function evaluated per batch. Volatile, so the optimiser keeps the call.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PerBatchClock {
    reading: Reading,
    /// The session's time zone (`datafusion.execution.time_zone`), as DataFusion's own functions use it.
    timezone: Option<Arc<str>>,
    signature: Signature,
    aliases: Vec<String>,
}

/// The clock functions a pipeline's query is planned with, replacing DataFusion's folded ones.
pub fn per_batch_clock_functions(timezone: Option<&str>) -> Vec<Arc<ScalarUDF>> {
    let timezone: Option<Arc<str>> = timezone.map(Arc::from);
    [
        (Reading::Timestamp, vec!["current_timestamp".to_string()]),
        (Reading::Date, vec!["today".to_string()]),
        (Reading::Time, Vec::new()),
    ]
    .into_iter()
    .map(|(reading, aliases)| {
        Arc::new(ScalarUDF::from(PerBatchClock {
            reading,
            timezone: timezone.clone(),
            signature: Signature::nullary(Volatility::Volatile),
            aliases,
        }))
    })
    .collect()
}

impl PerBatchClock {
    fn data_type(&self) -> DataType {
        match self.reading {
            Reading::Timestamp => DataType::Timestamp(TimeUnit::Nanosecond, self.timezone.clone()),
            Reading::Date => DataType::Date32,
            Reading::Time => DataType::Time64(TimeUnit::Nanosecond),
        }
    }

    /// The reading at `now`, in the session's time zone.
    fn read(&self, now: DateTime<Utc>) -> ScalarValue {
        let local: NaiveDateTime = self
            .timezone
            .as_deref()
            .and_then(|tz| tz.parse::<Tz>().ok())
            .map(|tz| tz.from_utc_datetime(&now.naive_utc()).naive_local())
            .unwrap_or_else(|| now.naive_utc());
        match self.reading {
            Reading::Timestamp => {
                ScalarValue::TimestampNanosecond(now.timestamp_nanos_opt(), self.timezone.clone())
            }
            Reading::Date => {
                let days = local
                    .date()
                    .signed_duration_since(chrono::NaiveDate::default())
                    .num_days();
                ScalarValue::Date32(i32::try_from(days).ok())
            }
            Reading::Time => {
                let t = local.time();
                let nanos = i64::from(t.num_seconds_from_midnight()) * 1_000_000_000
                    + i64::from(t.nanosecond());
                ScalarValue::Time64Nanosecond(Some(nanos))
            }
        }
    }
}

impl ScalarUDFImpl for PerBatchClock {
    fn name(&self) -> &str {
        match self.reading {
            Reading::Timestamp => "now",
            Reading::Date => "current_date",
            Reading::Time => "current_time",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.data_type())
    }

    fn return_field_from_args(&self, _args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(self.name(), self.data_type(), false)))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.read(Utc::now())))
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(reading: Reading, tz: Option<&str>) -> PerBatchClock {
        PerBatchClock {
            reading,
            timezone: tz.map(Arc::from),
            signature: Signature::nullary(Volatility::Volatile),
            aliases: Vec::new(),
        }
    }

    #[test]
    fn reads_the_clock_in_the_session_time_zone() {
        let at = Utc.with_ymd_and_hms(2026, 12, 1, 23, 30, 5).unwrap();
        assert_eq!(
            clock(Reading::Timestamp, None).read(at),
            ScalarValue::TimestampNanosecond(at.timestamp_nanos_opt(), None)
        );
        // 23:30 UTC is already the next day at +02:00.
        assert_eq!(
            clock(Reading::Date, Some("+02:00")).read(at),
            ScalarValue::Date32(Some(20_789))
        );
        assert_eq!(
            clock(Reading::Date, None).read(at),
            ScalarValue::Date32(Some(20_788))
        );
        assert_eq!(
            clock(Reading::Time, None).read(at),
            ScalarValue::Time64Nanosecond(Some((23 * 3600 + 30 * 60 + 5) * 1_000_000_000))
        );
    }
}
