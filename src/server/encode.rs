//! Arrow columns → Postgres wire values: each column's field description (its type is
//! `pg_catalog::wire_type`) and each cell's encoding.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Int8Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::api::Type;
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;

use crate::pg_catalog::wire_type;

/// The Arrow type a Postgres parameter type binds as.
pub fn arrow_type_of_pg(t: &Type) -> Option<DataType> {
    Some(match *t {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 | Type::NUMERIC => DataType::Float64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DataType::Utf8,
        Type::DATE => DataType::Date32,
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        _ => return None,
    })
}

/// Field descriptions for a schema, each in the format the client asked for.
pub fn fields(
    schema: &arrow::datatypes::Schema,
    format: impl Fn(usize) -> FieldFormat,
) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            FieldInfo::new(
                f.name().clone(),
                None,
                None,
                wire_type(f.data_type()),
                format(i),
            )
        })
        .collect()
}

/// Encodes every row of `batches` as data rows for `fields`.
pub fn encode_rows(
    fields: Arc<Vec<FieldInfo>>,
    batches: &[RecordBatch],
) -> PgWireResult<Vec<DataRow>> {
    let mut rows = Vec::new();
    let mut enc = DataRowEncoder::new(fields.clone());
    for batch in batches {
        let cols: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| {
                if wire_type(c.data_type()) == Type::TEXT
                    && !matches!(
                        c.data_type(),
                        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                    )
                {
                    cast(c, &DataType::Utf8).unwrap_or_else(|_| c.clone())
                } else {
                    c.clone()
                }
            })
            .collect();
        for row in 0..batch.num_rows() {
            for (col, field) in cols.iter().zip(fields.iter()) {
                encode_cell(&mut enc, col, row, field.format())?;
            }
            rows.push(enc.take_row());
        }
    }
    Ok(rows)
}

/// An error for a value the wire cannot carry as its column's type.
fn unrepresentable(what: String) -> pgwire::error::PgWireError {
    pgwire::error::PgWireError::UserError(Box::new(pgwire::error::ErrorInfo::new(
        "ERROR".into(),
        "22003".into(),
        what,
    )))
}

/// The instant row `row` of timestamp column `col` (of `unit`) holds, converted by seconds and
/// the rest so that no unit overflows on the way; an error message when it is out of range.
pub fn timestamp_at(col: &ArrayRef, row: usize, unit: &TimeUnit) -> Result<DateTime<Utc>, String> {
    let (secs, nanos) = match unit {
        TimeUnit::Second => (col.as_primitive::<TimestampSecondType>().value(row), 0),
        TimeUnit::Millisecond => {
            let v = col.as_primitive::<TimestampMillisecondType>().value(row);
            (v.div_euclid(1_000), v.rem_euclid(1_000) * 1_000_000)
        }
        TimeUnit::Microsecond => {
            let v = col.as_primitive::<TimestampMicrosecondType>().value(row);
            (v.div_euclid(1_000_000), v.rem_euclid(1_000_000) * 1_000)
        }
        TimeUnit::Nanosecond => {
            let v = col.as_primitive::<TimestampNanosecondType>().value(row);
            (v.div_euclid(1_000_000_000), v.rem_euclid(1_000_000_000))
        }
    };
    DateTime::<Utc>::from_timestamp(secs, nanos as u32)
        .ok_or_else(|| format!("timestamp out of range: {secs} seconds from 1970-01-01"))
}

/// A timestamp as PostgreSQL prints it (its `ISO` date style): a fraction only when there is one,
/// to the microsecond without trailing zeros, and `+00` for a zone (sessions are in UTC).
pub fn timestamp_text(dt: &DateTime<Utc>, zoned: bool) -> String {
    let mut text = dt.format("%Y-%m-%d %H:%M:%S").to_string();
    let micros = dt.timestamp_subsec_micros();
    if micros > 0 {
        text.push_str(format!(".{micros:06}").trim_end_matches('0'));
    }
    if zoned {
        text.push_str("+00");
    }
    text
}

fn encode_cell(
    enc: &mut DataRowEncoder,
    col: &ArrayRef,
    row: usize,
    format: FieldFormat,
) -> PgWireResult<()> {
    if col.is_null(row) {
        return enc.encode_field(&None::<i32>);
    }
    match col.data_type() {
        DataType::Boolean => enc.encode_field(&col.as_boolean().value(row)),
        DataType::Int8 => enc.encode_field(&(col.as_primitive::<Int8Type>().value(row) as i16)),
        DataType::Int16 => enc.encode_field(&col.as_primitive::<Int16Type>().value(row)),
        DataType::UInt8 => enc.encode_field(&(col.as_primitive::<UInt8Type>().value(row) as i16)),
        DataType::Int32 => enc.encode_field(&col.as_primitive::<Int32Type>().value(row)),
        DataType::UInt16 => enc.encode_field(&(col.as_primitive::<UInt16Type>().value(row) as i32)),
        DataType::Int64 => enc.encode_field(&col.as_primitive::<Int64Type>().value(row)),
        DataType::UInt32 => enc.encode_field(&(col.as_primitive::<UInt32Type>().value(row) as i64)),
        DataType::UInt64 => enc.encode_field(&rust_decimal::Decimal::from(
            col.as_primitive::<UInt64Type>().value(row),
        )),
        DataType::Float32 => enc.encode_field(&col.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => enc.encode_field(&col.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => enc.encode_field(&col.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => enc.encode_field(&col.as_string::<i64>().value(row)),
        DataType::Utf8View => enc.encode_field(&col.as_string_view().value(row)),
        DataType::Binary => enc.encode_field(&col.as_binary::<i32>().value(row)),
        DataType::LargeBinary => enc.encode_field(&col.as_binary::<i64>().value(row)),
        DataType::BinaryView => enc.encode_field(&col.as_binary_view().value(row)),
        DataType::Date32 => {
            let days = col.as_primitive::<Date32Type>().value(row);
            let d = NaiveDate::from_num_days_from_ce_opt(days + 719_163);
            enc.encode_field(&d)
        }
        DataType::Date64 => {
            let casted = cast(col, &DataType::Date32)
                .map_err(|e| pgwire::error::PgWireError::ApiError(Box::new(e)))?;
            encode_cell(enc, &casted, row, format)
        }
        DataType::Timestamp(unit, tz) => {
            let dt = timestamp_at(col, row, unit).map_err(unrepresentable)?;
            if format == FieldFormat::Text {
                return enc.encode_field(&timestamp_text(&dt, tz.is_some()).as_str());
            }
            if tz.is_some() {
                enc.encode_field(&dt)
            } else {
                let naive: NaiveDateTime = dt.naive_utc();
                enc.encode_field(&naive)
            }
        }
        DataType::Decimal128(_, scale) => {
            let v = col.as_primitive::<Decimal128Type>().value(row);
            match rust_decimal::Decimal::try_from_i128_with_scale(v, (*scale).max(0) as u32) {
                Ok(d) => enc.encode_field(&d),
                // Past rust_decimal's 28 digits: as text, which NUMERIC's text form is.
                Err(_) if format == FieldFormat::Text => {
                    let text = cast(col, &DataType::Utf8)
                        .map_err(|e| pgwire::error::PgWireError::ApiError(Box::new(e)))?;
                    enc.encode_field(&text.as_string::<i32>().value(row))
                }
                Err(_) => Err(unrepresentable(format!(
                    "numeric value {v} (scale {scale}) has more than 28 digits, too many for the binary format: ask for text results"
                ))),
            }
        }
        _ => {
            let casted = cast(col, &DataType::Utf8)
                .map_err(|e| pgwire::error::PgWireError::ApiError(Box::new(e)))?;
            enc.encode_field(&casted.as_string::<i32>().value(row))
        }
    }
}
