//! Avro values for Kafka messages: one binary datum per message (no container header), read
//! into a JSON row for the source's columns, and written from the JSON of a sink's row. The
//! schema is given (`avro_schema = '{...}'`) or, for a sink, derived from its columns.

use apache_avro::schema::{RecordSchema, Schema as AvroSchema};
use apache_avro::types::Value;
use arrow::datatypes::{DataType, Schema};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde_json::{json, Map, Number, Value as Json};

use crate::error::{ConnectorError, Result};

/// A parsed Avro schema; its top level must be a record.
pub fn parse_schema(text: &str) -> Result<AvroSchema> {
    let schema = AvroSchema::parse_str(text).map_err(|e| ConnectorError::InvalidOption {
        option: "avro_schema".into(),
        value: text.chars().take(200).collect(),
        reason: format!("not an Avro schema: {e}"),
    })?;
    if !matches!(schema, AvroSchema::Record(_)) {
        return Err(ConnectorError::InvalidOption {
            option: "avro_schema".into(),
            value: text.chars().take(200).collect(),
            reason: "the schema of a message must be a record".into(),
        });
    }
    Ok(schema)
}

/// The Avro schema a sink writes when none is given: a record of the columns, each nullable
/// one a union with null.
pub fn schema_for(columns: &Schema) -> Result<AvroSchema> {
    let fields = columns
        .fields()
        .iter()
        .map(|f| {
            let t = match f.data_type() {
                DataType::Boolean => json!("boolean"),
                DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => json!("int"),
                DataType::Int64 | DataType::UInt32 => json!("long"),
                DataType::Float16 | DataType::Float32 => json!("float"),
                DataType::Float64 => json!("double"),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => json!("string"),
                DataType::Binary | DataType::LargeBinary | DataType::BinaryView => json!("bytes"),
                DataType::Date32 => json!({"type": "int", "logicalType": "date"}),
                // Tributary's timestamps are UTC, with or without a zone.
                DataType::Timestamp(_, _) => json!({"type": "long", "logicalType": "timestamp-micros"}),
                DataType::Decimal128(_, _) | DataType::Decimal256(_, _) => json!("string"),
                other => {
                    return Err(ConnectorError::Config(format!(
                        "column \"{}\" of type {other} has no Avro type here: cast it (to TEXT, for example) or give avro_schema",
                        f.name()
                    )))
                }
            };
            Ok(if f.is_nullable() {
                json!({"name": f.name(), "type": ["null", t], "default": null})
            } else {
                json!({"name": f.name(), "type": t})
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let text = json!({"type": "record", "name": "row", "namespace": "tributary", "fields": fields})
        .to_string();
    AvroSchema::parse_str(&text)
        .map_err(|e| ConnectorError::Internal(format!("derived Avro schema {text}: {e}")))
}

/// The columns of a record schema, for a source declared without them: each field a column,
/// a union with null a nullable one.
pub fn columns_of(schema: &AvroSchema) -> Result<Schema> {
    let AvroSchema::Record(record) = schema else {
        return Err(ConnectorError::Config(
            "the schema of a message must be a record".into(),
        ));
    };
    let fields = record
        .fields
        .iter()
        .map(|f| {
            let (nullable, t) = match &f.schema {
                AvroSchema::Union(u) if u.variants().contains(&AvroSchema::Null) => {
                    let rest: Vec<_> =
                        u.variants().iter().filter(|v| **v != AvroSchema::Null).collect();
                    (true, (rest.len() == 1).then(|| rest[0]))
                }
                other => (false, Some(other)),
            };
            let data_type = t.and_then(|t| match t {
                AvroSchema::Boolean => Some(DataType::Boolean),
                AvroSchema::Int | AvroSchema::TimeMillis => Some(DataType::Int32),
                AvroSchema::Long | AvroSchema::TimeMicros => Some(DataType::Int64),
                AvroSchema::Float => Some(DataType::Float32),
                AvroSchema::Double => Some(DataType::Float64),
                AvroSchema::String
                | AvroSchema::Enum(_)
                | AvroSchema::Uuid
                | AvroSchema::Bytes
                | AvroSchema::Fixed(_)
                | AvroSchema::BigDecimal => Some(DataType::Utf8),
                AvroSchema::Date => Some(DataType::Date32),
                AvroSchema::TimestampMillis
                | AvroSchema::TimestampMicros
                | AvroSchema::TimestampNanos
                | AvroSchema::LocalTimestampMillis
                | AvroSchema::LocalTimestampMicros
                | AvroSchema::LocalTimestampNanos => Some(DataType::Timestamp(
                    arrow::datatypes::TimeUnit::Microsecond,
                    None,
                )),
                _ => None,
            });
            let data_type = data_type.ok_or_else(|| {
                ConnectorError::Config(format!(
                    "the Avro field \"{}\" ({:?}) has no column type here: declare the source's columns",
                    f.name, f.schema
                ))
            })?;
            Ok(arrow::datatypes::Field::new(&f.name, data_type, nullable))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Schema::new(fields))
}

/// One message's value as a JSON row (a record's fields), for the JSON decoder: a datum written
/// with `writer`, read as `reader` (Avro's schema resolution) when that is given.
pub fn read_row(
    writer: &AvroSchema,
    reader: Option<&AvroSchema>,
    mut bytes: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    let value = apache_avro::from_avro_datum(writer, &mut bytes, reader)
        .map_err(|e| format!("not an Avro datum of the source's schema: {e}"))?;
    if !bytes.is_empty() {
        return Err(format!(
            "{} bytes after the Avro datum: not a datum of the source's schema",
            bytes.len()
        ));
    }
    serde_json::to_vec(&to_json(value)?).map_err(|e| e.to_string())
}

/// An Avro value as JSON the JSON decoder reads into Arrow: times as text, bytes as text.
fn to_json(value: Value) -> std::result::Result<Json, String> {
    let micros = |t: i64, per_second: i64| -> Json {
        DateTime::from_timestamp(
            t.div_euclid(per_second),
            (t.rem_euclid(per_second) * (1_000_000_000 / per_second)) as u32,
        )
        .map(|d| Json::String(d.naive_utc().format("%Y-%m-%dT%H:%M:%S%.f").to_string()))
        .unwrap_or(Json::Null)
    };
    Ok(match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(b),
        Value::Int(i) | Value::TimeMillis(i) => json!(i),
        Value::Long(l) | Value::TimeMicros(l) => json!(l),
        Value::Float(f) => Number::from_f64(f.into()).map_or(Json::Null, Json::Number),
        Value::Double(d) => Number::from_f64(d).map_or(Json::Null, Json::Number),
        Value::Bytes(b) | Value::Fixed(_, b) => {
            Json::String(String::from_utf8_lossy(&b).into_owned())
        }
        Value::String(s) | Value::Enum(_, s) => Json::String(s),
        Value::Uuid(u) => Json::String(u.to_string()),
        Value::Union(_, v) => to_json(*v)?,
        Value::Array(items) => Json::Array(
            items
                .into_iter()
                .map(to_json)
                .collect::<std::result::Result<_, _>>()?,
        ),
        Value::Map(items) => Json::Object(
            items
                .into_iter()
                .map(|(k, v)| Ok((k, to_json(v)?)))
                .collect::<std::result::Result<Map<_, _>, String>>()?,
        ),
        Value::Record(fields) => Json::Object(
            fields
                .into_iter()
                .map(|(k, v)| Ok((k, to_json(v)?)))
                .collect::<std::result::Result<Map<_, _>, String>>()?,
        ),
        Value::Date(d) => NaiveDate::from_num_days_from_ce_opt(d + 719_163)
            .map_or(Json::Null, |d| Json::String(d.to_string())),
        Value::TimestampMillis(t) | Value::LocalTimestampMillis(t) => micros(t, 1_000),
        Value::TimestampMicros(t) | Value::LocalTimestampMicros(t) => micros(t, 1_000_000),
        Value::TimestampNanos(t) | Value::LocalTimestampNanos(t) => micros(t, 1_000_000_000),
        Value::BigDecimal(d) => Json::String(d.to_string()),
        Value::Decimal(_) | Value::Duration(_) => {
            return Err("Avro decimal (bytes) and duration values are not read yet".into())
        }
    })
}

/// One row (a JSON object, as the sink's rows are encoded) as an Avro datum of `schema`.
pub fn write_row(schema: &AvroSchema, row: &[u8]) -> Result<Vec<u8>> {
    let row: Json = serde_json::from_slice(row)
        .map_err(|e| ConnectorError::Internal(format!("a row's JSON: {e}")))?;
    let value = from_json(&row, schema).map_err(ConnectorError::Config)?;
    apache_avro::to_avro_datum(schema, value)
        .map_err(|e| ConnectorError::Config(format!("a row does not fit the Avro schema: {e}")))
}

/// A JSON value as an Avro value of `schema`.
fn from_json(v: &Json, schema: &AvroSchema) -> std::result::Result<Value, String> {
    let mismatch = || format!("{v} is not an Avro {schema:?}");
    let time = |unit: i64| -> std::result::Result<i64, String> {
        if let Some(n) = v.as_i64() {
            return Ok(n);
        }
        let text = v.as_str().ok_or_else(mismatch)?;
        let t = DateTime::parse_from_rfc3339(text)
            .map(|t| t.naive_utc())
            .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f"))
            .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f"))
            .map_err(|e| format!("{text} is not a time: {e}"))?
            .and_utc();
        Ok(match unit {
            1_000 => t.timestamp_millis(),
            1_000_000 => t.timestamp_micros(),
            _ => t.timestamp_nanos_opt().ok_or_else(mismatch)?,
        })
    };
    Ok(match schema {
        AvroSchema::Union(u) => {
            if v.is_null() {
                let i = u
                    .variants()
                    .iter()
                    .position(|s| matches!(s, AvroSchema::Null))
                    .ok_or_else(mismatch)?;
                return Ok(Value::Union(i as u32, Box::new(Value::Null)));
            }
            let mut last = mismatch();
            for (i, s) in u.variants().iter().enumerate() {
                if matches!(s, AvroSchema::Null) {
                    continue;
                }
                match from_json(v, s) {
                    Ok(value) => return Ok(Value::Union(i as u32, Box::new(value))),
                    Err(e) => last = e,
                }
            }
            return Err(last);
        }
        _ if v.is_null() && !matches!(schema, AvroSchema::Null) => {
            return Err(format!(
                "a null where the Avro schema has {schema:?}, which is not nullable"
            ))
        }
        AvroSchema::Null => Value::Null,
        AvroSchema::Boolean => Value::Boolean(v.as_bool().ok_or_else(mismatch)?),
        AvroSchema::Int => Value::Int(
            v.as_i64()
                .and_then(|i| i32::try_from(i).ok())
                .ok_or_else(mismatch)?,
        ),
        AvroSchema::Long => Value::Long(v.as_i64().ok_or_else(mismatch)?),
        AvroSchema::Float => Value::Float(v.as_f64().ok_or_else(mismatch)? as f32),
        AvroSchema::Double => Value::Double(v.as_f64().ok_or_else(mismatch)?),
        AvroSchema::String => Value::String(match v {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        }),
        AvroSchema::Bytes => Value::Bytes(v.as_str().ok_or_else(mismatch)?.as_bytes().to_vec()),
        AvroSchema::Uuid => Value::Uuid(
            v.as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(mismatch)?,
        ),
        AvroSchema::Date => Value::Date(match v.as_i64() {
            Some(d) => i32::try_from(d).map_err(|_| mismatch())?,
            None => {
                let d = NaiveDate::parse_from_str(v.as_str().ok_or_else(mismatch)?, "%Y-%m-%d")
                    .map_err(|_| mismatch())?;
                chrono::Datelike::num_days_from_ce(&d) - 719_163
            }
        }),
        AvroSchema::TimestampMillis => Value::TimestampMillis(time(1_000)?),
        AvroSchema::TimestampMicros => Value::TimestampMicros(time(1_000_000)?),
        AvroSchema::TimestampNanos => Value::TimestampNanos(time(1_000_000_000)?),
        AvroSchema::LocalTimestampMillis => Value::LocalTimestampMillis(time(1_000)?),
        AvroSchema::LocalTimestampMicros => Value::LocalTimestampMicros(time(1_000_000)?),
        AvroSchema::LocalTimestampNanos => Value::LocalTimestampNanos(time(1_000_000_000)?),
        AvroSchema::Enum(e) => {
            let s = v.as_str().ok_or_else(mismatch)?;
            let i = e
                .symbols
                .iter()
                .position(|x| x == s)
                .ok_or_else(|| format!("\"{s}\" is not one of the enum's symbols"))?;
            Value::Enum(i as u32, s.to_string())
        }
        AvroSchema::Array(a) => Value::Array(
            v.as_array()
                .ok_or_else(mismatch)?
                .iter()
                .map(|x| from_json(x, &a.items))
                .collect::<std::result::Result<_, _>>()?,
        ),
        AvroSchema::Map(m) => Value::Map(
            v.as_object()
                .ok_or_else(mismatch)?
                .iter()
                .map(|(k, x)| Ok((k.clone(), from_json(x, &m.types)?)))
                .collect::<std::result::Result<_, String>>()?,
        ),
        AvroSchema::Record(RecordSchema { fields, .. }) => {
            let object = v.as_object().ok_or_else(mismatch)?;
            Value::Record(
                fields
                    .iter()
                    .map(|f| {
                        let x = object.get(&f.name).unwrap_or(&Json::Null);
                        let value = match (x, &f.default) {
                            // A column the rows lack takes the field's default.
                            (Json::Null, Some(d)) if !object.contains_key(&f.name) => {
                                from_json(d, &f.schema)
                            }
                            _ => from_json(x, &f.schema),
                        }
                        .map_err(|e| format!("field \"{}\": {e}", f.name))?;
                        Ok((f.name.clone(), value))
                    })
                    .collect::<std::result::Result<_, String>>()?,
            )
        }
        other => return Err(format!("the Avro type {other:?} is not written yet")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, TimeUnit};

    #[test]
    fn rows_go_round_the_derived_schema() {
        let columns = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("amount", DataType::Float64, true),
            Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("day", DataType::Date32, true),
            Field::new("ok", DataType::Boolean, true),
        ]);
        let schema = schema_for(&columns).unwrap();
        let row = br#"{"id":7,"name":"ann","amount":1.5,"at":"2026-05-01T10:00:00.25","day":"2026-05-01","ok":true}"#;
        let datum = write_row(&schema, row).unwrap();
        let back: Json = serde_json::from_slice(&read_row(&schema, None, &datum).unwrap()).unwrap();
        assert_eq!(
            back,
            json!({"id": 7, "name": "ann", "amount": 1.5, "at": "2026-05-01T10:00:00.250", "day": "2026-05-01", "ok": true})
        );
        // Absent (null) columns are nulls of their unions; a null in a column that cannot be
        // one is an error naming the field.
        let datum = write_row(&schema, br#"{"id":8}"#).unwrap();
        let back: Json = serde_json::from_slice(&read_row(&schema, None, &datum).unwrap()).unwrap();
        assert_eq!(back["id"], 8);
        assert!(back["name"].is_null() && back["at"].is_null());
        let e = write_row(&schema, br#"{"name":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"id\""), "{e}");
    }

    #[test]
    fn a_given_schema_reads_and_bad_data_says_why() {
        let schema = parse_schema(
            r#"{"type":"record","name":"click","fields":[
                {"name":"user","type":"string"},
                {"name":"kind","type":{"type":"enum","name":"kind","symbols":["VIEW","BUY"]}},
                {"name":"tags","type":{"type":"map","values":"long"}},
                {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#,
        )
        .unwrap();
        let datum = write_row(
            &schema,
            br#"{"user":"u1","kind":"BUY","tags":{"a":1},"at":1777629600000}"#,
        )
        .unwrap();
        let back: Json = serde_json::from_slice(&read_row(&schema, None, &datum).unwrap()).unwrap();
        assert_eq!(
            back,
            json!({"user": "u1", "kind": "BUY", "tags": {"a": 1}, "at": "2026-05-01T10:00:00"})
        );
        assert!(read_row(&schema, None, b"\x02").is_err());
        let mut longer = datum.clone();
        longer.push(0);
        assert!(read_row(&schema, None, &longer)
            .unwrap_err()
            .contains("after"));
        assert!(parse_schema("\"string\"").is_err());
        assert!(parse_schema("{").is_err());
    }

    #[test]
    fn columns_come_from_a_record_and_old_datums_read_as_a_newer_schema() {
        let v1 = parse_schema(
            r#"{"type":"record","name":"o","fields":[
                {"name":"id","type":"long"},
                {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#,
        )
        .unwrap();
        let v2 = parse_schema(
            r#"{"type":"record","name":"o","fields":[
                {"name":"id","type":"long"},
                {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"coupon","type":["null","string"],"default":null}]}"#,
        )
        .unwrap();
        let columns = columns_of(&v2).unwrap();
        let described: Vec<String> = columns
            .fields()
            .iter()
            .map(|f| format!("{} {} {}", f.name(), f.data_type(), f.is_nullable()))
            .collect();
        assert_eq!(
            described,
            [
                "id Int64 false",
                "at Timestamp(µs) false",
                "coupon Utf8 true"
            ]
        );
        // A datum written with v1, read as v2: the new field takes its default.
        let datum = write_row(&v1, br#"{"id":3,"at":"2026-05-01T10:00:00"}"#).unwrap();
        let back: Json =
            serde_json::from_slice(&read_row(&v1, Some(&v2), &datum).unwrap()).unwrap();
        assert_eq!(
            back,
            json!({"id": 3, "at": "2026-05-01T10:00:00", "coupon": null})
        );
        // Fields with no column type are named.
        let nested = parse_schema(
            r#"{"type":"record","name":"o","fields":[{"name":"tags","type":{"type":"array","items":"string"}}]}"#,
        )
        .unwrap();
        assert!(columns_of(&nested)
            .unwrap_err()
            .to_string()
            .contains("\"tags\""));
    }
}
