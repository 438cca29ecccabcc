//! Kafka source: assigns every partition of the topic (no consumer group), seeks to the
//! checkpointed offsets, and decodes message values in batches; undecodable messages become bad
//! records named by partition and offset. Declared columns named `_key`, `_headers`,
//! `_partition`, `_offset` and `_timestamp` take the message's metadata instead of its value.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

use super::decode::{AvroValues, MessageDecoder};
use super::metadata;
use super::reader::{KafkaPosition, KafkaSource, ReaderPart};
use super::{
    client_config, format_of, kafka_error, raw_schema, schema_registry, without_properties,
    KafkaFormat, SOURCE_OPTIONS,
};
use crate::changes::OP;
use crate::error::{ConnectorError, Result};
use crate::format::avro;
use crate::format::schema_registry::SchemaRegistry;
use crate::options::{OptionSpec, Options};
use crate::{ReadOptions, Source, SourceConnector, SourcePosition, SourceSpec};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// `connector = 'kafka'` as a source.
pub struct KafkaSourceConnector;

struct Parsed {
    topic: String,
    format: KafkaFormat,
    /// `format = 'avro'`: the schema of message values (given, or read as).
    avro: Option<apache_avro::Schema>,
    /// `schema_registry_url`: the registry values name their schemas in, and the values' subject.
    registry: Option<(Arc<SchemaRegistry>, String)>,
    /// `mode = 'upsert'`: messages are the latest rows by key, tombstones delete.
    upsert: bool,
    start: Start,
    header: bool,
    delimiter: u8,
    batch_size: usize,
    /// Reader tasks (default: one per core, at most one per partition).
    readers: Option<usize>,
}

/// Where a first run starts reading.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Start {
    Earliest,
    Latest,
    /// The first message at or after this time (UTC milliseconds), per partition.
    Timestamp(i64),
}

fn parse(spec: &SourceSpec) -> Result<Parsed> {
    let opts = Options::validate("kafka", SOURCE_OPTIONS, &without_properties(&spec.options))?;
    let start = match opts.get_choice(
        "start_from",
        &["earliest", "latest", "timestamp"],
        "earliest",
    )? {
        "latest" => Start::Latest,
        "timestamp" => Start::Timestamp(start_timestamp(opts.get("start_timestamp"))?),
        _ => {
            if opts.get("start_timestamp").is_some() {
                return Err(ConnectorError::Config(
                    "start_timestamp needs start_from = 'timestamp'".into(),
                ));
            }
            Start::Earliest
        }
    };
    let upsert = opts.get_choice("mode", &["append", "upsert"], "append")? == "upsert";
    let format = format_of(&opts)?;
    if upsert && format != KafkaFormat::Json {
        return Err(ConnectorError::Config(
            "mode = 'upsert' reads JSON values (format = 'json')".into(),
        ));
    }
    let topic = opts.require("topic")?.to_string();
    let registry = schema_registry(&opts, format == KafkaFormat::Avro, &topic)?;
    let avro = match (format, opts.get("avro_schema")) {
        (KafkaFormat::Avro, Some(text)) => Some(avro::parse_schema(text)?),
        (KafkaFormat::Avro, None) if registry.is_none() => {
            return Err(ConnectorError::Config(
                "format = 'avro' needs avro_schema = '{\"type\": \"record\", ...}' or schema_registry_url = 'http://...'".into(),
            ))
        }
        (_, Some(_)) => {
            return Err(ConnectorError::Config(
                "avro_schema is for format = 'avro'".into(),
            ))
        }
        (_, None) => None,
    };
    Ok(Parsed {
        topic,
        format,
        avro,
        registry,
        upsert,
        start,
        header: opts.get_bool("header", false)?,
        delimiter: opts.get_byte("delimiter", b',')?,
        batch_size: opts
            .get_u64("batch_size")?
            .unwrap_or(8192)
            .clamp(1, 1 << 20) as usize,
        readers: opts.get_u64("readers")?.map(|n| n.clamp(1, 1024) as usize),
    })
}

/// `start_timestamp`: RFC 3339 (`2026-12-01T08:00:00Z`) or `YYYY-MM-DD HH:MM:SS[.fff]` in UTC,
/// as UTC milliseconds.
fn start_timestamp(value: Option<&str>) -> Result<i64> {
    let invalid = |v: &str| ConnectorError::InvalidOption {
        option: "start_timestamp".into(),
        value: v.to_string(),
        reason: "a time such as '2026-12-01T08:00:00Z' or '2026-12-01 08:00:00' (UTC)".into(),
    };
    let v = value.ok_or_else(|| {
        ConnectorError::Config("start_from = 'timestamp' needs start_timestamp = '...'".into())
    })?;
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Ok(t.timestamp_millis());
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d"]
        .iter()
        .find_map(|f| {
            chrono::NaiveDateTime::parse_from_str(v, f)
                .ok()
                .or_else(|| {
                    chrono::NaiveDate::parse_from_str(v, f)
                        .ok()
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                })
        })
        .map(|t| t.and_utc().timestamp_millis())
        .ok_or_else(|| invalid(v))
}

/// Each partition's first offset at or after `ms` (UTC milliseconds); partitions with no such
/// message are left out.
fn offsets_for_time(
    consumer: &BaseConsumer,
    topic: &str,
    parts: &[i32],
    ms: i64,
) -> Result<BTreeMap<i32, i64>> {
    let mut tpl = TopicPartitionList::new();
    for &p in parts {
        tpl.add_partition_offset(topic, p, Offset::Offset(ms))
            .map_err(|e| kafka_error("asking for offsets by time", e))?;
    }
    let found = consumer
        .offsets_for_times(tpl, METADATA_TIMEOUT)
        .map_err(|e| kafka_error(format!("finding offsets by time in {topic}"), e))?;
    Ok(found
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// The columns of an Avro source declared without them: the fields of its `avro_schema`, else
/// those of the latest schema under its subject in the schema registry.
async fn avro_columns(p: &Parsed) -> Result<arrow::datatypes::Schema> {
    if let Some(schema) = &p.avro {
        return avro::columns_of(schema);
    }
    let (registry, subject) = p.registry.as_ref().ok_or_else(|| {
        ConnectorError::Internal("an Avro source with neither schema nor registry".into())
    })?;
    let (id, schema) = registry.latest(subject).await?;
    tracing::info!(
        subject,
        id,
        "Kafka source's columns from the schema registry"
    );
    avro::columns_of(&schema)
}

/// The PRIMARY KEY a source's schema carries as metadata.
fn primary_key(schema: Option<&SchemaRef>) -> Vec<String> {
    schema
        .and_then(|s| s.metadata().get(crate::PRIMARY_KEY_METADATA))
        .map(|k| k.split(',').map(str::to_string).collect())
        .unwrap_or_default()
}

fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>> {
    let md = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| kafka_error(format!("reading metadata of topic {topic}"), e))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| ConnectorError::Config(format!("topic '{topic}' does not exist")))?;
    if let Some(err) = t.error() {
        return Err(ConnectorError::Config(format!(
            "topic '{topic}': {:?}",
            rdkafka::types::RDKafkaErrorCode::from(err)
        )));
    }
    let mut p: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    p.sort_unstable();
    if p.is_empty() {
        return Err(ConnectorError::Config(format!(
            "topic '{topic}' does not exist or has no partitions"
        )));
    }
    Ok(p)
}

#[async_trait]
impl SourceConnector for KafkaSourceConnector {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn options(&self) -> &'static [OptionSpec] {
        SOURCE_OPTIONS
    }

    async fn validate(&self, spec: &SourceSpec) -> Result<SchemaRef> {
        let p = parse(spec)?;
        if p.upsert && primary_key(spec.schema.as_ref()).is_empty() {
            return Err(ConnectorError::Config(
                "mode = 'upsert' needs the source's PRIMARY KEY (...): the columns the message key holds".into(),
            ));
        }
        let changes = p.format == KafkaFormat::DebeziumJson || p.upsert;
        let schema = match (p.format, &spec.schema) {
            (KafkaFormat::Raw, None) => raw_schema(),
            (KafkaFormat::Raw, Some(s)) => {
                // `value` and metadata columns.
                let value = metadata::payload_schema(s)?;
                if value.fields().is_empty() {
                    let mut fields = raw_schema().fields().to_vec();
                    fields.extend(s.fields().iter().cloned());
                    Arc::new(arrow::datatypes::Schema::new(fields))
                } else if value.fields().len() == 1
                    && value.field(0).name() == "value"
                    && *value.field(0).data_type() == arrow::datatypes::DataType::Utf8
                {
                    s.clone()
                } else {
                    return Err(ConnectorError::Config(
                        "format = 'raw' reads one text column, value; other columns must be metadata (_key, _headers, _partition, _offset, _timestamp)".into(),
                    ));
                }
            }
            (_, Some(s)) if changes => {
                // The declared columns and the change kind.
                metadata::payload_schema(s)?;
                let mut fields = s.fields().to_vec();
                if s.field_with_name(OP).is_err() {
                    fields.push(Arc::new(arrow::datatypes::Field::new(
                        OP,
                        arrow::datatypes::DataType::Utf8,
                        false,
                    )));
                }
                Arc::new(arrow::datatypes::Schema::new_with_metadata(
                    fields,
                    s.metadata().clone(),
                ))
            }
            (_, Some(s)) => {
                metadata::payload_schema(s)?;
                s.clone()
            }
            (KafkaFormat::Avro, None) => Arc::new(avro_columns(&p).await?),
            (_, None) => {
                return Err(ConnectorError::Config(
                    "declare the columns of a kafka source (CREATE SOURCE name (col type, ...) WITH (...)), or use format = 'raw'".into(),
                ))
            }
        };
        if let (Some((registry, subject)), Some(_)) = (&p.registry, &spec.schema) {
            // Reach the registry now, so a wrong address fails at CREATE time; the subject
            // may not exist yet.
            match registry.latest(subject).await {
                Ok(_) | Err(ConnectorError::Config(_)) => {}
                Err(e) => return Err(e),
            }
        }
        // Reach the broker now, so a wrong address or topic fails at CREATE time.
        let cfg = client_config(&spec.options);
        let topic = p.topic.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let consumer: BaseConsumer = cfg
                .create()
                .map_err(|e| kafka_error("creating Kafka client", e))?;
            partitions(&consumer, &topic).map(|_| ())
        })
        .await
        .map_err(|e| ConnectorError::Internal(e.to_string()))??;
        Ok(schema)
    }

    fn is_bounded(&self, _spec: &SourceSpec) -> bool {
        false
    }

    async fn open(
        &self,
        spec: &SourceSpec,
        schema: SchemaRef,
        from: Option<SourcePosition>,
        read: ReadOptions,
    ) -> Result<Box<dyn Source>> {
        let p = parse(spec)?;
        let position: KafkaPosition = SourcePosition::decode(from, "kafka")?;
        let mut cfg = client_config(&spec.options);
        cfg.set("group.id", format!("tributary-{}", spec.name))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set(
                "auto.offset.reset",
                if p.start == Start::Latest {
                    "latest"
                } else {
                    "earliest"
                },
            );
        if !spec.options.contains_key("properties.isolation.level") {
            // Messages of transactions that commit, never of those that abort.
            cfg.set("isolation.level", "read_committed");
        }
        let meta_cfg = cfg.clone();
        let topic = p.topic.clone();
        let start_from = p.start;
        let readers = p.readers;
        let user_set = |key: &str| spec.options.contains_key(&format!("properties.{key}"));
        let prefetch_set = user_set("queued.max.messages.kbytes");
        let (parts, ends) = tokio::task::spawn_blocking(
            move || -> Result<(Vec<ReaderPart>, BTreeMap<i32, i64>)> {
                let meta: BaseConsumer = meta_cfg
                    .create()
                    .map_err(|e| kafka_error("creating Kafka client", e))?;
                let parts = partitions(&meta, &topic)?;
                let mut ends = BTreeMap::new();
                let by_time = match start_from {
                    Start::Timestamp(ms) => offsets_for_time(&meta, &topic, &parts, ms)?,
                    _ => BTreeMap::new(),
                };
                // Partitions dealt round the readers.
                let n = readers
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
                let n = n.clamp(1, parts.len());
                let mut groups: Vec<(TopicPartitionList, BTreeMap<i32, i64>)> =
                    (0..n).map(|_| Default::default()).collect();
                for (i, &pt) in parts.iter().enumerate() {
                    let (low, high) = meta
                        .fetch_watermarks(&topic, pt, METADATA_TIMEOUT)
                        .map_err(|e| kafka_error("reading offsets", e))?;
                    // Checkpointed offset, else where start_from says; never before what the broker still has.
                    let start = match position.offsets.get(&pt) {
                        Some(o) => (*o).max(low),
                        None => match start_from {
                            Start::Latest => high,
                            Start::Earliest => low,
                            // No message at or after the time: from the end.
                            Start::Timestamp(_) => {
                                by_time.get(&pt).copied().unwrap_or(high).max(low)
                            }
                        },
                    };
                    ends.insert(pt, high);
                    let (tpl, offsets) = &mut groups[i % n];
                    offsets.insert(pt, start);
                    tpl.add_partition_offset(&topic, pt, Offset::Offset(start))
                        .map_err(|e| kafka_error("assigning partitions", e))?;
                }
                if !prefetch_set {
                    // librdkafka's prefetch (64 MB by default) shared by the readers.
                    cfg.set("queued.max.messages.kbytes", (65536 / n).to_string());
                }
                let parts = groups
                    .into_iter()
                    .map(|(tpl, offsets)| {
                        let consumer: StreamConsumer = cfg
                            .create()
                            .map_err(|e| kafka_error("creating Kafka consumer", e))?;
                        consumer
                            .assign(&tpl)
                            .map_err(|e| kafka_error("assigning partitions", e))?;
                        Ok(ReaderPart { consumer, offsets })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((parts, ends))
            },
        )
        .await
        .map_err(|e| ConnectorError::Internal(e.to_string()))??;
        let upsert_key = p.upsert.then(|| primary_key(Some(&schema)));
        let avro = match (p.avro, p.registry) {
            (reader, Some((registry, _))) => Some(AvroValues::Registry { registry, reader }),
            (Some(schema), None) => Some(AvroValues::Inline(schema)),
            (None, None) => None,
        };
        let decoder = MessageDecoder::new(
            p.topic.clone(),
            p.format,
            p.header,
            p.delimiter,
            schema.clone(),
            upsert_key,
            avro,
        )?;
        let meta = client_config(&spec.options)
            .create::<BaseConsumer>()
            .map_err(|e| kafka_error("creating Kafka client", e))?;
        Ok(Box::new(KafkaSource::start(
            schema,
            p.topic,
            parts,
            Arc::new(decoder),
            p.batch_size,
            read.bounded.then_some(ends),
            meta,
        )))
    }
}
