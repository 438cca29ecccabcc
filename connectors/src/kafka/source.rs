//! Kafka source: assigns every partition of the topic (no consumer group), seeks to the
//! checkpointed offsets, and decodes message values in batches; undecodable messages become bad
//! records named by partition and offset. Declared columns named `_key`, `_headers`,
//! `_partition`, `_offset` and `_timestamp` take the message's metadata instead of its value.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::StringArray;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::metadata::{self, MessageMeta, Wanted};
use super::{
    client_config, format_of, kafka_error, raw_schema, without_properties, KafkaFormat,
    SOURCE_OPTIONS,
};
use super::{debezium, upsert};
use crate::changes::OP;
use crate::error::{ConnectorError, Result};
use crate::format::avro;
use crate::format::{decode_records, CsvDecoder, JsonDecoder, Record, RecordDecoder};
use crate::options::{OptionSpec, Options};
use crate::{
    BadRecord, PartitionLag, ReadOptions, Source, SourceBatch, SourceConnector, SourcePosition,
    SourceSpec, SplitRows,
};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a batch waits for more messages before it is handed on.
const LINGER: Duration = Duration::from_millis(100);
const LAG_REFRESH: Duration = Duration::from_secs(1);

/// `connector = 'kafka'` as a source.
pub struct KafkaSourceConnector;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct KafkaPosition {
    /// Next offset to read, per partition.
    offsets: BTreeMap<i32, i64>,
}

struct Parsed {
    topic: String,
    format: KafkaFormat,
    /// `format = 'avro'`: the schema of message values.
    avro: Option<apache_avro::Schema>,
    /// `mode = 'upsert'`: messages are the latest rows by key, tombstones delete.
    upsert: bool,
    start: Start,
    header: bool,
    delimiter: u8,
    batch_size: usize,
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
    let avro = match (format, opts.get("avro_schema")) {
        (KafkaFormat::Avro, Some(text)) => Some(avro::parse_schema(text)?),
        (KafkaFormat::Avro, None) => {
            return Err(ConnectorError::Config(
                "format = 'avro' needs avro_schema = '{\"type\": \"record\", ...}'".into(),
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
        topic: opts.require("topic")?.to_string(),
        format,
        avro,
        upsert,
        start,
        header: opts.get_bool("header", false)?,
        delimiter: opts.get_byte("delimiter", b',')?,
        batch_size: opts
            .get_u64("batch_size")?
            .unwrap_or(8192)
            .clamp(1, 1 << 20) as usize,
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
            (_, None) => {
                return Err(ConnectorError::Config(
                    "declare the columns of a kafka source (CREATE SOURCE name (col type, ...) WITH (...)), or use format = 'raw'".into(),
                ))
            }
        };
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
        let (consumer, starts, ends) = tokio::task::spawn_blocking(
            move || -> Result<(StreamConsumer, BTreeMap<i32, i64>, BTreeMap<i32, i64>)> {
                let meta: BaseConsumer = meta_cfg
                    .create()
                    .map_err(|e| kafka_error("creating Kafka client", e))?;
                let parts = partitions(&meta, &topic)?;
                let (mut starts, mut ends) = (BTreeMap::new(), BTreeMap::new());
                let by_time = match start_from {
                    Start::Timestamp(ms) => offsets_for_time(&meta, &topic, &parts, ms)?,
                    _ => BTreeMap::new(),
                };
                let mut tpl = TopicPartitionList::new();
                for &pt in &parts {
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
                    starts.insert(pt, start);
                    ends.insert(pt, high);
                    tpl.add_partition_offset(&topic, pt, Offset::Offset(start))
                        .map_err(|e| kafka_error("assigning partitions", e))?;
                }
                let consumer: StreamConsumer = cfg
                    .create()
                    .map_err(|e| kafka_error("creating Kafka consumer", e))?;
                consumer
                    .assign(&tpl)
                    .map_err(|e| kafka_error("assigning partitions", e))?;
                Ok((consumer, starts, ends))
            },
        )
        .await
        .map_err(|e| ConnectorError::Internal(e.to_string()))??;
        let payload_schema = metadata::payload_schema(&schema)?;
        let decoder: Option<Arc<dyn RecordDecoder>> = match p.format {
            KafkaFormat::Json | KafkaFormat::DebeziumJson | KafkaFormat::Avro => {
                Some(Arc::new(JsonDecoder::new(payload_schema.clone())))
            }
            KafkaFormat::Csv => Some(Arc::new(CsvDecoder::new(
                payload_schema.clone(),
                p.delimiter,
            ))),
            KafkaFormat::Raw => None,
        };
        let offsets = starts;
        let lag = Arc::new(Mutex::new(BTreeMap::new()));
        let upsert_key = p.upsert.then(|| primary_key(Some(&schema)));
        let mut wanted = Wanted::of(&schema);
        wanted.key |= p.upsert;
        Ok(Box::new(KafkaSource {
            avro: p.avro,
            wanted,
            upsert_key,
            schema,
            payload_schema,
            consumer,
            topic: p.topic,
            format: p.format,
            header: p.header,
            batch_size: p.batch_size,
            decoder,
            offsets,
            stop_at: read.bounded.then_some(ends),
            meta: Arc::new(
                client_config(&spec.options)
                    .create::<BaseConsumer>()
                    .map_err(|e| kafka_error("creating Kafka client", e))?,
            ),
            refreshing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            latest: lag,
            lag_refreshed: None,
            last_timestamps: BTreeMap::new(),
        }))
    }
}

struct KafkaSource {
    schema: SchemaRef,
    /// The columns decoded from message values (the schema minus metadata columns).
    payload_schema: SchemaRef,
    /// The metadata the columns ask for (and the key, in upsert mode).
    wanted: Wanted,
    /// `mode = 'upsert'`: the primary key the message keys hold.
    upsert_key: Option<Vec<String>>,
    /// `format = 'avro'`: the schema of message values.
    avro: Option<apache_avro::Schema>,
    consumer: StreamConsumer,
    topic: String,
    format: KafkaFormat,
    header: bool,
    batch_size: usize,
    decoder: Option<Arc<dyn RecordDecoder>>,
    /// Next offset per partition (only partitions read from so far or restored).
    offsets: BTreeMap<i32, i64>,
    /// Batch mode: the end offsets present at start.
    stop_at: Option<BTreeMap<i32, i64>>,
    /// A client for watermark queries, separate from the consumer.
    meta: Arc<BaseConsumer>,
    refreshing: Arc<std::sync::atomic::AtomicBool>,
    latest: Arc<Mutex<BTreeMap<i32, i64>>>,
    lag_refreshed: Option<Instant>,
    /// Each partition's last message's timestamp (UTC milliseconds), for the lag in seconds.
    last_timestamps: BTreeMap<i32, i64>,
}

impl KafkaSource {
    /// Moves each partition's offset past the transaction markers (and aborted messages) the
    /// consumer has stepped over: they occupy offsets but are never delivered, so the last
    /// message's offset + 1 can stay short of the end of a transactional topic for good.
    fn skip_control_records(&mut self) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        for e in positions.elements() {
            let Offset::Offset(mut next) = e.offset() else {
                continue;
            };
            if let Some(end) = self
                .stop_at
                .as_ref()
                .and_then(|ends| ends.get(&e.partition()))
            {
                // A batch run leaves what came after its end for the next run.
                next = next.min(*end);
            }
            if let Some(current) = self.offsets.get_mut(&e.partition()) {
                *current = (*current).max(next);
            }
        }
    }

    fn done(&self) -> bool {
        self.stop_at.as_ref().is_some_and(|ends| {
            ends.iter()
                .all(|(p, end)| self.offsets.get(p).copied().unwrap_or(0) >= *end)
        })
    }

    fn refresh_lag(&mut self) {
        if self
            .lag_refreshed
            .is_some_and(|t| t.elapsed() < LAG_REFRESH)
        {
            return;
        }
        self.lag_refreshed = Some(Instant::now());
        if self
            .refreshing
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let meta = self.meta.clone();
        let topic = self.topic.clone();
        let latest = self.latest.clone();
        let parts: Vec<i32> = self.offsets.keys().copied().collect();
        let refreshing = self.refreshing.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = BTreeMap::new();
            for p in parts {
                if let Ok((_, high)) = meta.fetch_watermarks(&topic, p, Duration::from_secs(5)) {
                    out.insert(p, high);
                }
            }
            *latest.lock() = out;
            refreshing.store(false, std::sync::atomic::Ordering::SeqCst);
        });
    }

    fn lag(&self) -> Vec<PartitionLag> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        self.latest
            .lock()
            .iter()
            .map(|(p, high)| {
                let position = self.offsets.get(p).copied().unwrap_or(0);
                PartitionLag {
                    partition: p.to_string(),
                    position,
                    latest: *high,
                    confirmed: None,
                    lsn: false,
                    lag_seconds: PartitionLag::seconds_behind(
                        position,
                        *high,
                        self.last_timestamps.get(p).copied(),
                        now_ms,
                    ),
                }
            })
            .collect()
    }

    /// Decodes fetched messages. An `Err` fails the epoch: the offsets have moved past them.
    fn decode(
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
            (KafkaFormat::Avro, _, Some(schema)) => {
                self.convert_values(payloads, |_, v| avro::read_row(schema, v).map(Some))
            }
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
            .filter(|m| {
                failed.is_empty()
                    || !failed
                        .contains(format!("{}/{}/{}", self.topic, m.partition, m.offset).as_str())
            })
            .collect();
        Ok((metadata::assemble(&self.schema, &values, &metas)?, bad))
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
                        position: format!("{}/{}/{}", self.topic, m.partition, m.offset),
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
                    let (p, o) = (m.partition, m.offset);
                    let mut v: &[u8] = v;
                    if self.header && self.format == KafkaFormat::Csv {
                        if let Some(nl) = v.iter().position(|b| *b == b'\n') {
                            v = &v[nl + 1..];
                        }
                    }
                    let v = trim_newlines(v);
                    if v.contains(&b'\n') && self.format == KafkaFormat::Json {
                        // A pretty-printed object: collapse its newlines, JSON does not need them.
                        let start = buf.len();
                        buf.extend(v.iter().map(|b| {
                            if *b == b'\n' || *b == b'\r' {
                                b' '
                            } else {
                                *b
                            }
                        }));
                        let end = buf.len();
                        buf.push(b'\n');
                        records.push(Record {
                            start,
                            end,
                            next: buf.len(),
                            line: i as u64,
                        });
                    } else if v.iter().all(|b| b.is_ascii_whitespace()) {
                        bad.push(BadRecord {
                            position: format!("{}/{p}/{o}", self.topic),
                            message: "empty message".into(),
                            raw: String::new(),
                        });
                    } else {
                        let start = buf.len();
                        buf.extend_from_slice(v);
                        let end = buf.len();
                        buf.push(b'\n');
                        records.push(Record {
                            start,
                            end,
                            next: buf.len(),
                            line: i as u64,
                        });
                    }
                }
                let topic = &self.topic;
                let (batch, more_bad) = decode_records(decoder.as_ref(), &buf, &records, &|r| {
                    let m = &payloads[r.line as usize].0;
                    format!("{topic}/{}/{}", m.partition, m.offset)
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

#[async_trait]
impl Source for KafkaSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        self.refresh_lag();
        if self.done() {
            return Ok(None);
        }
        let mut payloads: Vec<(MessageMeta, Vec<u8>)> = Vec::new();
        let deadline = tokio::time::Instant::now() + LINGER;
        while payloads.len() < self.batch_size {
            let msg = tokio::select! {
                m = self.consumer.recv() => m,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            let (meta, payload) = {
                let msg =
                    msg.map_err(|e| kafka_error(format!("reading topic {}", self.topic), e))?;
                if let Some(ms) = msg.timestamp().to_millis() {
                    self.last_timestamps.insert(msg.partition(), ms);
                }
                (
                    self.wanted.read(&msg),
                    msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                )
            };
            let (p, o) = (meta.partition, meta.offset);
            if let Some(ends) = &self.stop_at {
                if o >= ends.get(&p).copied().unwrap_or(0) {
                    // Past what existed at start: a batch run leaves it for the next run.
                    continue;
                }
            }
            payloads.push((meta, payload));
            self.offsets.insert(p, o + 1);
            if self.done() {
                break;
            }
        }
        self.skip_control_records();
        // Rows grouped by partition, every partition listed: the event time of each is
        // followed apart.
        let bytes = payloads.iter().map(|p| p.1.len() as u64).sum();
        let mut by_partition: BTreeMap<i32, Vec<(MessageMeta, Vec<u8>)>> = BTreeMap::new();
        for payload in payloads {
            by_partition
                .entry(payload.0.partition)
                .or_default()
                .push(payload);
        }
        let mut batches = Vec::with_capacity(by_partition.len());
        let mut bad_records = Vec::new();
        let mut splits = Vec::with_capacity(self.offsets.len());
        for p in self.offsets.keys() {
            let (batch, bad) = match by_partition.remove(p) {
                Some(payloads) => self.decode(payloads)?,
                None => (RecordBatch::new_empty(self.schema.clone()), Vec::new()),
            };
            splits.push(SplitRows {
                split: p.to_string(),
                rows: batch.num_rows(),
            });
            batches.push(batch);
            bad_records.extend(bad);
        }
        let batch = arrow::compute::concat_batches(&self.schema, &batches)
            .map_err(|e| ConnectorError::Internal(format!("joining partitions' rows: {e}")))?;
        // A position that cannot be stored fails the epoch: a null one means "from the start".
        let position = SourcePosition(
            serde_json::to_value(KafkaPosition {
                offsets: self.offsets.clone(),
            })
            .map_err(|e| ConnectorError::Internal(format!("encoding the Kafka position: {e}")))?,
        );
        Ok(Some(SourceBatch {
            batch,
            bad_records,
            position,
            lag: self.lag(),
            phase: None,
            transient_error: None,
            splits,
            loading: false,
            bytes,
        }))
    }
}
