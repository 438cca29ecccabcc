//! Tributary's connectors: every source and sink behind one [`Source`] and one [`Sink`] trait,
//! and the [`registry`] that maps `connector = '...'` to them.
//!
//! This crate is the I/O edge. It must not know about the catalog, the SQL front end or the
//! pgwire server: the engine in `src/` uses connectors only through the traits below.
//!
//! Call order for a source: [`SourceConnector::validate`] at `CREATE SOURCE` (checks options,
//! resolves the schema), then per pipeline run [`SourceConnector::open`] with the last
//! checkpointed [`SourcePosition`], then [`Source::next_batch`] until it returns `None`
//! (bounded input exhausted) or the pipeline stops.
//!
//! Call order for a sink, per epoch N: [`Sink::write`] any number of times, [`Sink::prepare`]
//! (data durable, not yet visible), the engine stores the returned [`PreparedCommit`] in
//! checkpoint N, then [`Sink::commit`] makes epoch N visible. After a crash the engine calls
//! `commit` again with the same prepared commit; sinks must recognise an epoch they already
//! made visible and do nothing.
#![warn(missing_docs)]
// ParquetObjectReader is deprecated upstream in favour of a hand-written AsyncFileReader; it still works.
#![allow(deprecated)]

pub mod blackhole;
pub mod changes;
pub mod delta;
pub mod error;
pub mod file;
pub mod format;
pub mod kafka;
pub mod nexmark;
pub mod options;
pub mod parquet;
pub mod postgres;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use serde::{Deserialize, Serialize};

pub use error::{ConnectorError, ErrorKind, Result};
pub use options::{redact, OptionSpec, Options};

/// Schema metadata key carrying a source's primary key (comma-separated): a connector that
/// reads it upstream sets it at validate, the engine stores it and hands it back at open.
pub const PRIMARY_KEY_METADATA: &str = "tributary.primary_key";
/// Schema metadata key listing columns added after CREATE (comma-separated), by schema drift:
/// rows from before the change lack them, which is not a dropped column.
pub const ADDED_COLUMNS_METADATA: &str = "tributary.added_columns";

/// Where a source has read up to: opaque to the engine, stored in checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourcePosition(pub serde_json::Value);

impl SourcePosition {
    /// A connector's own position type from a checkpoint, or its default (the start) when none.
    pub fn decode<T: serde::de::DeserializeOwned + Default>(
        from: Option<SourcePosition>,
        connector: &str,
    ) -> Result<T> {
        match from {
            Some(p) if !p.0.is_null() => serde_json::from_value(p.0).map_err(|e| {
                ConnectorError::Internal(format!("unreadable {connector} source position: {e}"))
            }),
            _ => Ok(T::default()),
        }
    }
}

/// A record a source could not decode. It is counted and shown in `tributary.errors`.
#[derive(Debug, Clone)]
pub struct BadRecord {
    /// Where it is: `file:line`, `partition/offset`, an LSN.
    pub position: String,
    /// Why it could not be decoded.
    pub message: String,
    /// The raw record, truncated to a few KB.
    pub raw: String,
}

/// What [`Source::next_batch`] yields: rows, records that failed to decode, and the position after both.
#[derive(Debug)]
pub struct SourceBatch {
    /// Decoded rows, in the source's schema. May have zero rows.
    pub batch: RecordBatch,
    /// Records in this slice that could not be decoded.
    pub bad_records: Vec<BadRecord>,
    /// Resuming from this position yields what comes after this batch.
    pub position: SourcePosition,
    /// Per-partition progress against the latest available input, when the source knows it.
    pub lag: Vec<PartitionLag>,
    /// What the source is doing, when it has phases (`snapshot: 1200 of ~5000 rows`, `streaming`).
    pub phase: Option<String>,
    /// A failure the source is recovering from by itself (reconnecting); `None` clears it.
    pub transient_error: Option<String>,
    /// The splits the source reads in parallel (Kafka partitions), each with how many of the
    /// batch's rows it gave: the rows are grouped by split in this order. Every split the
    /// source has is listed, with 0 rows when it gave none, so the event time of each is
    /// followed apart. Empty: the source is one split.
    pub splits: Vec<SplitRows>,
    /// Whether the batch is part of the source's initial load (a CDC snapshot) and more of it
    /// is to come: a join with the source as its table holds its other inputs back meanwhile.
    pub loading: bool,
    /// Bytes of encoded input the batch took (the lines of a file, Kafka message payloads);
    /// 0 where the source does not count them (a generator, a Parquet file, a CDC stream).
    pub bytes: u64,
}

/// How many consecutive rows of a batch one split gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitRows {
    /// The split's name, as in [`PartitionLag::partition`].
    pub split: String,
    /// Its rows.
    pub rows: usize,
}

impl SourceBatch {
    /// A batch with its position, no bad records and no lag.
    pub fn new(batch: RecordBatch, position: SourcePosition) -> Self {
        SourceBatch {
            batch,
            bad_records: Vec::new(),
            position,
            lag: Vec::new(),
            phase: None,
            transient_error: None,
            splits: Vec::new(),
            loading: false,
            bytes: 0,
        }
    }
}

/// Tells a source that a checkpoint holding a position of its is durable and its sink commit
/// done, so what came before may be released upstream (a replication slot's confirmed LSN).
pub type SourceAck = Arc<dyn Fn(&SourcePosition) + Send + Sync>;

/// How far one partition of a source has been read, against what is available.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionLag {
    /// Partition name (a Kafka partition number, a replication slot).
    pub partition: String,
    /// Next position to read.
    pub position: i64,
    /// Position after the latest available record.
    pub latest: i64,
    /// Position acknowledged upstream (a slot's confirmed LSN), when the source has one.
    pub confirmed: Option<i64>,
    /// Positions are PostgreSQL LSNs (shown as `16/B374D848` too).
    pub lsn: bool,
    /// How far behind in time: while input is left to read, the age of the last record read
    /// (a Kafka message's timestamp, a transaction's commit time); 0 when caught up; `None` when
    /// the source cannot tell (nothing read yet).
    pub lag_seconds: Option<f64>,
}

impl PartitionLag {
    /// [`PartitionLag::lag_seconds`] for a partition at `position` of `latest`, whose last
    /// record read is stamped `last_ms` (UTC milliseconds), at `now_ms`.
    pub fn seconds_behind(
        position: i64,
        latest: i64,
        last_ms: Option<i64>,
        now_ms: i64,
    ) -> Option<f64> {
        if position >= latest {
            return Some(0.0);
        }
        last_ms.map(|t| (now_ms - t).max(0) as f64 / 1000.0)
    }
}

/// How a pipeline reads a source.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Stop at the input present when reading starts (a batch run over an unbounded source).
    pub bounded: bool,
    /// A look at what is there now (`SELECT ... FROM source LIMIT n`): nothing upstream may be
    /// created, moved or dropped (no replication slot, no publication, no committed offset).
    pub preview: bool,
    /// A directory of this reader's own, kept across restarts of its pipeline (`None` for a
    /// preview): where a source notes what it created upstream, to recognise it later.
    pub state_dir: Option<std::path::PathBuf>,
}

/// A source and its declaration, as `CREATE SOURCE` gave it.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// Source name in the catalog.
    pub name: String,
    /// Declared columns, or `None` to infer them.
    pub schema: Option<SchemaRef>,
    /// The `WITH (...)` options, `connector` included.
    pub options: BTreeMap<String, String>,
}

/// A sink and its declaration, as `CREATE SINK` gave it.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// Sink name in the catalog.
    pub name: String,
    /// The `WITH (...)` options, `connector` included.
    pub options: BTreeMap<String, String>,
}

/// One running read of a source.
#[async_trait]
pub trait Source: Send {
    /// The schema of every batch this source yields.
    fn schema(&self) -> SchemaRef;

    /// The next slice of input. `Ok(None)` means a bounded source has nothing more to give.
    ///
    /// A record that cannot be decoded goes into [`SourceBatch::bad_records`]; an `Err` stops
    /// the pipeline and is meant for failures of the source itself (file vanished, network).
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>>;

    /// How the engine acknowledges committed positions; `None` when upstream needs no word.
    fn ack(&self) -> Option<SourceAck> {
        None
    }

    /// Whether the source starts with an initial load (a CDC snapshot) that its first batches
    /// give, flagged [`SourceBatch::loading`] until the last of it.
    fn loading(&self) -> bool {
        false
    }

    /// For a bounded read, about how many bytes of input are left to read (a file's size, a
    /// generator's rows times a typical encoded row): a batch pipeline reads the smaller side
    /// of a join first. `None`: not known, or not bounded.
    fn remaining_bytes(&self) -> Option<u64> {
        None
    }
}

/// A table's rows found by key: the other side of a lookup join, which asks for the keys of
/// each batch of its stream as the batch arrives.
#[async_trait]
pub trait Lookup: Send {
    /// The rows (in the source's schema) whose key columns equal one of `keys`: one array per
    /// key column, in that column's type, one element per key, none NULL. Retries what may
    /// succeed when tried again; an error means the lookup cannot be done now.
    async fn get(&mut self, keys: &[ArrayRef]) -> Result<RecordBatch>;

    /// How a join caches what this lookup finds.
    fn cache(&self) -> LookupCache;
}

/// How a lookup join caches a table's rows by key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupCache {
    /// Rows kept at most (a key found with no row counts one): 0 caches nothing.
    pub rows: usize,
    /// How long a key's rows are used before they are looked up again.
    pub ttl: Option<std::time::Duration>,
    /// Keys asked for in one request at most.
    pub batch_keys: usize,
}

/// Identity of the writer, handed to [`Sink::open`].
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// Pipeline name.
    pub pipeline: String,
    /// Stable id of the pipeline (survives restarts, differs after DROP and CREATE): sinks use it
    /// as the transaction id that makes commits idempotent.
    pub writer_id: String,
    /// A directory of this writer's own for staged epochs, kept across restarts.
    pub state_dir: std::path::PathBuf,
    /// The source's primary key, the default key of upsert sinks.
    pub primary_key: Vec<String>,
}

/// What [`Sink::prepare`] returns and [`Sink::commit`] takes: stored in the checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PreparedCommit(pub serde_json::Value);

/// One running writer into a sink.
#[async_trait]
pub trait Sink: Send {
    /// Called once before the first write, with the schema of every batch to come.
    /// Creates the destination when absent and checks it matches otherwise.
    async fn open(&mut self, ctx: &SinkContext, schema: SchemaRef) -> Result<()>;

    /// Buffers or writes rows of the current epoch. Nothing becomes visible yet.
    async fn write(&mut self, batch: RecordBatch) -> Result<()>;

    /// Makes everything written since the last prepare durable but invisible, and says how to
    /// make it visible. Called once per epoch, also for epochs with no rows.
    async fn prepare(&mut self, epoch: u64) -> Result<PreparedCommit>;

    /// Makes epoch `epoch` visible. Idempotent: calling it again for an epoch that is already
    /// visible does nothing (this is what makes recovery exactly once).
    async fn commit(&mut self, epoch: u64, prepared: PreparedCommit) -> Result<()>;

    /// What the last commit made visible, in words (`Delta version 12`, `3 files published`),
    /// for `tributary.commits`; `None` when the sink has nothing to add to the epoch.
    fn last_commit(&self) -> Option<String> {
        None
    }
}

/// A kind of source: `connector = 'file'`, `'kafka'`, ...
#[async_trait]
pub trait SourceConnector: Send + Sync {
    /// The name used in `connector = '...'`.
    fn name(&self) -> &'static str;
    /// The options it accepts.
    fn options(&self) -> &'static [OptionSpec];
    /// Checks the options and resolves the schema (declared or inferred). Called at CREATE time.
    async fn validate(&self, spec: &SourceSpec) -> Result<SchemaRef>;
    /// Whether a read of this source ends by itself (batch mode by default).
    fn is_bounded(&self, spec: &SourceSpec) -> bool;
    /// Whether at most one pipeline may read a source of this kind (its upstream position, such
    /// as a replication slot, has one reader).
    fn single_reader(&self) -> bool {
        false
    }
    /// Starts a read from `from` (`None`: from the beginning). `schema` is what validate resolved.
    async fn open(
        &self,
        spec: &SourceSpec,
        schema: SchemaRef,
        from: Option<SourcePosition>,
        read: ReadOptions,
    ) -> Result<Box<dyn Source>>;
    /// Whether a join may look this source's rows up by key ([`SourceConnector::lookup`]).
    fn looks_up(&self) -> bool {
        false
    }
    /// A lookup of the rows whose `key` columns equal given values; it connects when first
    /// used. `None` when the source cannot be looked up.
    fn lookup(
        &self,
        _spec: &SourceSpec,
        _schema: SchemaRef,
        _key: &[String],
    ) -> Result<Option<Box<dyn Lookup>>> {
        Ok(None)
    }
    /// Called at `DROP SOURCE`: releases what the source holds upstream (a replication slot,
    /// unless `keep_slot`) and says what became of it.
    async fn on_drop(&self, _spec: &SourceSpec, _keep_slot: bool) -> Result<Option<String>> {
        Ok(None)
    }
}

/// A kind of sink: `connector = 'delta'`, `'parquet'`, ...
#[async_trait]
pub trait SinkConnector: Send + Sync {
    /// The name used in `connector = '...'`.
    fn name(&self) -> &'static str;
    /// The options it accepts.
    fn options(&self) -> &'static [OptionSpec];
    /// Checks the options. Called at CREATE time.
    async fn validate(&self, spec: &SinkSpec) -> Result<()>;
    /// A writer for one pipeline run.
    async fn create(&self, spec: &SinkSpec) -> Result<Box<dyn Sink>>;
    /// What the sink holds, as a table to query with SQL; `None` when it cannot be read back
    /// (a blackhole) and `Ok(None)` too when nothing was written yet.
    async fn table(&self, spec: &SinkSpec) -> Result<Option<Arc<dyn TableProvider>>>;
    /// `Some(key columns)` when the sink applies changes by key (`mode = 'upsert'`): it then
    /// takes an `_op` column (`insert`, `update`, `delete`; absent means insert). An empty key
    /// means the source's primary key.
    fn upsert_key(&self, _spec: &SinkSpec) -> Result<Option<Vec<String>>> {
        Ok(None)
    }
}

/// Every source connector. Adding one is a line here.
pub fn source_connectors() -> Vec<Arc<dyn SourceConnector>> {
    vec![
        Arc::new(file::FileSourceConnector),
        Arc::new(kafka::KafkaSourceConnector),
        Arc::new(nexmark::NexmarkSourceConnector),
        Arc::new(postgres::PostgresCdcSourceConnector),
        Arc::new(postgres::PostgresTableSourceConnector),
    ]
}

/// Every sink connector. Adding one is a line here.
pub fn sink_connectors() -> Vec<Arc<dyn SinkConnector>> {
    vec![
        Arc::new(delta::DeltaSinkConnector),
        Arc::new(parquet::ParquetSinkConnector),
        Arc::new(kafka::KafkaSinkConnector),
        Arc::new(postgres::PostgresSinkConnector),
        Arc::new(blackhole::BlackholeSinkConnector),
    ]
}

/// The source connector named by `options["connector"]`.
pub fn source_connector(options: &BTreeMap<String, String>) -> Result<Arc<dyn SourceConnector>> {
    let all = source_connectors();
    find(options, &all, "source", |c| c.name())
}

/// The sink connector named by `options["connector"]`.
pub fn sink_connector(options: &BTreeMap<String, String>) -> Result<Arc<dyn SinkConnector>> {
    let all = sink_connectors();
    find(options, &all, "sink", |c| c.name())
}

fn find<T: ?Sized>(
    options: &BTreeMap<String, String>,
    all: &[Arc<T>],
    kind: &'static str,
    name: impl Fn(&T) -> &'static str,
) -> Result<Arc<T>> {
    let accepted = all.iter().map(|c| name(c)).collect::<Vec<_>>().join(", ");
    let wanted = options.get("connector").ok_or_else(|| {
        ConnectorError::Config(format!(
            "the {kind} needs a connector: WITH (connector = '...'); accepted: {accepted}"
        ))
    })?;
    all.iter()
        .find(|c| name(c).eq_ignore_ascii_case(wanted))
        .cloned()
        .ok_or_else(|| ConnectorError::UnknownConnector {
            kind,
            name: wanted.clone(),
            accepted,
        })
}

#[cfg(test)]
mod lag_tests {
    use super::PartitionLag;

    #[test]
    fn seconds_behind_is_the_age_of_the_last_record_while_input_is_left() {
        // Caught up: no lag, whatever the last record's age.
        assert_eq!(
            PartitionLag::seconds_behind(10, 10, Some(0), 60_000),
            Some(0.0)
        );
        // 5 records left, the last read stamped 2.5 s ago.
        assert_eq!(
            PartitionLag::seconds_behind(5, 10, Some(57_500), 60_000),
            Some(2.5)
        );
        // Nothing read yet: unknown.
        assert_eq!(PartitionLag::seconds_behind(0, 10, None, 60_000), None);
        // A clock behind the record's stamp is not negative lag.
        assert_eq!(
            PartitionLag::seconds_behind(5, 10, Some(61_000), 60_000),
            Some(0.0)
        );
    }
}
