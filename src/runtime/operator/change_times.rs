//! When each key of an operator's state last changed, checkpointed with the state so that a
//! `state_ttl` survives a restart: the state gets a last column of wall-clock times (UTC
//! microseconds), NULL on the state's own rows and set on time rows, which carry a key and
//! nothing else.

use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, AsArray, Int64Array};
use arrow::compute::{filter_record_batch, is_not_null, not};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::spill::{BatchMap, StateChunk};
use crate::error::Result;

/// `schema` with every column nullable (time rows leave them NULL) and a time column `name`.
pub fn timed_schema(schema: &SchemaRef, name: &str) -> SchemaRef {
    let mut fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    fields.push(Field::new(name, DataType::Int64, true));
    Arc::new(Schema::new(fields))
}

/// `chunks` of the state's own rows as rows of `timed` (a NULL time), converted as they are
/// read: a spilled file is not rewritten.
pub fn untimed(chunks: Vec<StateChunk>, timed: &SchemaRef) -> Vec<StateChunk> {
    let schema = timed.clone();
    let map = BatchMap(Arc::new(move |b: RecordBatch| {
        let mut columns = b.columns().to_vec();
        columns.push(new_null_array(&DataType::Int64, b.num_rows()));
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }));
    chunks.into_iter().map(|c| c.mapped(&map)).collect()
}

/// Time rows of `timed`: `keys` in the columns from `first` on, `times` last, NULL elsewhere.
pub fn time_rows(
    timed: &SchemaRef,
    first: usize,
    keys: Vec<ArrayRef>,
    times: Int64Array,
) -> Result<RecordBatch> {
    let n = times.len();
    let fields = timed.fields();
    let mut keys = keys.into_iter();
    let mut columns = Vec::with_capacity(fields.len());
    for (c, f) in fields[..fields.len() - 1].iter().enumerate() {
        let key = if c >= first { keys.next() } else { None };
        columns.push(key.unwrap_or_else(|| new_null_array(f.data_type(), n)));
    }
    columns.push(Arc::new(times) as ArrayRef);
    Ok(RecordBatch::try_new(timed.clone(), columns)?)
}

/// A restored batch of the timed schema split into the state's own rows, as `schema`, and its
/// time rows (still timed; empty when none).
pub fn split(batch: &RecordBatch, schema: &SchemaRef) -> Result<(RecordBatch, RecordBatch)> {
    let last = batch.num_columns() - 1;
    let timed = is_not_null(batch.column(last))?;
    let times = filter_record_batch(batch, &timed)?;
    let rows = filter_record_batch(batch, &not(&timed)?)?;
    let rows = RecordBatch::try_new(schema.clone(), rows.columns()[..last].to_vec())?;
    Ok((rows, times))
}

/// The times of time rows, by row.
pub fn times(rows: &RecordBatch) -> impl Iterator<Item = i64> + '_ {
    let last = rows.columns().last().expect("a time column");
    let times = last.as_primitive::<Int64Type>();
    (0..rows.num_rows()).map(move |i| times.value(i))
}

/// `d` in microseconds.
pub fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
