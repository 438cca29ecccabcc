//! Kafka sink: each row becomes one JSON message, keyed by the `key` column when set. With
//! `mode = 'upsert'` it takes changes by key, for compacted topics: each message is keyed by the
//! key columns as a JSON object, and a delete is a tombstone (the key with no value). Delivery is
//! awaited at prepare, so an epoch is checkpointed only once the broker has it: at least once,
//! which upserts absorb (a change sent again sets the same value).

use std::sync::Arc;
use std::time::Duration;

use arrow::array::Array;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::{client_config, kafka_error, without_properties, SINK_OPTIONS};
use crate::changes::{is_delete, upsert_key, OP};
use crate::error::{ConnectorError, Result};
use crate::options::{OptionSpec, Options};
use crate::{PreparedCommit, Sink, SinkConnector, SinkContext, SinkSpec};

/// `connector = 'kafka'` as a sink.
pub struct KafkaSinkConnector;

#[async_trait]
impl SinkConnector for KafkaSinkConnector {
    fn name(&self) -> &'static str {
        "kafka"
    }
    fn options(&self) -> &'static [OptionSpec] {
        SINK_OPTIONS
    }
    async fn validate(&self, spec: &SinkSpec) -> Result<()> {
        let opts = Options::validate("kafka", SINK_OPTIONS, &without_properties(&spec.options))?;
        opts.get_choice("format", &["json"], "json")?;
        let upsert = opts.get_choice("mode", &["append", "upsert"], "append")? == "upsert";
        if !upsert && opts.get_list("key").len() > 1 {
            return Err(ConnectorError::InvalidOption {
                option: "key".into(),
                value: opts.get("key").unwrap_or_default().to_string(),
                reason: "an appending Kafka sink keys messages by one column; several key columns need mode = 'upsert'".into(),
            });
        }
        Ok(())
    }
    fn upsert_key(&self, spec: &SinkSpec) -> Result<Option<Vec<String>>> {
        let opts = Options::validate("kafka", SINK_OPTIONS, &without_properties(&spec.options))?;
        let upsert = opts.get_choice("mode", &["append", "upsert"], "append")? == "upsert";
        Ok(upsert.then(|| opts.get_list("key")))
    }
    async fn create(&self, spec: &SinkSpec) -> Result<Box<dyn Sink>> {
        let opts = Options::validate("kafka", SINK_OPTIONS, &without_properties(&spec.options))?;
        let mut cfg = client_config(&spec.options);
        cfg.set("message.timeout.ms", "60000");
        let producer: FutureProducer = cfg
            .create()
            .map_err(|e| kafka_error("creating Kafka producer", e))?;
        let upsert = opts.get_choice("mode", &["append", "upsert"], "append")? == "upsert";
        Ok(Box::new(KafkaSink {
            producer,
            topic: opts.require("topic")?.to_string(),
            key: opts.get("key").map(|k| k.to_ascii_lowercase()),
            key_index: None,
            upsert: upsert.then(|| opts.get_list("key")),
            upsert_columns: Vec::new(),
            pending: Vec::new(),
        }))
    }
    async fn table(&self, _spec: &SinkSpec) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(None)
    }
}

struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    key: Option<String>,
    key_index: Option<usize>,
    /// Upsert mode: the configured key columns (empty: the source's primary key).
    upsert: Option<Vec<String>>,
    /// Upsert mode: the key columns' indices in the output.
    upsert_columns: Vec<usize>,
    pending: Vec<DeliveryFuture>,
}

#[async_trait]
impl Sink for KafkaSink {
    async fn open(&mut self, ctx: &SinkContext, schema: SchemaRef) -> Result<()> {
        if let Some(configured) = &self.upsert {
            let key = upsert_key(configured, ctx, &schema)?;
            self.upsert_columns = key
                .iter()
                .map(|k| schema.index_of(k))
                .collect::<std::result::Result<_, _>>()?;
            return Ok(());
        }
        if let Some(k) = &self.key {
            self.key_index =
                Some(
                    schema
                        .index_of(k)
                        .map_err(|_| ConnectorError::InvalidOption {
                            option: "key".into(),
                            value: k.clone(),
                            reason: format!(
                                "the pipeline's output has no such column (it has: {})",
                                schema
                                    .fields()
                                    .iter()
                                    .map(|f| f.name().as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        })?,
                );
        }
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.upsert.is_some() {
            return self.write_changes(batch).await;
        }
        let mut w = arrow_json::LineDelimitedWriter::new(Vec::new());
        w.write(&batch)?;
        w.finish()?;
        let body = w.into_inner();
        let keys = match self.key_index {
            Some(i) => Some(message_keys(&batch, i)?),
            None => None,
        };
        let topic = self.topic.clone();
        for (row, line) in body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            let key = keys.as_ref().and_then(|k| k[row].clone());
            let mut record = FutureRecord::to(&topic).payload(line);
            if let Some(k) = key.as_deref() {
                record = record.key(k);
            }
            self.queue(record)?;
        }
        self.drain_when_full().await
    }

    async fn prepare(&mut self, _epoch: u64) -> Result<PreparedCommit> {
        self.drain().await?;
        Ok(PreparedCommit::default())
    }

    async fn commit(&mut self, _epoch: u64, _prepared: PreparedCommit) -> Result<()> {
        Ok(())
    }
}

impl KafkaSink {
    /// Upsert mode: a message per change, keyed by the key columns as a JSON object; a delete
    /// is a tombstone.
    async fn write_changes(&mut self, batch: RecordBatch) -> Result<()> {
        let values = match batch.schema().index_of(OP) {
            Ok(op) => {
                let mut columns: Vec<usize> = (0..batch.num_columns()).collect();
                columns.remove(op);
                batch.project(&columns)?
            }
            Err(_) => batch.clone(),
        };
        let keys = json_lines(&batch.project(&self.upsert_columns)?)?;
        let values = json_lines(&values)?;
        let topic = self.topic.clone();
        for (row, (key, value)) in keys.iter().zip(&values).enumerate() {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&topic).key(key.as_slice());
            if !is_delete(&batch, row) {
                record = record.payload(value.as_slice());
            }
            self.queue(record)?;
        }
        self.drain_when_full().await
    }

    /// Hands one message to the producer; its delivery is awaited at the next drain.
    fn queue<K, P>(&mut self, record: FutureRecord<'_, K, P>) -> Result<()>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| kafka_error(format!("queueing a message for {}", self.topic), e))?;
        self.pending.push(delivery);
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
        let _ = self.producer.flush(Duration::from_secs(0));
        for delivery in std::mem::take(&mut self.pending) {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    return Err(kafka_error(format!("delivering to {}", self.topic), e))
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
