//! Kafka message values into rows of a source's columns: JSON, CSV, raw text, Avro, Debezium
//! change events and upsert messages, with the metadata columns beside them; messages that do
//! not decode become bad records named `topic/partition/offset`.

use std::sync::Arc;

use arrow::array::StringArray;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use super::metadata::{self, MessageMeta, Wanted};
use super::{debezium, upsert, KafkaFormat};
use crate::error::{ConnectorError, Result};
use crate::format::avro;
use crate::format::schema_registry::{self, SchemaRegistry};
use crate::format::{decode_records, CsvDecoder, JsonDecoder, Record, RecordDecoder};
use crate::BadRecord;

/// How a source reads Avro message values.
pub(super) enum AvroValues {
    /// Plain datums of the given schema (`avro_schema`).
    Inline(apache_avro::Schema),
    /// Datums in the schema registry's wire format, each naming its writer's schema there; read
    /// as `reader` (`avro_schema`, Avro's schema resolution) when that is given.
    Registry {
        registry: Arc<SchemaRegistry>,
        reader: Option<apache_avro::Schema>,
    },
}

/// How a source's messages become its rows.
pub(super) struct MessageDecoder {
    topic: String,
    format: KafkaFormat,
    /// csv: whether each message starts with a header line.
    header: bool,
    schema: SchemaRef,
    /// The columns decoded from message values (the schema minus metadata columns).
    payload_schema: SchemaRef,
    /// The metadata the columns ask for (and the key, in upsert mode).
    pub wanted: Wanted,
    /// `mode = 'upsert'`: the primary key the message keys hold.
    upsert_key: Option<Vec<String>>,
    /// `format = 'avro'`: how message values are read.
    avro: Option<AvroValues>,
    decoder: Option<Arc<dyn RecordDecoder>>,
}

impl MessageDecoder {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        topic: String,
        format: KafkaFormat,
        header: bool,
        delimiter: u8,
        schema: SchemaRef,
        upsert_key: Option<Vec<String>>,
        avro: Option<AvroValues>,
    ) -> Result<Self> {
        let payload_schema = metadata::payload_schema(&schema)?;
        let decoder: Option<Arc<dyn RecordDecoder>> = match format {
            KafkaFormat::Json | KafkaFormat::DebeziumJson | KafkaFormat::Avro => {
                Some(Arc::new(JsonDecoder::new(payload_schema.clone())))
            }
            KafkaFormat::Csv => Some(Arc::new(CsvDecoder::new(payload_schema.clone(), delimiter))),
            KafkaFormat::Raw => None,
        };
        let mut wanted = Wanted::of(&schema);
        wanted.key |= upsert_key.is_some();
        Ok(MessageDecoder {
            topic,
            format,
            header,
            schema,
            payload_schema,
            wanted,
            upsert_key,
            avro,
            decoder,
        })
    }

    /// Fetches the registry schemas that `payloads` name and were not fetched yet (a no-op unless
    /// values are read through a schema registry), so that [`MessageDecoder::decode`] finds them.
    pub async fn fetch_schemas(&self, payloads: &[(MessageMeta, Vec<u8>)]) -> Result<()> {
        if let Some(AvroValues::Registry { registry, .. }) = &self.avro {
            let ids = payloads
                .iter()
                .filter_map(|(_, v)| schema_registry::unframe(v).ok().map(|(id, _)| id));
            registry.fetch(ids).await?;
        }
        Ok(())
    }

    /// Decodes fetched messages. An `Err` fails the epoch: the offsets have moved past them.
    pub fn decode(
        &self,
        payloads: Vec<(MessageMeta, Vec<u8>)>,
    ) -> Result<(RecordBatch, Vec<BadRecord>)> {
        // Values that are not rows of the columns yet: change events, upserts, Avro.
        let (payloads, mut bad) = match (self.format, &self.upsert_key, &self.avro) {
            (KafkaFormat::DebeziumJson, _, _) => self.convert_values(payloads, |_, v| {
                debezium::read(v).map(|event| match event {
                    debezium::Event::Change(row) => Some(row),
                    debezium::Event::Tombstone => None,
                })
            }),
            (_, Some(key), _) => self.convert_values(payloads, |m, v| {
                upsert::read(m.key.as_deref(), v, key).map(Some)
            }),
            (KafkaFormat::Avro, _, Some(AvroValues::Inline(schema))) => {
                self.convert_values(payloads, |_, v| avro::read_row(schema, None, v).map(Some))
            }
            (KafkaFormat::Avro, _, Some(AvroValues::Registry { registry, reader })) => self
                .convert_values(payloads, |_, v| {
                    let (id, datum) = schema_registry::unframe(v)?;
                    let writer = registry.cached(id)?;
                    avro::read_row(&writer, reader.as_ref(), datum).map(Some)
                }),
            _ => (payloads, Vec::new()),
        };
        let (values, more_bad) = self.decode_values(&payloads)?;
        bad.extend(more_bad);
        if !self.wanted.any {
            return Ok((values, bad));
        }
        // The metadata of the messages that decoded.
        let failed: std::collections::HashSet<&str> =
            bad.iter().map(|b| b.position.as_str()).collect();
        let metas: Vec<MessageMeta> = payloads
            .into_iter()
            .map(|(m, _)| m)
            .filter(|m| failed.is_empty() || !failed.contains(self.position(m).as_str()))
            .collect();
        Ok((metadata::assemble(&self.schema, &values, &metas)?, bad))
    }

    /// Where a message is, as bad records name it: `topic/partition/offset`.
    fn position(&self, m: &MessageMeta) -> String {
        format!("{}/{}/{}", self.topic, m.partition, m.offset)
    }

    /// Each message's value through `convert` (`Ok(None)`: no row, such as a tombstone); what
    /// it refuses becomes a bad record.
    fn convert_values(
        &self,
        payloads: Vec<(MessageMeta, Vec<u8>)>,
        convert: impl Fn(&MessageMeta, &[u8]) -> std::result::Result<Option<Vec<u8>>, String>,
    ) -> (Vec<(MessageMeta, Vec<u8>)>, Vec<BadRecord>) {
        let mut bad = Vec::new();
        let rows = payloads
            .into_iter()
            .filter_map(|(m, v)| match convert(&m, &v) {
                Ok(row) => row.map(|row| (m, row)),
                Err(message) => {
                    bad.push(BadRecord {
                        position: self.position(&m),
                        message,
                        raw: String::from_utf8_lossy(&v[..v.len().min(4096)]).into_owned(),
                    });
                    None
                }
            })
            .collect();
        (rows, bad)
    }

    /// Decodes message values into the value columns.
    fn decode_values(
        &self,
        payloads: &[(MessageMeta, Vec<u8>)],
    ) -> Result<(RecordBatch, Vec<BadRecord>)> {
        match (&self.decoder, self.format) {
            (None, _) | (_, KafkaFormat::Raw) => {
                let values: Vec<Option<String>> = payloads
                    .iter()
                    .map(|(_, v)| Some(String::from_utf8_lossy(v).to_string()))
                    .collect();
                let batch = RecordBatch::try_new(
                    self.payload_schema.clone(),
                    vec![Arc::new(StringArray::from(values))],
                )
                .map_err(|e| {
                    ConnectorError::Config(format!(
                        "raw messages of topic {} do not fit the source's columns ({e}): \
                         format = 'raw' reads one text column",
                        self.topic
                    ))
                })?;
                Ok((batch, Vec::new()))
            }
            (Some(decoder), _) => {
                // One record per message, newline-framed, so the shared decoder can isolate bad ones.
                let mut buf = Vec::new();
                let mut records = Vec::with_capacity(payloads.len());
                let mut bad = Vec::new();
                for (i, (m, v)) in payloads.iter().enumerate() {
                    let mut v: &[u8] = v;
                    if self.header && self.format == KafkaFormat::Csv {
                        if let Some(nl) = v.iter().position(|b| *b == b'\n') {
                            v = &v[nl + 1..];
                        }
                    }
                    let v = trim_newlines(v);
                    if v.iter().all(|b| b.is_ascii_whitespace()) {
                        bad.push(BadRecord {
                            position: self.position(m),
                            message: "empty message".into(),
                            raw: String::new(),
                        });
                        continue;
                    }
                    let start = buf.len();
                    if v.contains(&b'\n') && self.format == KafkaFormat::Json {
                        // A pretty-printed object: collapse its newlines, JSON does not need them.
                        buf.extend(v.iter().map(|b| match b {
                            b'\n' | b'\r' => b' ',
                            b => *b,
                        }));
                    } else {
                        buf.extend_from_slice(v);
                    }
                    let end = buf.len();
                    buf.push(b'\n');
                    records.push(Record {
                        start,
                        end,
                        next: buf.len(),
                        line: i as u64,
                    });
                }
                let (batch, more_bad) = decode_records(decoder.as_ref(), &buf, &records, &|r| {
                    self.position(&payloads[r.line as usize].0)
                });
                bad.extend(more_bad);
                Ok((batch, bad))
            }
        }
    }
}

fn trim_newlines(mut v: &[u8]) -> &[u8] {
    while let Some((last, rest)) = v.split_last() {
        if *last == b'\n' || *last == b'\r' {
            v = rest;
        } else {
            break;
        }
    }
    v
}
