//! The Kafka sink's exactly-once protocol: one Kafka transaction per epoch, with the epoch's
//! number committed as a consumer-group offset inside the same transaction, so a restarted
//! pipeline can ask the broker whether an epoch it checkpointed became visible.
//!
//! librdkafka cannot resume another process's transaction (Flink's Java client does it by
//! reflection), so a transaction a crash left open is aborted when the next run initialises the
//! same `transactional.id`. The sink stages each epoch's rows before its checkpoint; when the
//! broker's marker says a checkpointed epoch never committed, the rows are sent again in a new
//! transaction. Readers with `isolation.level = read_committed` see every row once.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::kafka_error;
use crate::error::{ConnectorError, Result};

/// How long one transactional call may take before the epoch fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A transactional producer's state, and the consumer group its epoch markers go to.
pub(super) struct Transactions {
    producer: FutureProducer,
    group: Arc<BaseConsumer>,
    /// Where the marker is committed: the sink's topic, partition 0.
    topic: String,
    /// Whether a transaction is open.
    open: bool,
}

/// The `transactional.id` and marker group of a pipeline's sink: stable across restarts, so
/// a new run fences the old one; new after DROP and CREATE.
pub(super) fn transactional_id(writer_id: &str) -> String {
    format!("tributary-{writer_id}")
}

impl Transactions {
    /// Initialises the producer's transactions: a transaction left open by an earlier run of
    /// the same pipeline is aborted (or, if its commit had begun, completed), and that run's
    /// producer is fenced.
    pub async fn init(
        producer: FutureProducer,
        group_config: ClientConfig,
        writer_id: &str,
        topic: &str,
    ) -> Result<Self> {
        let mut cfg = group_config;
        cfg.set("group.id", transactional_id(writer_id))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        let group: BaseConsumer = cfg
            .create()
            .map_err(|e| kafka_error("creating the Kafka sink's marker client", e))?;
        let p = producer.clone();
        blocking(move || p.init_transactions(CALL_TIMEOUT))
            .await
            .map_err(|e| {
                let hint = match e.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::UnsupportedVersion)
                    | Some(RDKafkaErrorCode::TransactionalIdAuthorizationFailed) => {
                        " (delivery = 'at_least_once' writes without transactions)"
                    }
                    _ => "",
                };
                ConnectorError::io(
                    format!("starting Kafka transactions for topic {topic}{hint}"),
                    e,
                )
            })?;
        Ok(Transactions {
            producer,
            group: Arc::new(group),
            topic: topic.to_string(),
            open: false,
        })
    }

    /// Opens a transaction unless one is open.
    pub fn begin(&mut self) -> Result<()> {
        if !self.open {
            self.producer
                .begin_transaction()
                .map_err(|e| kafka_error("beginning a Kafka transaction", e))?;
            self.open = true;
        }
        Ok(())
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Adds the epoch's marker to the open transaction: it becomes visible with the rows.
    pub async fn mark(&mut self, epoch: u64) -> Result<()> {
        self.begin()?;
        let metadata = self.group.group_metadata().ok_or_else(|| {
            ConnectorError::Internal("the marker client has no group metadata".into())
        })?;
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&self.topic, 0, Offset::Offset(epoch as i64))
            .map_err(|e| kafka_error("naming the epoch marker", e))?;
        let p = self.producer.clone();
        blocking(move || p.send_offsets_to_transaction(&offsets, &metadata, CALL_TIMEOUT))
            .await
            .map_err(|e| kafka_error(format!("adding epoch {epoch}'s marker"), e))
    }

    /// Commits the open transaction.
    pub async fn commit(&mut self) -> std::result::Result<(), KafkaError> {
        let p = self.producer.clone();
        let result = blocking(move || p.commit_transaction(CALL_TIMEOUT)).await;
        if result.is_ok() {
            self.open = false;
        }
        result
    }

    /// Aborts the open transaction, if any.
    pub async fn abort(&mut self) -> Result<()> {
        if !self.open {
            return Ok(());
        }
        let p = self.producer.clone();
        blocking(move || p.abort_transaction(CALL_TIMEOUT))
            .await
            .map_err(|e| kafka_error("aborting a Kafka transaction", e))?;
        self.open = false;
        Ok(())
    }

    /// The last epoch whose transaction committed, from the marker (`None`: none yet).
    pub async fn committed_epoch(&self) -> Result<Option<u64>> {
        let group = self.group.clone();
        let topic = self.topic.clone();
        let tpl = blocking(move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, 0);
            group.committed_offsets(tpl, CALL_TIMEOUT)
        })
        .await
        .map_err(|e| kafka_error("reading the Kafka sink's last committed epoch", e))?;
        Ok(tpl.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o as u64),
            _ => None,
        }))
    }
}

/// Whether a failed commit leaves the producer usable once the transaction is aborted (the
/// epoch can then be sent again); a fenced or fatal producer cannot go on.
pub(super) fn abortable(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => !t.is_fatal() && t.txn_requires_abort(),
        _ => false,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, KafkaError> + Send + 'static,
) -> std::result::Result<T, KafkaError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}
