//! The message metadata a Kafka source yields as columns: a declared column named `_key`,
//! `_headers`, `_partition`, `_offset` or `_timestamp` takes the message's key (text, or bytes
//! when declared `BYTEA`), headers (a JSON object of text values), partition, offset and
//! timestamp (UTC), cast to the declared type, instead of a field of the value.

use std::sync::Arc;

use arrow::array::TimestampMillisecondArray;
use arrow::array::{ArrayRef, BinaryArray, Int32Array, Int64Array, StringArray};
use arrow::compute::can_cast_types;
use arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::error::{ConnectorError, Result};

/// The metadata column names.
pub const COLUMNS: [&str; 5] = ["_key", "_headers", "_partition", "_offset", "_timestamp"];

/// Whether `name` is a metadata column.
pub fn is_metadata(name: &str) -> bool {
    COLUMNS.contains(&name)
}

/// One message's metadata, as much of it as the source's columns ask for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageMeta {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub headers: Option<String>,
    /// UTC milliseconds.
    pub timestamp: Option<i64>,
}

/// Which metadata a source's columns ask of each message.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wanted {
    pub key: bool,
    pub headers: bool,
    pub any: bool,
}

impl Wanted {
    pub fn of(schema: &SchemaRef) -> Wanted {
        let has = |n: &str| schema.field_with_name(n).is_ok();
        Wanted {
            key: has("_key"),
            headers: has("_headers"),
            any: COLUMNS.iter().any(|c| has(c)),
        }
    }

    /// What `msg` gives of what is wanted.
    pub fn read(&self, msg: &BorrowedMessage<'_>) -> MessageMeta {
        MessageMeta {
            partition: msg.partition(),
            offset: msg.offset(),
            key: if self.key {
                msg.key().map(<[u8]>::to_vec)
            } else {
                None
            },
            headers: if self.headers {
                // In the order the headers came (a JSON map would sort them).
                msg.headers().map(|h| {
                    let fields: Vec<String> = h
                        .iter()
                        .map(|h| {
                            let value = h.value.map_or(serde_json::Value::Null, |v| {
                                serde_json::Value::String(String::from_utf8_lossy(v).into_owned())
                            });
                            format!("{}:{value}", serde_json::Value::String(h.key.to_string()))
                        })
                        .collect();
                    format!("{{{}}}", fields.join(","))
                })
            } else {
                None
            },
            timestamp: msg.timestamp().to_millis(),
        }
    }
}

/// The type a metadata column is read as, before the cast to its declared type.
fn natural_type(name: &str, declared: &DataType) -> DataType {
    match name {
        "_key" if matches!(declared, DataType::Binary | DataType::LargeBinary) => DataType::Binary,
        "_key" | "_headers" => DataType::Utf8,
        "_partition" => DataType::Int32,
        "_offset" => DataType::Int64,
        _ => DataType::Timestamp(TimeUnit::Millisecond, None),
    }
}

/// The columns decoded from the message value: the declared ones minus metadata. Checks that
/// each metadata column's declared type can hold it.
pub fn payload_schema(schema: &SchemaRef) -> Result<SchemaRef> {
    for f in schema.fields() {
        if !is_metadata(f.name()) {
            continue;
        }
        let natural = natural_type(f.name(), f.data_type());
        let text_only = matches!(f.name().as_str(), "_key" | "_headers")
            && !matches!(
                f.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
            && natural != DataType::Binary;
        if text_only || !can_cast_types(&natural, f.data_type()) {
            return Err(ConnectorError::Config(format!(
                "the Kafka metadata column {} cannot be {} (declare it as {})",
                f.name(),
                f.data_type(),
                match f.name().as_str() {
                    "_key" => "TEXT or BYTEA",
                    "_headers" => "TEXT: a JSON object",
                    "_partition" => "INT",
                    "_offset" => "BIGINT",
                    _ => "TIMESTAMP",
                }
            )));
        }
    }
    Ok(Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .filter(|f| !is_metadata(f.name()))
            .cloned()
            .collect::<Vec<_>>(),
    )))
}

/// The source's rows: the value columns of `payload` and the metadata of `metas` (one per row,
/// in order), in the declared order of `schema`.
pub fn assemble(
    schema: &SchemaRef,
    payload: &RecordBatch,
    metas: &[MessageMeta],
) -> Result<RecordBatch> {
    if payload.num_rows() != metas.len() {
        return Err(ConnectorError::Internal(format!(
            "{} decoded rows for {} messages",
            payload.num_rows(),
            metas.len()
        )));
    }
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            if !is_metadata(f.name()) {
                return payload
                    .column_by_name(f.name())
                    .cloned()
                    .ok_or_else(|| ConnectorError::Internal(format!("no column {}", f.name())));
            }
            let natural: ArrayRef = match natural_type(f.name(), f.data_type()) {
                DataType::Binary => Arc::new(BinaryArray::from_iter(
                    metas.iter().map(|m| m.key.as_deref()),
                )),
                DataType::Utf8 if f.name() == "_key" => Arc::new(StringArray::from_iter(
                    metas
                        .iter()
                        .map(|m| m.key.as_deref().map(String::from_utf8_lossy)),
                )),
                DataType::Utf8 => Arc::new(StringArray::from_iter(
                    metas.iter().map(|m| m.headers.as_deref()),
                )),
                DataType::Int32 => Arc::new(Int32Array::from_iter_values(
                    metas.iter().map(|m| m.partition),
                )),
                DataType::Int64 => {
                    Arc::new(Int64Array::from_iter_values(metas.iter().map(|m| m.offset)))
                }
                _ => Arc::new(TimestampMillisecondArray::from_iter(
                    metas.iter().map(|m| m.timestamp),
                )),
            };
            Ok(arrow::compute::cast(&natural, f.data_type())?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    #[test]
    fn metadata_columns_take_the_message_and_the_rest_the_value() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("_key", DataType::Utf8, true),
            Field::new("_partition", DataType::Int64, true),
            Field::new("_offset", DataType::Int64, true),
            Field::new(
                "_timestamp",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("_headers", DataType::Utf8, true),
        ]));
        let payload_schema = payload_schema(&schema).unwrap();
        assert_eq!(payload_schema.fields().len(), 1);
        let payload =
            RecordBatch::try_new(payload_schema, vec![Arc::new(Int64Array::from(vec![7, 8]))])
                .unwrap();
        let metas = vec![
            MessageMeta {
                partition: 2,
                offset: 41,
                key: Some(b"k7".to_vec()),
                headers: Some(r#"{"trace":"a"}"#.into()),
                timestamp: Some(1_764_576_000_000),
            },
            MessageMeta {
                partition: 2,
                offset: 42,
                ..Default::default()
            },
        ];
        let batch = assemble(&schema, &payload, &metas).unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&[batch])
            .unwrap()
            .to_string();
        assert!(
            text.contains(
                "| 7  | k7   | 2          | 41      | 2025-12-01T08:00:00Z | {\"trace\":\"a\"} |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| 8  |      | 2          | 42      |"),
            "{text}"
        );
        // Two metas for one row is a bug, not a silent misalignment.
        assert!(assemble(&schema, &payload.slice(0, 1), &metas).is_err());
    }

    #[test]
    fn a_metadata_column_of_the_wrong_type_is_refused() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new(
            "_headers",
            DataType::Int64,
            true,
        )]));
        let e = payload_schema(&schema).unwrap_err().to_string();
        assert!(e.contains("_headers") && e.contains("TEXT"), "{e}");
        let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new(
            "_key",
            DataType::Binary,
            true,
        )]));
        assert!(payload_schema(&schema).is_ok());
    }
}
