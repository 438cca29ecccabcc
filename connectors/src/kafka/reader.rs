//! A running read of a Kafka topic: the partitions are split across reader tasks, each with a
//! consumer assigned to its partitions (no consumer group) that fetches and decodes batches in
//! parallel with the others; the source hands their batches on in the order they come, and its
//! position is every partition's next offset after what it has handed on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::Offset;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::decode::MessageDecoder;
use super::kafka_error;
use super::metadata::MessageMeta;
use crate::error::{ConnectorError, Result};
use crate::{BadRecord, PartitionLag, Source, SourceBatch, SourcePosition, SplitRows};

/// How long a batch waits for more messages before it is handed on.
const LINGER: Duration = Duration::from_millis(100);
const LAG_REFRESH: Duration = Duration::from_secs(1);

/// Where a Kafka source is: the next offset to read, per partition.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct KafkaPosition {
    pub offsets: BTreeMap<i32, i64>,
}

/// One reader task's partitions and consumer.
pub(super) struct ReaderPart {
    pub consumer: StreamConsumer,
    /// Its partitions' next offsets.
    pub offsets: BTreeMap<i32, i64>,
}

/// What a reader task hands the source: one fetch, decoded.
struct Fetched {
    /// Rows per partition of the task's.
    rows: BTreeMap<i32, RecordBatch>,
    bad: Vec<BadRecord>,
    /// The task's partitions' next offsets after these rows.
    offsets: BTreeMap<i32, i64>,
    /// Each partition's last message's timestamp (UTC milliseconds).
    timestamps: BTreeMap<i32, i64>,
    bytes: u64,
    /// Batch mode: the task has read its partitions to their ends.
    done: bool,
}

pub(super) struct KafkaSource {
    schema: SchemaRef,
    topic: String,
    fetched: mpsc::Receiver<Result<Fetched>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Reader tasks still reading.
    reading: usize,
    /// Next offset per partition, after the rows handed on.
    offsets: BTreeMap<i32, i64>,
    /// A client for watermark queries, separate from the consumers.
    meta: Arc<BaseConsumer>,
    refreshing: Arc<std::sync::atomic::AtomicBool>,
    latest: Arc<Mutex<BTreeMap<i32, i64>>>,
    lag_refreshed: Option<Instant>,
    /// Each partition's last message's timestamp (UTC milliseconds), for the lag in seconds.
    last_timestamps: BTreeMap<i32, i64>,
}

impl KafkaSource {
    /// Starts a reader task per part; `stop_at` (batch mode) holds the end offsets present at
    /// start.
    pub fn start(
        schema: SchemaRef,
        topic: String,
        parts: Vec<ReaderPart>,
        decoder: Arc<MessageDecoder>,
        batch_size: usize,
        stop_at: Option<BTreeMap<i32, i64>>,
        meta: BaseConsumer,
    ) -> KafkaSource {
        let offsets: BTreeMap<i32, i64> = parts
            .iter()
            .flat_map(|p| p.offsets.iter().map(|(k, v)| (*k, *v)))
            .collect();
        // One fetch in flight per task beside the one being handed on: bounded memory.
        let (tx, fetched) = mpsc::channel(parts.len().max(1));
        let reading = parts.len();
        let tasks = parts
            .into_iter()
            .map(|part| {
                let reader = PartReader {
                    consumer: part.consumer,
                    offsets: part.offsets,
                    topic: topic.clone(),
                    decoder: decoder.clone(),
                    batch_size,
                    stop_at: stop_at.clone(),
                };
                tokio::spawn(reader.run(tx.clone()))
            })
            .collect();
        KafkaSource {
            schema,
            topic,
            fetched,
            tasks,
            reading,
            offsets,
            meta: Arc::new(meta),
            refreshing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            latest: Arc::new(Mutex::new(BTreeMap::new())),
            lag_refreshed: None,
            last_timestamps: BTreeMap::new(),
        }
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
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[async_trait]
impl Source for KafkaSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        self.refresh_lag();
        if self.reading == 0 {
            return Ok(None);
        }
        let Some(fetched) = self.fetched.recv().await else {
            return Err(ConnectorError::Internal(
                "the Kafka reader tasks ended without saying so".into(),
            ));
        };
        let mut fetched = fetched?;
        if fetched.done {
            self.reading -= 1;
        }
        self.offsets.extend(&fetched.offsets);
        self.last_timestamps.extend(&fetched.timestamps);
        // Rows grouped by partition, every partition listed: the event time of each is
        // followed apart.
        let mut batches = Vec::with_capacity(fetched.rows.len());
        let mut splits = Vec::with_capacity(self.offsets.len());
        for p in self.offsets.keys() {
            let rows = fetched.rows.remove(p);
            splits.push(SplitRows {
                split: p.to_string(),
                rows: rows.as_ref().map_or(0, RecordBatch::num_rows),
            });
            batches.extend(rows);
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
            bad_records: fetched.bad,
            position,
            lag: self.lag(),
            phase: None,
            transient_error: None,
            splits,
            loading: false,
            bytes: fetched.bytes,
        }))
    }
}

/// One reader task: fetches its partitions' messages and decodes them.
struct PartReader {
    consumer: StreamConsumer,
    offsets: BTreeMap<i32, i64>,
    topic: String,
    decoder: Arc<MessageDecoder>,
    batch_size: usize,
    stop_at: Option<BTreeMap<i32, i64>>,
}

impl PartReader {
    async fn run(mut self, out: mpsc::Sender<Result<Fetched>>) {
        loop {
            let fetched = self.fetch().await;
            let last = fetched.as_ref().map_or(true, |f| f.done);
            if out.send(fetched).await.is_err() || last {
                return;
            }
        }
    }

    fn done(&self) -> bool {
        self.stop_at.as_ref().is_some_and(|ends| {
            self.offsets
                .iter()
                .all(|(p, o)| *o >= ends.get(p).copied().unwrap_or(0))
        })
    }

    /// Up to a batch of messages, or what came within the linger time, decoded.
    async fn fetch(&mut self) -> Result<Fetched> {
        let mut payloads: Vec<(MessageMeta, Vec<u8>)> = Vec::new();
        let mut timestamps = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + LINGER;
        while payloads.len() < self.batch_size && !self.done() {
            let msg = tokio::select! {
                m = self.consumer.recv() => m,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            let (meta, payload) = {
                let msg =
                    msg.map_err(|e| kafka_error(format!("reading topic {}", self.topic), e))?;
                if let Some(ms) = msg.timestamp().to_millis() {
                    timestamps.insert(msg.partition(), ms);
                }
                (
                    self.decoder.wanted.read(&msg),
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
        }
        self.skip_control_records();
        self.decoder.fetch_schemas(&payloads).await?;
        let bytes = payloads.iter().map(|p| p.1.len() as u64).sum();
        let mut by_partition: BTreeMap<i32, Vec<(MessageMeta, Vec<u8>)>> = BTreeMap::new();
        for payload in payloads {
            by_partition
                .entry(payload.0.partition)
                .or_default()
                .push(payload);
        }
        let mut rows = BTreeMap::new();
        let mut bad = Vec::new();
        for (p, payloads) in by_partition {
            let (batch, more_bad) = self.decoder.decode(payloads)?;
            rows.insert(p, batch);
            bad.extend(more_bad);
        }
        Ok(Fetched {
            rows,
            bad,
            offsets: self.offsets.clone(),
            timestamps,
            bytes,
            done: self.done(),
        })
    }

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
}
