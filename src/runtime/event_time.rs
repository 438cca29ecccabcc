//! Event time: a source's watermark (`WATERMARK FOR col AS expr`) evaluated over the rows read,
//! the rule that makes a row late, and timestamps as UTC microseconds for comparing them.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, TimestampMicrosecondArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use arrow::record_batch::RecordBatch;
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{Error, Result};

/// The watermark at the end of a bounded input: every window closes.
pub const END_OF_TIME: i64 = i64::MAX;

/// A source's event-time column and watermark expression, over the source's own columns.
#[derive(Debug, Clone)]
pub struct EventTime {
    /// The event-time column.
    pub column: usize,
    /// Its name, for messages.
    pub name: String,
    /// The watermark each row implies (`col - INTERVAL ...`).
    pub watermark: Arc<dyn PhysicalExpr>,
}

impl EventTime {
    /// The watermark each row of `batch` implies (NULL for a row without a time).
    pub fn watermarks(&self, batch: &RecordBatch) -> Result<TimestampMicrosecondArray> {
        let values = self
            .watermark
            .evaluate(batch)?
            .into_array(batch.num_rows())?;
        micros(&values)
    }

    /// Which rows of `batch` are late: their event time is before `watermark`. A row without an
    /// event time is not late; it belongs to no window until the end of input.
    pub fn late(&self, batch: &RecordBatch, watermark: i64) -> Result<BooleanArray> {
        let times = micros(batch.column(self.column))?;
        Ok(times
            .iter()
            .map(|t| Some(t.is_some_and(|t| t < watermark)))
            .collect())
    }
}

/// Timestamps of any unit as UTC microseconds.
pub fn micros(array: &ArrayRef) -> Result<TimestampMicrosecondArray> {
    match array.data_type() {
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            Ok(array.as_primitive::<TimestampMicrosecondType>().clone())
        }
        // Same zone, other unit: the values stay UTC instants.
        DataType::Timestamp(_, tz) => Ok(cast(
            array,
            &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        )?
        .as_primitive::<TimestampMicrosecondType>()
        .clone()),
        other => Err(Error::Internal(format!(
            "an event time must be a timestamp, not {other}"
        ))),
    }
}

/// A watermark for messages and system tables.
pub fn watermark_time(watermark: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    (watermark != END_OF_TIME)
        .then(|| chrono::DateTime::from_timestamp_micros(watermark))
        .flatten()
}
