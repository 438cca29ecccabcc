//! PostgreSQL types as Arrow types, values in PostgreSQL's text output format into Arrow arrays,
//! and Arrow types back into PostgreSQL column types for the sink.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Decimal128Type, TimeUnit};
use chrono::{NaiveDate, NaiveDateTime, NaiveTime, Timelike};

/// Unix epoch as a date, for Date32.
const UNIX_EPOCH_DAY: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => unreachable!(),
};

/// The Arrow type for a PostgreSQL type OID and modifier; `false` when there is no faithful
/// mapping and the value travels as its text form.
pub fn arrow_type(type_oid: u32, typmod: i32) -> (DataType, bool) {
    let t = match type_oid {
        16 => DataType::Boolean,
        21 => DataType::Int16,
        23 => DataType::Int32,
        20 => DataType::Int64,
        26 => DataType::Int64, // oid
        700 => DataType::Float32,
        701 => DataType::Float64,
        1700 => {
            // numeric(p, s): typmod = ((p << 16) | s) + 4; unconstrained numeric has no exact Arrow type.
            if typmod >= 4 {
                let p = ((typmod - 4) >> 16) & 0xffff;
                let s = (typmod - 4) & 0xffff;
                if (1..=38).contains(&p) && s <= p {
                    DataType::Decimal128(p as u8, s as i8)
                } else {
                    return (DataType::Utf8, false);
                }
            } else {
                return (DataType::Utf8, true);
            }
        }
        25 | 1043 | 1042 | 19 | 18 => DataType::Utf8,
        114 | 3802 | 2950 | 142 => DataType::Utf8, // json, jsonb, uuid, xml
        17 => DataType::Binary,
        1082 => DataType::Date32,
        1083 => DataType::Time64(TimeUnit::Microsecond),
        1114 => DataType::Timestamp(TimeUnit::Microsecond, None),
        1184 => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        _ => return (DataType::Utf8, false),
    };
    (t, true)
}

/// Builds one Arrow column from text-format values.
pub enum TextColumn {
    /// boolean
    Bool(BooleanBuilder),
    /// smallint
    I16(Int16Builder),
    /// integer
    I32(Int32Builder),
    /// bigint
    I64(Int64Builder),
    /// real
    F32(Float32Builder),
    /// double precision
    F64(Float64Builder),
    /// numeric(p, s)
    Decimal(Decimal128Builder, u8, i8),
    /// text and everything shown as text
    Utf8(StringBuilder),
    /// bytea
    Binary(BinaryBuilder),
    /// date
    Date(Date32Builder),
    /// time
    Time(Time64MicrosecondBuilder),
    /// timestamp / timestamptz
    Timestamp(TimestampMicrosecondBuilder, Option<Arc<str>>),
}

/// A parsed value, checked before anything is appended so a bad row leaves no partial trace.
pub enum Parsed<'a> {
    /// NULL
    Null,
    /// boolean
    Bool(bool),
    /// any integer
    Int(i64),
    /// any float
    Float(f64),
    /// decimal in its scaled integer form
    Decimal(i128),
    /// text
    Str(&'a str),
    /// bytes
    Bytes(Vec<u8>),
    /// days, microseconds
    Int32(i32),
}

impl TextColumn {
    /// A builder for `data_type` (types without a text parser become text).
    pub fn new(data_type: &DataType, capacity: usize) -> Self {
        match data_type {
            DataType::Boolean => TextColumn::Bool(BooleanBuilder::with_capacity(capacity)),
            DataType::Int16 => TextColumn::I16(Int16Builder::with_capacity(capacity)),
            DataType::Int32 => TextColumn::I32(Int32Builder::with_capacity(capacity)),
            DataType::Int64 => TextColumn::I64(Int64Builder::with_capacity(capacity)),
            DataType::Float32 => TextColumn::F32(Float32Builder::with_capacity(capacity)),
            DataType::Float64 => TextColumn::F64(Float64Builder::with_capacity(capacity)),
            DataType::Decimal128(p, s) => TextColumn::Decimal(
                Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(*p, *s)
                    .unwrap_or_else(|_| Decimal128Builder::with_capacity(capacity)),
                *p,
                *s,
            ),
            DataType::Binary => TextColumn::Binary(BinaryBuilder::with_capacity(capacity, 0)),
            DataType::Date32 => TextColumn::Date(Date32Builder::with_capacity(capacity)),
            DataType::Time64(TimeUnit::Microsecond) => {
                TextColumn::Time(Time64MicrosecondBuilder::with_capacity(capacity))
            }
            DataType::Timestamp(TimeUnit::Microsecond, tz) => TextColumn::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone_opt(tz.clone()),
                tz.clone(),
            ),
            _ => TextColumn::Utf8(StringBuilder::with_capacity(capacity, capacity * 16)),
        }
    }

    /// Parses a text value for this column without appending it.
    pub fn parse<'a>(&self, value: Option<&'a str>) -> Result<Parsed<'a>, String> {
        let Some(v) = value else {
            return Ok(Parsed::Null);
        };
        let bad = |what: &str| format!("invalid {what} value {v:?}");
        Ok(match self {
            TextColumn::Bool(_) => match v {
                "t" | "true" => Parsed::Bool(true),
                "f" | "false" => Parsed::Bool(false),
                _ => return Err(bad("boolean")),
            },
            TextColumn::I16(_) | TextColumn::I32(_) | TextColumn::I64(_) => {
                Parsed::Int(v.parse::<i64>().map_err(|_| bad("integer"))?)
            }
            TextColumn::F32(_) | TextColumn::F64(_) => {
                Parsed::Float(parse_float(v).ok_or_else(|| bad("float"))?)
            }
            TextColumn::Decimal(_, p, s) => Parsed::Decimal(
                arrow::compute::kernels::cast_utils::parse_decimal::<Decimal128Type>(v, *p, *s)
                    .map_err(|_| bad("numeric"))?,
            ),
            TextColumn::Utf8(_) => Parsed::Str(v),
            TextColumn::Binary(_) => Parsed::Bytes(parse_bytea(v).ok_or_else(|| bad("bytea"))?),
            TextColumn::Date(_) => {
                let d = NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| bad("date"))?;
                Parsed::Int32((d - UNIX_EPOCH_DAY).num_days() as i32)
            }
            TextColumn::Time(_) => {
                let t = NaiveTime::parse_from_str(v, "%H:%M:%S%.f").map_err(|_| bad("time"))?;
                Parsed::Int(
                    t.num_seconds_from_midnight() as i64 * 1_000_000
                        + (t.nanosecond() / 1000) as i64,
                )
            }
            TextColumn::Timestamp(_, tz) => {
                Parsed::Int(parse_timestamp(v, tz.is_some()).ok_or_else(|| bad("timestamp"))?)
            }
        })
    }

    /// Appends a value from [`TextColumn::parse`] of this same column.
    pub fn append(&mut self, p: Parsed<'_>) {
        match (self, p) {
            (TextColumn::Bool(b), Parsed::Bool(x)) => b.append_value(x),
            (TextColumn::I16(b), Parsed::Int(x)) => b.append_option(i16::try_from(x).ok()),
            (TextColumn::I32(b), Parsed::Int(x)) => b.append_option(i32::try_from(x).ok()),
            (TextColumn::I64(b), Parsed::Int(x)) => b.append_value(x),
            (TextColumn::F32(b), Parsed::Float(x)) => b.append_value(x as f32),
            (TextColumn::F64(b), Parsed::Float(x)) => b.append_value(x),
            (TextColumn::Decimal(b, ..), Parsed::Decimal(x)) => b.append_value(x),
            (TextColumn::Utf8(b), Parsed::Str(x)) => b.append_value(x),
            (TextColumn::Binary(b), Parsed::Bytes(x)) => b.append_value(x),
            (TextColumn::Date(b), Parsed::Int32(x)) => b.append_value(x),
            (TextColumn::Time(b), Parsed::Int(x)) => b.append_value(x),
            (TextColumn::Timestamp(b, _), Parsed::Int(x)) => b.append_value(x),
            (c, _) => c.append_null(),
        }
    }

    /// Appends NULL.
    pub fn append_null(&mut self) {
        match self {
            TextColumn::Bool(b) => b.append_null(),
            TextColumn::I16(b) => b.append_null(),
            TextColumn::I32(b) => b.append_null(),
            TextColumn::I64(b) => b.append_null(),
            TextColumn::F32(b) => b.append_null(),
            TextColumn::F64(b) => b.append_null(),
            TextColumn::Decimal(b, ..) => b.append_null(),
            TextColumn::Utf8(b) => b.append_null(),
            TextColumn::Binary(b) => b.append_null(),
            TextColumn::Date(b) => b.append_null(),
            TextColumn::Time(b) => b.append_null(),
            TextColumn::Timestamp(b, _) => b.append_null(),
        }
    }

    /// The column built so far; the builder starts over.
    pub fn finish(&mut self) -> ArrayRef {
        match self {
            TextColumn::Bool(b) => Arc::new(b.finish()),
            TextColumn::I16(b) => Arc::new(b.finish()),
            TextColumn::I32(b) => Arc::new(b.finish()),
            TextColumn::I64(b) => Arc::new(b.finish()),
            TextColumn::F32(b) => Arc::new(b.finish()),
            TextColumn::F64(b) => Arc::new(b.finish()),
            TextColumn::Decimal(b, ..) => Arc::new(b.finish()),
            TextColumn::Utf8(b) => Arc::new(b.finish()),
            TextColumn::Binary(b) => Arc::new(b.finish()),
            TextColumn::Date(b) => Arc::new(b.finish()),
            TextColumn::Time(b) => Arc::new(b.finish()),
            TextColumn::Timestamp(b, _) => Arc::new(b.finish()),
        }
    }
}

fn parse_float(v: &str) -> Option<f64> {
    match v {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => v.parse().ok(),
    }
}

/// `\x0a0b` (bytea_output = hex).
fn parse_bytea(v: &str) -> Option<Vec<u8>> {
    let hex = v.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    // Bytes, not string slices: a multi-byte character in the text cannot split a slice.
    let nibble = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    hex.chunks(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// Microseconds since the epoch from `2024-01-02 03:04:05.678+00` (timestamptz, TimeZone = UTC)
/// or `2024-01-02 03:04:05.678` (timestamp).
fn parse_timestamp(v: &str, with_zone: bool) -> Option<i64> {
    if with_zone {
        let dt = chrono::DateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S%.f%#z").ok()?;
        Some(dt.timestamp_micros())
    } else {
        let dt = NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S%.f").ok()?;
        Some(dt.and_utc().timestamp_micros())
    }
}

/// The PostgreSQL column type that holds an Arrow type, for tables the sink creates.
pub fn pg_type(data_type: &DataType) -> String {
    match data_type {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 => "bigint".into(),
        DataType::UInt64 => "numeric(20,0)".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("numeric({p},{s})"),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Time32(_) | DataType::Time64(_) => "time".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        _ => "text".into(),
    }
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'value'` with embedded quotes doubled.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Date32Type, Int32Type, TimestampMicrosecondType};

    #[test]
    fn maps_types_and_parses_text() {
        assert_eq!(
            arrow_type(1700, ((10 << 16) | 2) + 4).0,
            DataType::Decimal128(10, 2)
        );
        assert_eq!(arrow_type(1700, -1), (DataType::Utf8, true));
        assert_eq!(arrow_type(600, -1), (DataType::Utf8, false)); // point

        let mut c = TextColumn::new(&DataType::Int32, 4);
        for v in [Some("42"), None] {
            let p = c.parse(v).unwrap();
            c.append(p);
        }
        assert!(c.parse(Some("x")).is_err());
        let a = c.finish();
        assert_eq!(a.as_primitive::<Int32Type>().value(0), 42);
        assert!(a.is_null(1));

        let tz = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let mut c = TextColumn::new(&tz, 1);
        let p = c.parse(Some("2024-01-02 03:04:05.5+00")).unwrap();
        c.append(p);
        assert_eq!(
            c.finish()
                .as_primitive::<TimestampMicrosecondType>()
                .value(0),
            1_704_164_645_500_000
        );

        let mut c = TextColumn::new(&DataType::Date32, 1);
        let p = c.parse(Some("1970-01-11")).unwrap();
        c.append(p);
        assert_eq!(c.finish().as_primitive::<Date32Type>().value(0), 10);
        assert_eq!(parse_bytea("\\x0aff"), Some(vec![10, 255]));
        // A character of two bytes where a hex digit belongs: refused, where it once panicked.
        assert_eq!(parse_bytea("\\x0\u{e9}0"), None);
        assert_eq!(parse_bytea("\\xzz"), None);
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
