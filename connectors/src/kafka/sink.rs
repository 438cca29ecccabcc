//! Kafka sink: each row becomes one JSON message, keyed by the `key` columns when set (one
//! column's value as text, several as a JSON object). With `mode = 'upsert'` it takes changes by
//! key, for compacted topics: each message is keyed by the key columns as a JSON object, and a
//! delete is a tombstone (the key with no value).
//!
//! With `format = 'avro'` values are Avro datums; with a schema registry, the schema is
//! registered under the topic's value subject when the pipeline starts, and each value is in
//! the registry's wire format, naming it.
//!
//! Delivery is exactly once by default: each epoch is one Kafka transaction, staged before the
//! checkpoint and committed after it (see `transactions`). With `delivery = 'at_least_once'`
//! messages are sent without transactions and delivery is awaited at prepare, so a crash between
//! delivery and checkpoint sends that epoch again.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::Array;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::transactions::{abortable, transactional_id, Transactions};
use super::{client_config, kafka_error, schema_registry, without_properties, SINK_OPTIONS};
use crate::changes::{is_delete, upsert_key, EpochStage, OP};
use crate::error::{ConnectorError, Result};
use crate::format::schema_registry::{self as wire, SchemaRegistry};
use crate::options::{OptionSpec, Options};
use crate::{PreparedCommit, Sink, SinkConnector, SinkContext, SinkSpec};

/// `connector = 'kafka'` as a sink.
pub struct KafkaSinkConnector;

/// The sink's options, checked.
struct KafkaSinkOptions {
    topic: String,
    /// The key columns (upsert: empty means the source's primary key).
    key: Vec<String>,
    upsert: bool,
    exactly_once: bool,
    /// `format = 'avro'`: values as Avro datums, of the given schema or one derived at open.
    avro: bool,
    avro_schema: Option<apache_avro::Schema>,
    /// `schema_registry_url`: the registry the schema is registered in, and its subject.
    registry: Option<(Arc<SchemaRegistry>, String)>,
}

impl KafkaSinkOptions {
    fn parse(spec: &SinkSpec) -> Result<(Self, Options)> {
        let opts = Options::validate("kafka", SINK_OPTIONS, &without_properties(&spec.options))?;
        let avro = opts.get_choice("format", &["json", "avro"], "json")? == "avro";
        let avro_schema = match (avro, opts.get("avro_schema")) {
            (true, Some(text)) => Some(crate::format::avro::parse_schema(text)?),
            (false, Some(_)) => {
                return Err(ConnectorError::Config(
                    "avro_schema is for format = 'avro'".into(),
                ))
            }
            _ => None,
        };
        opts.get_choice(
            "compression",
            &["none", "gzip", "snappy", "lz4", "zstd"],
            "none",
        )?;
        opts.get_u64("linger_ms")?;
        let topic = opts.require("topic")?.to_string();
        let registry = schema_registry(&opts, avro, &topic)?;
        let parsed = KafkaSinkOptions {
            topic,
            key: opts
                .get_list("key")
                .into_iter()
                .map(|k| k.to_ascii_lowercase())
                .collect(),
            upsert: opts.get_choice("mode", &["append", "upsert"], "append")? == "upsert",
            exactly_once: opts.get_choice(
                "delivery",
                &["exactly_once", "at_least_once"],
                "exactly_once",
            )? == "exactly_once",
            avro,
            avro_schema,
            registry,
        };
        Ok((parsed, opts))
    }
}

#[async_trait]
impl SinkConnector for KafkaSinkConnector {
    fn name(&self) -> &'static str {
        "kafka"
    }
    fn options(&self) -> &'static [OptionSpec] {
        SINK_OPTIONS
    }
    async fn validate(&self, spec: &SinkSpec) -> Result<()> {
        let (opts, _) = KafkaSinkOptions::parse(spec)?;
        if let Some((registry, subject)) = &opts.registry {
            // Reach the registry now, so a wrong address fails at CREATE time; the subject
            // may not exist yet (the schema is registered when the pipeline starts).
            match registry.latest(subject).await {
                Ok(_) | Err(ConnectorError::Config(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    fn upsert_key(&self, spec: &SinkSpec) -> Result<Option<Vec<String>>> {
        let (opts, _) = KafkaSinkOptions::parse(spec)?;
        Ok(opts.upsert.then_some(opts.key))
    }
    async fn create(&self, spec: &SinkSpec) -> Result<Box<dyn Sink>> {
        let (opts, raw) = KafkaSinkOptions::parse(spec)?;
        let mut cfg = client_config(&spec.options);
        // What the options say, unless a `properties.*` option says otherwise.
        let mut default = |key: &str, value: String| {
            if !spec.options.contains_key(&format!("properties.{key}")) {
                cfg.set(key, value);
            }
        };
        default("message.timeout.ms", "60000".into());
        if let Some(c) = raw.get("compression") {
            default("compression.codec", c.to_ascii_lowercase());
        }
        if let Some(ms) = raw.get_u64("linger_ms")? {
            default("linger.ms", ms.to_string());
        }
        if opts.exactly_once {
            // Long enough for a slow checkpoint; a run that dies with a transaction open holds
            // read_committed readers back until this passes or the next run aborts it.
            default("transaction.timeout.ms", "300000".into());
        }
        Ok(Box::new(KafkaSink {
            config: cfg,
            producer: None,
            opts,
            key_columns: Vec::new(),
            pending: Vec::new(),
            exactly_once: None,
            last_commit: None,
            schema_id: None,
        }))
    }
    async fn table(&self, _spec: &SinkSpec) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(None)
    }
}

struct KafkaSink {
    config: rdkafka::ClientConfig,
    producer: Option<FutureProducer>,
    opts: KafkaSinkOptions,
    /// The key columns' indices in the output.
    key_columns: Vec<usize>,
    pending: Vec<DeliveryFuture>,
    exactly_once: Option<ExactlyOnce>,
    /// What the last commit made visible, for `tributary.commits`.
    last_commit: Option<String>,
    /// With a schema registry: the id of the value schema there, which every value names.
    schema_id: Option<u32>,
}

/// Exactly-once delivery: the epoch's transaction and its staged rows.
struct ExactlyOnce {
    transactions: Transactions,
    stage: EpochStage,
    /// The epoch prepared in this run whose transaction is open, awaiting its commit.
    prepared: Option<u64>,
}

#[async_trait]
impl Sink for KafkaSink {
    async fn open(&mut self, ctx: &SinkContext, schema: SchemaRef) -> Result<()> {
        let key = if self.opts.upsert {
            upsert_key(&self.opts.key, ctx, &schema)?
        } else {
            self.opts.key.clone()
        };
        self.key_columns = key
            .iter()
            .map(|k| {
                schema
                    .index_of(k)
                    .map_err(|_| ConnectorError::no_such_column("key", k, &schema))
            })
            .collect::<Result<_>>()?;
        if self.opts.avro && self.opts.avro_schema.is_none() {
            let columns: Vec<_> = schema
                .fields()
                .iter()
                .filter(|f| !(self.opts.upsert && f.name() == OP))
                .cloned()
                .collect();
            let derived = crate::format::avro::schema_for(&arrow::datatypes::Schema::new(columns))?;
            tracing::info!(schema = %derived.canonical_form(), "Kafka sink writes Avro values of this schema.");
            self.opts.avro_schema = Some(derived);
        }
        if let (Some((registry, subject)), Some(schema)) =
            (&self.opts.registry, &self.opts.avro_schema)
        {
            let id = registry.register(subject, schema).await?;
            tracing::info!(subject, id, "Kafka sink's Avro schema registered");
            self.schema_id = Some(id);
        }
        let mut cfg = self.config.clone();
        if self.opts.exactly_once {
            cfg.set("transactional.id", transactional_id(&ctx.writer_id));
        }
        let producer: FutureProducer = cfg
            .create()
            .map_err(|e| kafka_error("creating Kafka producer", e))?;
        if self.opts.exactly_once {
            let transactions = Transactions::init(
                producer.clone(),
                self.config.clone(),
                &ctx.writer_id,
                &self.opts.topic,
            )
            .await?;
            self.exactly_once = Some(ExactlyOnce {
                transactions,
                stage: EpochStage::open(ctx, schema, Vec::new())?,
                prepared: None,
            });
        }
        self.producer = Some(producer);
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if let Some(eo) = self.exactly_once.as_mut() {
            eo.transactions.begin()?;
            eo.stage.push(batch.clone())?;
        }
        let sent = match self.send(&batch) {
            Ok(()) => self.drain_when_full().await,
            Err(e) => Err(e),
        };
        self.abort_on_failure(sent).await
    }

    async fn prepare(&mut self, epoch: u64) -> Result<PreparedCommit> {
        let drained = self.drain().await;
        self.abort_on_failure(drained).await?;
        let Some(eo) = self.exactly_once.as_mut() else {
            return Ok(PreparedCommit::default());
        };
        let prepared = eo.stage.prepare(epoch)?;
        if EpochStage::staged_file(&prepared).is_some() {
            eo.transactions.mark(epoch).await?;
            eo.prepared = Some(epoch);
        }
        Ok(prepared)
    }

    async fn commit(&mut self, epoch: u64, prepared: PreparedCommit) -> Result<()> {
        self.last_commit = None;
        let Some(eo) = self.exactly_once.as_mut() else {
            return Ok(());
        };
        let Some(file) = EpochStage::staged_file(&prepared) else {
            return Ok(()); // an epoch without rows: no transaction
        };
        let rows = prepared.0.get("rows").and_then(|r| r.as_u64()).unwrap_or(0);
        if eo.prepared.take() == Some(epoch) && eo.transactions.is_open() {
            match eo.transactions.commit().await {
                Ok(()) => {
                    eo.stage.done(epoch);
                    self.last_commit = Some(format!("Kafka transaction of {rows} messages"));
                    return Ok(());
                }
                Err(e) if abortable(&e) => {
                    tracing::warn!(epoch, error = %e, "Kafka transaction failed to commit; sending the epoch again.");
                    eo.transactions.abort().await?;
                }
                Err(e) => {
                    return Err(kafka_error(
                        format!("committing epoch {epoch}'s Kafka transaction"),
                        e,
                    ))
                }
            }
        } else if eo
            .transactions
            .committed_epoch()
            .await?
            .is_some_and(|done| done >= epoch)
        {
            // Recovery: the transaction committed before the crash.
            eo.stage.done(epoch);
            return Ok(());
        }
        // Recovery, or a commit the broker refused: the epoch again, from its staged rows.
        self.resend(epoch, &file).await?;
        self.last_commit = Some(format!("Kafka transaction of {rows} messages (sent again)"));
        Ok(())
    }

    fn last_commit(&self) -> Option<String> {
        self.last_commit.clone()
    }
}

impl KafkaSink {
    fn producer(&self) -> Result<&FutureProducer> {
        self.producer
            .as_ref()
            .ok_or_else(|| ConnectorError::Internal("kafka sink used before open".into()))
    }

    /// Passes `result` on; when it failed, first aborts the open transaction, so the failed
    /// epoch's messages never become visible (and read_committed readers are not held back
    /// until the transaction times out).
    async fn abort_on_failure(&mut self, result: Result<()>) -> Result<()> {
        if result.is_err() {
            if let Some(eo) = self.exactly_once.as_mut() {
                if let Err(e) = eo.transactions.abort().await {
                    tracing::warn!(error = %e, "Aborting the failed epoch's Kafka transaction failed; the next run aborts it.");
                }
            }
        }
        result
    }

    /// Sends a staged epoch again in a transaction of its own, with its marker.
    async fn resend(&mut self, epoch: u64, file: &str) -> Result<()> {
        let Some(eo) = self.exactly_once.as_mut() else {
            return Ok(());
        };
        let batches = eo.stage.read(file)?;
        eo.transactions.begin()?;
        for batch in &batches {
            self.send(batch)?;
        }
        let drained = self.drain().await;
        self.abort_on_failure(drained).await?;
        let Some(eo) = self.exactly_once.as_mut() else {
            return Ok(());
        };
        eo.transactions.mark(epoch).await?;
        eo.transactions.commit().await.map_err(|e| {
            kafka_error(
                format!("committing epoch {epoch}'s Kafka transaction again"),
                e,
            )
        })?;
        eo.stage.done(epoch);
        tracing::info!(
            epoch,
            "Kafka epoch sent again after its transaction was lost."
        );
        Ok(())
    }

    /// Queues a message per row: the row as JSON, keyed by the key columns; in upsert mode
    /// without `_op` in the value and a delete as a tombstone.
    fn send(&mut self, batch: &RecordBatch) -> Result<()> {
        let keys = match self.key_columns.as_slice() {
            [] => None,
            [one] if !self.opts.upsert => Some(
                message_keys(batch, *one)?
                    .into_iter()
                    .map(|k| k.map(String::into_bytes))
                    .collect::<Vec<_>>(),
            ),
            columns => Some(
                json_lines(&batch.project(columns)?)?
                    .into_iter()
                    .map(Some)
                    .collect(),
            ),
        };
        let values = match batch.schema().index_of(OP) {
            Ok(op) if self.opts.upsert => {
                let mut columns: Vec<usize> = (0..batch.num_columns()).collect();
                columns.remove(op);
                batch.project(&columns)?
            }
            _ => batch.clone(),
        };
        let mut values = json_lines(&values)?;
        if let Some(schema) = &self.opts.avro_schema {
            for v in &mut values {
                *v = crate::format::avro::write_row(schema, v)?;
                if let Some(id) = self.schema_id {
                    *v = wire::frame(id, v);
                }
            }
        }
        let topic = self.opts.topic.clone();
        for (row, value) in values.iter().enumerate() {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic);
            if let Some(k) = keys.as_ref().and_then(|k| k[row].as_deref()) {
                record = record.key(k);
            }
            if !(self.opts.upsert && is_delete(batch, row)) {
                record = record.payload(value.as_slice());
            }
            let delivery = self
                .producer()?
                .send_result(record)
                .map_err(|(e, _)| kafka_error(format!("queueing a message for {topic}"), e))?;
            self.pending.push(delivery);
        }
        Ok(())
    }

    /// Awaits the queued deliveries once there are many.
    async fn drain_when_full(&mut self) -> Result<()> {
        if self.pending.len() > 100_000 {
            self.drain().await?;
        }
        Ok(())
    }

    async fn drain(&mut self) -> Result<()> {
        if let Some(p) = &self.producer {
            let _ = p.flush(Duration::from_secs(0));
        }
        for delivery in std::mem::take(&mut self.pending) {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    return Err(kafka_error(format!("delivering to {}", self.opts.topic), e))
                }
                Err(_) => return Err(ConnectorError::Internal("delivery cancelled".into())),
            }
        }
        Ok(())
    }
}

/// Each row of `batch` as a JSON object.
fn json_lines(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let mut w = arrow_json::LineDelimitedWriter::new(Vec::new());
    w.write(batch)?;
    w.finish()?;
    let body = w.into_inner();
    let lines: Vec<Vec<u8>> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if lines.len() != batch.num_rows() {
        return Err(ConnectorError::Internal(format!(
            "{} JSON lines for {} rows",
            lines.len(),
            batch.num_rows()
        )));
    }
    Ok(lines)
}

/// The key column of `batch` as message keys. A column that cannot be turned into text fails the
/// epoch: sending the messages without keys would silently change how they are partitioned and
/// compacted.
fn message_keys(batch: &RecordBatch, i: usize) -> Result<Vec<Option<String>>> {
    let name = batch.schema().field(i).name().clone();
    let col =
        arrow::compute::cast(batch.column(i), &arrow::datatypes::DataType::Utf8).map_err(|e| {
            ConnectorError::Config(format!(
                "the key column \"{name}\" of the Kafka sink cannot be turned into text: {e}"
            ))
        })?;
    let col = col
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .ok_or_else(|| {
            ConnectorError::Internal(format!("key column \"{name}\" cast to text is not text"))
        })?;
    Ok((0..batch.num_rows())
        .map(|r| col.is_valid(r).then(|| col.value(r).to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, StructArray};
    use arrow::datatypes::{DataType, Field};
    use arrow::record_batch::RecordBatch;

    use super::message_keys;

    #[test]
    fn keys_are_text_or_the_epoch_fails() {
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![Some(7), None]));
        let batch = RecordBatch::try_from_iter([("id", ids.clone())]).unwrap();
        assert_eq!(
            message_keys(&batch, 0).unwrap(),
            vec![Some("7".to_string()), None]
        );
        let nested: ArrayRef = Arc::new(StructArray::from(vec![(
            Arc::new(Field::new("a", DataType::Int64, true)),
            ids,
        )]));
        let batch = RecordBatch::try_from_iter([("k", nested)]).unwrap();
        let e = message_keys(&batch, 0).unwrap_err().to_string();
        assert!(e.contains("\"k\"") && e.contains("text"), "{e}");
    }
}
