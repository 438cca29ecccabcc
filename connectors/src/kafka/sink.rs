//! Kafka sink: each row becomes one JSON message, keyed by the `key` column when set. Delivery is
//! awaited at prepare, so an epoch is checkpointed only once the broker has it: at least once.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::Array;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::{client_config, kafka_error, without_properties, SINK_OPTIONS};
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
        Ok(())
    }
    async fn create(&self, spec: &SinkSpec) -> Result<Box<dyn Sink>> {
        let opts = Options::validate("kafka", SINK_OPTIONS, &without_properties(&spec.options))?;
        let mut cfg = client_config(&spec.options);
        cfg.set("message.timeout.ms", "60000");
        let producer: FutureProducer = cfg
            .create()
            .map_err(|e| kafka_error("creating Kafka producer", e))?;
        Ok(Box::new(KafkaSink {
            producer,
            topic: opts.require("topic")?.to_string(),
            key: opts.get("key").map(|k| k.to_ascii_lowercase()),
            key_index: None,
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
    pending: Vec<DeliveryFuture>,
}

#[async_trait]
impl Sink for KafkaSink {
    async fn open(&mut self, _ctx: &SinkContext, schema: SchemaRef) -> Result<()> {
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
        let mut w = arrow_json::LineDelimitedWriter::new(Vec::new());
        w.write(&batch)?;
        w.finish()?;
        let body = w.into_inner();
        let keys = match self.key_index {
            Some(i) => Some(message_keys(&batch, i)?),
            None => None,
        };
        for (row, line) in body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            let key = keys.as_ref().and_then(|k| k[row].clone());
            let mut record = FutureRecord::to(&self.topic).payload(line);
            if let Some(k) = key.as_deref() {
                record = record.key(k);
            }
            let delivery = self.producer.send_result(record).map_err(|(e, _)| {
                kafka_error(format!("queueing a message for {}", self.topic), e)
            })?;
            self.pending.push(delivery);
        }
        if self.pending.len() > 100_000 {
            self.drain().await?;
        }
        Ok(())
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
