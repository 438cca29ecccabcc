//! The `postgres-cdc` source: a consistent snapshot of a table taken at a replication slot's
//! exported snapshot, then the slot's pgoutput stream, as change rows (`_op`, `_lsn`, `_commit_ts`).
//!
//! Positions: during the snapshot, the slot's consistent point and the last primary key read;
//! afterwards the end LSN of the last whole transaction read plus how many of the next
//! transaction's changes were already emitted (a batch may end inside a transaction). The LSN
//! confirmed to PostgreSQL is only ever one the engine acknowledged after a durable sink commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::pgoutput::{self, Datum, Message, Relation};
use super::types::{arrow_type, quote_ident, quote_literal, TextColumn};
use super::{
    change_schema, check_declared, describe_table, format_lsn, metadata_fields, parse_lsn,
    qualified, split_table, PgUrl, UpstreamTable, OP_COLUMN,
};
use crate::error::{ConnectorError, Result};
use crate::options::{OptionSpec, Options};
use crate::ADDED_COLUMNS_METADATA;
use crate::{
    BadRecord, PartitionLag, ReadOptions, Source, SourceAck, SourceBatch, SourceConnector,
    SourcePosition, SourceSpec,
};

const OPTIONS: &[OptionSpec] = &[
    OptionSpec::required("url", "postgres://user:password@host:port/database"),
    OptionSpec::required(
        "table",
        "the upstream table: schema.table (public when omitted)",
    ),
    OptionSpec::optional(
        "slot",
        "replication slot name (default tributary_<source>); created when absent",
    ),
    OptionSpec::optional(
        "publication",
        "publication name (default tributary_<source>); created when absent",
    ),
    OptionSpec::optional(
        "on_schema_change",
        "propagate (default) | fail: what an upstream ADD COLUMN does",
    ),
    OptionSpec::optional(
        "snapshot",
        "initial (default): copy existing rows first | never: changes only",
    ),
    OptionSpec::optional("batch_size", "rows per batch (default 8192)"),
    OptionSpec::optional(
        "existing_slot",
        "fail (default): a slot that already exists when a pipeline first starts is an error | \
         adopt: stream from where that slot stands, without a snapshot",
    ),
];

/// How long a resuming pipeline waits for another consumer to release its slot (longer than
/// PostgreSQL's default wal_sender_timeout of 60 s, after which a vanished consumer's session ends).
const SLOT_BUSY_TIMEOUT: Duration = Duration::from_secs(90);
/// The file in a reader's state directory recording the slot it created, to recognise it later.
const SLOT_RECORD: &str = "postgres-cdc-slot.json";

/// Microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;
/// Session settings that make text output parse one way.
const SESSION_OPTIONS: &str =
    "-c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=3 -c bytea_output=hex -c IntervalStyle=postgres";
const CURSOR: &str = "tributary_snapshot";

/// Parsed options of a CDC source.
#[derive(Debug, Clone)]
pub struct CdcOptions {
    /// Where.
    pub url: PgUrl,
    /// Upstream schema.
    pub schema: String,
    /// Upstream table.
    pub table: String,
    /// Replication slot.
    pub slot: String,
    /// Publication.
    pub publication: String,
    /// Whether the publication name was derived (then DROP SOURCE drops it too).
    pub own_publication: bool,
    /// Fail on ADD COLUMN instead of propagating it.
    pub fail_on_schema_change: bool,
    /// Copy existing rows first.
    pub snapshot: bool,
    /// Rows per batch.
    pub batch_size: usize,
    /// A slot found at first start is adopted (streamed from its position) instead of refused.
    pub adopt_slot: bool,
}

/// A name PostgreSQL accepts for a slot: lower-case letters, digits and underscores.
fn derived_name(source: &str) -> String {
    let mut s: String = format!("tributary_{source}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(63);
    s
}

impl CdcOptions {
    /// Checks and parses the options of `spec`.
    pub fn parse(spec: &SourceSpec) -> Result<Self> {
        let opts = Options::validate("postgres-cdc", OPTIONS, &spec.options)?;
        let url = PgUrl::parse(opts.require("url")?)?;
        let (schema, table) = split_table(opts.require("table")?);
        let slot = match opts.get("slot") {
            Some(s) => {
                if s.is_empty()
                    || !s
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    return Err(ConnectorError::InvalidOption {
                        option: "slot".into(),
                        value: s.into(),
                        reason:
                            "replication slot names use lower-case letters, digits and underscores"
                                .into(),
                    });
                }
                s.to_string()
            }
            None => derived_name(&spec.name),
        };
        let own_publication = opts.get("publication").is_none();
        let publication = opts
            .get("publication")
            .map(str::to_string)
            .unwrap_or_else(|| derived_name(&spec.name));
        let fail_on_schema_change =
            opts.get_choice("on_schema_change", &["propagate", "fail"], "propagate")? == "fail";
        let snapshot = opts.get_choice("snapshot", &["initial", "never"], "initial")? == "initial";
        let batch_size = opts
            .get_u64("batch_size")?
            .unwrap_or(8192)
            .clamp(1, 1_000_000) as usize;
        let adopt_slot = opts.get_choice("existing_slot", &["fail", "adopt"], "fail")? == "adopt";
        Ok(CdcOptions {
            url,
            schema,
            table,
            slot,
            publication,
            own_publication,
            fail_on_schema_change,
            snapshot,
            batch_size,
            adopt_slot,
        })
    }

    fn replication_config(&self, start: u64, ack: u64) -> ReplicationConfig {
        ReplicationConfig::new(
            self.url.host.clone(),
            self.url.user(),
            self.url.password(),
            self.url.database(),
            self.slot.clone(),
            self.publication.as_str(),
        )
        .with_port(self.url.port)
        .with_tls(self.url.replication_tls())
        .with_start_lsn(Lsn(start))
        .with_ack_lsn(Lsn(ack))
        .with_options(SESSION_OPTIONS)
        .with_application_name("tributary")
        .with_status_interval(Duration::from_secs(1))
    }
}

/// Checks what can be checked before a pipeline runs: credentials, `wal_level`, the replication
/// privilege and the table; returns the table's description.
async fn check_upstream(opts: &CdcOptions) -> Result<(Client, UpstreamTable)> {
    let client = opts.url.connect().await?;
    let wal_level: String = client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(|e| ConnectorError::io("reading wal_level", e))?
        .get(0);
    if wal_level != "logical" {
        return Err(ConnectorError::Config(format!(
            "PostgreSQL at {} has wal_level = {wal_level}; change data capture needs wal_level = logical \
             (ALTER SYSTEM SET wal_level = logical, then restart the server)",
            opts.url.display()
        )));
    }
    let can_replicate: bool = client
        .query_one(
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| ConnectorError::io("reading role attributes", e))?
        .get(0);
    if !can_replicate {
        return Err(ConnectorError::Config(format!(
            "user \"{}\" may not use replication at {}: ALTER ROLE {} REPLICATION",
            opts.url.user(),
            opts.url.display(),
            quote_ident(&opts.url.user())
        )));
    }
    let table = describe_table(&client, &opts.schema, &opts.table).await?;
    Ok((client, table))
}

/// A replication slot as `pg_replication_slots` shows it.
struct SlotInfo {
    /// A consumer is streaming from it.
    active: bool,
    /// How far its consumer confirmed (`None` for a physical slot).
    confirmed_flush: Option<u64>,
    /// Its output plugin and database (`None` for a physical slot).
    plugin: Option<String>,
    /// Whether it belongs to the database we are connected to.
    this_database: bool,
}

/// A slot and whether it is in use. A consumer that just went away (a stopped pipeline, a
/// killed process) may hold it for a moment longer: wait up to 15 s for it to be released.
async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let row = client
            .query_opt(
                "SELECT active, confirmed_flush_lsn::text, plugin::text,
                        database IS NOT DISTINCT FROM current_database()
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| ConnectorError::io("reading replication slots", e))?;
        let Some(r) = row else { return Ok(None) };
        let info = SlotInfo {
            active: r.get(0),
            confirmed_flush: r.get::<_, Option<String>>(1).and_then(|l| parse_lsn(&l)),
            plugin: r.get(2),
            this_database: r.get(3),
        };
        if info.active && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        return Ok(Some(info));
    }
}

/// What a reader notes in its state directory after creating a slot: a slot found later with
/// this name, still confirmed exactly at this point, is provably its own and never consumed.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct SlotRecord {
    slot: String,
    consistent_lsn: u64,
}

impl SlotRecord {
    fn read(dir: &std::path::Path) -> Option<SlotRecord> {
        let bytes = std::fs::read(dir.join(SLOT_RECORD)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Written and synced before the slot is used, so a crash right after still finds it.
    fn write(&self, dir: &std::path::Path) -> Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(dir)
            .map_err(|e| ConnectorError::io(format!("creating {}", dir.display()), e))?;
        let tmp = dir.join(format!("{SLOT_RECORD}.tmp"));
        let bytes = serde_json::to_vec(self)
            .map_err(|e| ConnectorError::Internal(format!("encoding the slot record: {e}")))?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(SLOT_RECORD))
        };
        write().map_err(|e| ConnectorError::io(format!("writing {}", tmp.display()), e))
    }
}

/// `connector = 'postgres-cdc'`.
pub struct PostgresCdcSourceConnector;

#[async_trait]
impl SourceConnector for PostgresCdcSourceConnector {
    fn name(&self) -> &'static str {
        "postgres-cdc"
    }
    fn single_reader(&self) -> bool {
        true
    }
    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }
    async fn validate(&self, spec: &SourceSpec) -> Result<SchemaRef> {
        let opts = CdcOptions::parse(spec)?;
        let (_client, table) = check_upstream(&opts).await?;
        let inferred = change_schema(&table);
        let Some(declared) = &spec.schema else {
            return Ok(inferred);
        };
        // Declared columns must exist upstream; the metadata columns are added when not declared.
        let name = format!("{}.{}", opts.schema, opts.table);
        check_declared(declared, &table, &name, |c| c.starts_with('_'))?;
        let mut fields: Vec<Field> = declared
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        for m in metadata_fields() {
            if !fields.iter().any(|f| f.name() == m.name()) {
                fields.push(m);
            }
        }
        Ok(Arc::new(Schema::new_with_metadata(
            fields,
            inferred.metadata().clone(),
        )))
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
        let opts = CdcOptions::parse(spec)?;
        let (client, upstream) = check_upstream(&opts).await?;
        if read.preview {
            // A plain snapshot read: no slot or publication is created, moved or dropped.
            let mut source = CdcSource::new(opts, schema, upstream, CdcPosition::default());
            source.open_preview(client).await?;
            return Ok(Box::new(source));
        }
        let pos: CdcPosition = SourcePosition::decode(from, "postgres-cdc")?;
        let mut source = CdcSource::new(opts, schema, upstream, pos);
        source.state_dir = read.state_dir;
        source.start(client).await?;
        Ok(Box::new(source))
    }
    async fn on_drop(&self, spec: &SourceSpec, keep_slot: bool) -> Result<Option<String>> {
        let opts = CdcOptions::parse(spec)?;
        let client = opts.url.connect().await?;
        let mut notes = Vec::new();
        let slot = slot_info(&client, &opts.slot).await?.map(|s| s.active);
        match slot {
            None => notes.push(format!("replication slot {} does not exist upstream", opts.slot)),
            Some(_) if keep_slot => notes.push(format!(
                "replication slot {} is kept and holds WAL on {} until dropped: SELECT pg_drop_replication_slot('{}')",
                opts.slot,
                opts.url.display(),
                opts.slot
            )),
            Some(active) => {
                if active {
                    return Err(ConnectorError::Config(format!(
                        "replication slot {} is in use by a running consumer; stop it first or DROP SOURCE ... KEEP SLOT",
                        opts.slot
                    )));
                }
                client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&opts.slot])
                    .await
                    .map_err(|e| ConnectorError::io("dropping the replication slot", e))?;
                notes.push(format!("replication slot {} dropped", opts.slot));
            }
        }
        if opts.own_publication && !keep_slot {
            client
                .batch_execute(&format!(
                    "DROP PUBLICATION IF EXISTS {}",
                    quote_ident(&opts.publication)
                ))
                .await
                .map_err(|e| ConnectorError::io("dropping the publication", e))?;
            notes.push(format!("publication {} dropped", opts.publication));
        }
        Ok(Some(notes.join("; ")))
    }
}

/// Where a CDC read is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CdcPosition {
    /// Nothing read yet: the slot is (re)created at start.
    #[serde(default)]
    pub started: bool,
    /// Snapshot rows still to come.
    #[serde(default)]
    pub in_snapshot: bool,
    /// The slot's consistent point: where the stream starts after the snapshot.
    #[serde(default)]
    pub consistent_lsn: u64,
    /// Primary key (text values) of the last snapshot row emitted.
    #[serde(default)]
    pub snapshot_last_key: Option<Vec<Option<String>>>,
    /// Snapshot rows emitted.
    #[serde(default)]
    pub snapshot_rows: u64,
    /// End LSN of the last whole transaction emitted.
    #[serde(default)]
    pub lsn: u64,
    /// Changes of the transaction after `lsn` already emitted.
    #[serde(default)]
    pub skip: u64,
}

struct Txn {
    commit_ts: i64,
    /// Change messages of this transaction seen so far.
    seen: u64,
}

/// Which upstream value fills which schema column, worked out once per relation (or snapshot),
/// not per row.
struct ColumnMap {
    /// (schema column, upstream value index) for every table column the schema has.
    fill: Vec<(usize, usize)>,
    /// Table columns of the schema that upstream does not send here: NULL.
    nulls: Vec<usize>,
}

impl ColumnMap {
    /// Maps `data_columns` (name, schema index) onto upstream columns by name.
    fn new<'a>(
        data_columns: &[(String, usize)],
        upstream: impl Iterator<Item = &'a str> + Clone,
    ) -> Self {
        let mut fill = Vec::new();
        let mut nulls = Vec::new();
        for (name, i) in data_columns {
            match upstream.clone().position(|u| u == name) {
                Some(u) => fill.push((*i, u)),
                None => nulls.push(*i),
            }
        }
        ColumnMap { fill, nulls }
    }
}

struct CdcSource {
    opts: CdcOptions,
    schema: SchemaRef,
    /// Upstream table as seen at open, for snapshot SQL.
    upstream: UpstreamTable,
    /// Schema columns that are table columns (not `_op`, `_lsn`, `_commit_ts`): name, index.
    data_columns: Vec<(String, usize)>,
    pos: CdcPosition,
    snapshot: Option<Snapshot>,
    repl: Option<ReplicationClient>,
    relations: HashMap<u32, ColumnMap>,
    txn: Option<Txn>,
    /// Changes of the first transaction after a (re)connect to pass over: already emitted.
    resume_skip: u64,
    acked: Arc<AtomicU64>,
    acked_sent: u64,
    latest_lsn: u64,
    pending_error: Option<ConnectorError>,
    reconnects: u32,
    last_emit: Instant,
    /// A preview: the snapshot only, then the end.
    preview: bool,
    /// Where this reader notes the slot it created (none for a preview).
    state_dir: Option<std::path::PathBuf>,
    /// Since when the slot has been held by another consumer, while resuming.
    slot_busy_since: Option<Instant>,
    /// The commit time of the last transaction read (UTC milliseconds), for the lag in seconds.
    last_commit_ms: Option<i64>,
}

struct Snapshot {
    client: Client,
    total: u64,
    /// Snapshot columns (the upstream table's, in order) onto the schema.
    columns: ColumnMap,
    /// Positions of the primary key among the snapshot columns.
    key: Vec<usize>,
}

impl CdcSource {
    fn new(opts: CdcOptions, schema: SchemaRef, upstream: UpstreamTable, pos: CdcPosition) -> Self {
        let data_columns = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| !matches!(f.name().as_str(), "_op" | "_lsn" | "_commit_ts"))
            .map(|(i, f)| (f.name().clone(), i))
            .collect();
        let acked = Arc::new(AtomicU64::new(pos.lsn));
        CdcSource {
            opts,
            schema,
            upstream,
            data_columns,
            acked_sent: pos.lsn,
            pos,
            snapshot: None,
            repl: None,
            relations: HashMap::new(),
            txn: None,
            resume_skip: 0,
            acked,
            latest_lsn: 0,
            pending_error: None,
            reconnects: 0,
            last_emit: Instant::now(),
            preview: false,
            state_dir: None,
            slot_busy_since: None,
            last_commit_ms: None,
        }
    }

    /// A preview: the table as it is now, read in a REPEATABLE READ READ ONLY transaction.
    async fn open_preview(&mut self, client: Client) -> Result<()> {
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| ConnectorError::io("starting the preview's snapshot", e))?;
        let lsn: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| ConnectorError::io("reading the current WAL position", e))?
            .get(0);
        let lsn = parse_lsn(&lsn).unwrap_or(0);
        self.preview = true;
        self.pos = CdcPosition {
            in_snapshot: true,
            consistent_lsn: lsn,
            lsn,
            ..Default::default()
        };
        self.open_snapshot(client).await
    }

    /// A slot exists at first start. Dropped when provably this reader's own and never consumed
    /// from (created by an earlier attempt that stopped before its first checkpoint), adopted
    /// when the source says so, and otherwise an error naming it: its position is not ours.
    /// Returns whether the slot was adopted.
    async fn existing_slot(&mut self, client: &Client, slot: SlotInfo) -> Result<bool> {
        let name = &self.opts.slot;
        if slot.active {
            return Err(ConnectorError::Config(format!(
                "replication slot {name} is in use by another consumer (another pipeline on this source, \
                 or another tool using the same slot name)"
            )));
        }
        let record = self.state_dir.as_deref().and_then(SlotRecord::read);
        let own_unused = matches!(
            (&record, slot.confirmed_flush),
            (Some(r), Some(at)) if r.slot == *name && r.consistent_lsn == at
        );
        if own_unused {
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[name])
                .await
                .map_err(|e| {
                    ConnectorError::io("dropping this pipeline's unused replication slot", e)
                })?;
            tracing::info!(slot = %name, "Dropped the replication slot an earlier attempt created and never consumed.");
            return Ok(false);
        }
        let at = slot
            .confirmed_flush
            .map(format_lsn)
            .unwrap_or_else(|| "no position".into());
        if !self.opts.adopt_slot {
            return Err(ConnectorError::Config(format!(
                "replication slot {name} already exists upstream (confirmed up to {at}) and this pipeline has no \
                 checkpoint reading from it: it may belong to an earlier pipeline or another consumer, so it is \
                 neither dropped nor reused. Either drop it upstream (SELECT pg_drop_replication_slot('{name}')) \
                 and start again with a new snapshot, or recreate the source with existing_slot = 'adopt' to \
                 stream from where the slot stands, without a snapshot"
            )));
        }
        let (Some(lsn), Some("pgoutput"), true) = (
            slot.confirmed_flush,
            slot.plugin.as_deref(),
            slot.this_database,
        ) else {
            return Err(ConnectorError::Config(format!(
                "replication slot {name} cannot be adopted: it is not a pgoutput logical slot of database {}",
                self.opts.url.database()
            )));
        };
        self.pos = CdcPosition {
            started: true,
            in_snapshot: false,
            consistent_lsn: lsn,
            lsn,
            ..Default::default()
        };
        self.acked.store(lsn, Ordering::Relaxed);
        self.acked_sent = lsn;
        tracing::info!(slot = %name, lsn = %format_lsn(lsn), "Adopted an existing replication slot; streaming without a snapshot.");
        Ok(true)
    }

    /// First start: publication, a fresh slot and its exported snapshot. Resume: check the slot.
    async fn start(&mut self, client: Client) -> Result<()> {
        let table = qualified(&self.opts.schema, &self.opts.table);
        if !self.pos.started {
            self.ensure_publication(&client, &table).await?;
            if let Some(slot) = slot_info(&client, &self.opts.slot).await? {
                if self.existing_slot(&client, slot).await? {
                    return Ok(());
                }
            }
            let mut gate = ReplicationClient::connect_gated(self.opts.replication_config(0, 0))
                .await
                .map_err(|e| ConnectorError::io("opening a replication session", e))?;
            let export = if self.opts.snapshot {
                "(SNAPSHOT 'export')"
            } else {
                "(SNAPSHOT 'nothing')"
            };
            let rows = gate
                .simple_query(&format!(
                    "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {export}",
                    quote_ident(&self.opts.slot)
                ))
                .await
                .map_err(|e| ConnectorError::io("creating the replication slot", e))?;
            let row = rows.first().ok_or_else(|| {
                ConnectorError::Internal("CREATE_REPLICATION_SLOT returned no row".into())
            })?;
            let text = |i: usize| {
                row.get(i)
                    .and_then(|v| v.as_ref())
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            };
            let consistent = text(1).and_then(|s: String| parse_lsn(&s)).ok_or_else(|| {
                ConnectorError::Internal("no consistent point from CREATE_REPLICATION_SLOT".into())
            })?;
            self.pos = CdcPosition {
                started: true,
                in_snapshot: self.opts.snapshot,
                consistent_lsn: consistent,
                lsn: consistent,
                ..Default::default()
            };
            self.acked.store(consistent, Ordering::Relaxed);
            self.acked_sent = consistent;
            if let Some(dir) = &self.state_dir {
                SlotRecord {
                    slot: self.opts.slot.clone(),
                    consistent_lsn: consistent,
                }
                .write(dir)?;
            }
            tracing::info!(slot = %self.opts.slot, lsn = %format_lsn(consistent), "Created replication slot.");
            if self.opts.snapshot {
                let name = text(2)
                    .ok_or_else(|| ConnectorError::Internal("no exported snapshot name".into()))?;
                client
                    .batch_execute(&format!(
                        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                        quote_literal(&name)
                    ))
                    .await
                    .map_err(|e| ConnectorError::io("importing the slot's snapshot", e))?;
                self.open_snapshot(client).await?;
            }
            // The exported snapshot lives until the gated session ends; it is imported now.
            gate.abort();
            drop(gate);
            return Ok(());
        }
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.opts.slot],
            )
            .await
            .map_err(|e| ConnectorError::io("reading replication slots", e))?
            .is_some();
        if !exists {
            return Err(ConnectorError::Config(format!(
                "replication slot {} no longer exists upstream: changes since the last checkpoint are lost to this pipeline; \
                 drop and recreate the pipeline to start over with a new snapshot",
                self.opts.slot
            )));
        }
        if self.pos.in_snapshot {
            // A crash during the snapshot: go on after the last key read, in a new snapshot. Rows
            // changed since the first snapshot are replayed by the stream, which starts at the slot's
            // consistent point: for keyed sinks the end state is the same.
            client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(|e| ConnectorError::io("starting the snapshot", e))?;
            self.open_snapshot(client).await?;
        }
        Ok(())
    }

    async fn ensure_publication(&self, client: &Client, table: &str) -> Result<()> {
        let member = client
            .query_opt(
                "SELECT (SELECT count(*) FROM pg_publication_tables t WHERE t.pubname = p.pubname
                          AND t.schemaname = $2 AND t.tablename = $3) > 0 OR p.puballtables
                 FROM pg_publication p WHERE p.pubname = $1",
                &[&self.opts.publication, &self.opts.schema, &self.opts.table],
            )
            .await
            .map_err(|e| ConnectorError::io("reading publications", e))?;
        let sql = match member {
            None => format!(
                "CREATE PUBLICATION {} FOR TABLE {table}",
                quote_ident(&self.opts.publication)
            ),
            Some(r) if !r.get::<_, bool>(0) => {
                format!(
                    "ALTER PUBLICATION {} ADD TABLE {table}",
                    quote_ident(&self.opts.publication)
                )
            }
            Some(_) => return Ok(()),
        };
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| ConnectorError::io(format!("setting up the publication ({sql})"), e))
    }

    /// Declares the snapshot cursor (inside the open REPEATABLE READ transaction), ordered by key
    /// so a crash can resume after the last key read.
    async fn open_snapshot(&mut self, client: Client) -> Result<()> {
        let table = qualified(&self.opts.schema, &self.opts.table);
        let cols: Vec<String> = self
            .upstream
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        let keys = self.upstream.primary_key.clone();
        let mut sql = format!(
            "DECLARE {CURSOR} NO SCROLL CURSOR FOR SELECT {} FROM {table}",
            cols.join(", ")
        );
        if !keys.is_empty() {
            if let Some(last) = &self.pos.snapshot_last_key {
                let lhs: Vec<String> = keys.iter().map(|k| quote_ident(k)).collect();
                let rhs: Vec<String> = keys
                    .iter()
                    .zip(last)
                    .map(|(k, v)| {
                        let ty = self
                            .upstream
                            .columns
                            .iter()
                            .find(|c| &c.name == k)
                            .map(|c| c.type_name.clone())
                            .unwrap_or_else(|| "text".into());
                        match v {
                            Some(v) => format!("{}::{ty}", quote_literal(v)),
                            None => "NULL".into(),
                        }
                    })
                    .collect();
                sql.push_str(&format!(
                    " WHERE ({}) > ({})",
                    lhs.join(", "),
                    rhs.join(", ")
                ));
            }
            let order: Vec<String> = keys.iter().map(|k| quote_ident(k)).collect();
            sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
        } else if self.pos.snapshot_rows > 0 {
            // Without a key the snapshot cannot resume in the middle: start it over.
            tracing::warn!("Table has no primary key: restarting its snapshot from the beginning.");
            self.pos.snapshot_rows = 0;
        }
        let total: i64 = client
            .query_one(
                &format!(
                    "SELECT GREATEST(reltuples, 0)::int8 FROM pg_class WHERE oid = {}::regclass",
                    quote_literal(&table)
                ),
                &[],
            )
            .await
            .map_err(|e| ConnectorError::io("estimating the table size", e))?
            .get(0);
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| ConnectorError::io("starting the snapshot query", e))?;
        let names = || self.upstream.columns.iter().map(|c| c.name.as_str());
        let columns = ColumnMap::new(&self.data_columns, names());
        let key = keys
            .iter()
            .filter_map(|k| names().position(|n| n == k))
            .collect();
        self.snapshot = Some(Snapshot {
            client,
            total: total.max(0) as u64,
            columns,
            key,
        });
        Ok(())
    }

    fn builders(&self, capacity: usize) -> Builders {
        Builders {
            columns: self
                .schema
                .fields()
                .iter()
                .map(|f| TextColumn::new(f.data_type(), capacity))
                .collect(),
            op: StringBuilder::with_capacity(capacity, capacity * 6),
            lsn: Int64Builder::with_capacity(capacity),
            ts: TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            rows: 0,
        }
    }

    fn finish(&self, mut b: Builders) -> Result<RecordBatch> {
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for (i, f) in self.schema.fields().iter().enumerate() {
            cols.push(match f.name().as_str() {
                "_op" => Arc::new(b.op.finish()),
                "_lsn" => Arc::new(b.lsn.finish()),
                "_commit_ts" => Arc::new(b.ts.finish()),
                _ => b.columns[i].finish(),
            });
        }
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }

    fn lag(&self) -> Vec<PartitionLag> {
        if self.pos.in_snapshot {
            let total = self.snapshot.as_ref().map(|s| s.total).unwrap_or(0);
            return vec![PartitionLag {
                partition: "snapshot".into(),
                position: self.pos.snapshot_rows as i64,
                latest: total.max(self.pos.snapshot_rows) as i64,
                confirmed: None,
                lsn: false,
                lag_seconds: None,
            }];
        }
        vec![PartitionLag {
            partition: self.opts.slot.clone(),
            position: self.pos.lsn as i64,
            latest: self.latest_lsn.max(self.pos.lsn) as i64,
            confirmed: Some(self.acked.load(Ordering::Relaxed) as i64),
            lsn: true,
            lag_seconds: PartitionLag::seconds_behind(
                self.pos.lsn as i64,
                self.latest_lsn.max(self.pos.lsn) as i64,
                self.last_commit_ms,
                chrono::Utc::now().timestamp_millis(),
            ),
        }]
    }

    fn phase(&self) -> String {
        if self.pos.in_snapshot {
            let total = self.snapshot.as_ref().map(|s| s.total).unwrap_or(0);
            format!(
                "snapshot: {} of ~{} rows",
                self.pos.snapshot_rows,
                total.max(self.pos.snapshot_rows)
            )
        } else {
            format!(
                "streaming from slot {} at {} (confirmed {})",
                self.opts.slot,
                format_lsn(self.pos.lsn),
                format_lsn(self.acked.load(Ordering::Relaxed))
            )
        }
    }

    fn batch(
        &self,
        batch: RecordBatch,
        bad_records: Vec<BadRecord>,
        error: Option<String>,
    ) -> Result<SourceBatch> {
        // A position that cannot be stored must fail the epoch: a null one means "from scratch".
        let position = serde_json::to_value(&self.pos).map_err(|e| {
            ConnectorError::Internal(format!("encoding the postgres-cdc position: {e}"))
        })?;
        Ok(SourceBatch {
            batch,
            bad_records,
            position: SourcePosition(position),
            lag: self.lag(),
            phase: Some(self.phase()),
            transient_error: error,
            splits: Vec::new(),
            loading: self.pos.in_snapshot,
            bytes: 0,
        })
    }

    async fn next_snapshot_batch(&mut self) -> Result<SourceBatch> {
        let snap = self
            .snapshot
            .as_ref()
            .ok_or_else(|| ConnectorError::Internal("snapshot read without a snapshot".into()))?;
        let msgs = snap
            .client
            .simple_query(&format!("FETCH {} FROM {CURSOR}", self.opts.batch_size))
            .await
            .map_err(|e| ConnectorError::io("reading the snapshot", e))?;
        let mut b = self.builders(self.opts.batch_size);
        let mut bad = Vec::new();
        let mut last_key = None;
        for m in &msgs {
            let SimpleQueryMessage::Row(row) = m else {
                continue;
            };
            let values: Vec<Option<&str>> = (0..row.len()).map(|i| row.get(i)).collect();
            last_key = Some(
                snap.key
                    .iter()
                    .map(|i| values[*i].map(str::to_string))
                    .collect::<Vec<_>>(),
            );
            if let Err(e) = b.push_row(
                &snap.columns,
                |u| values.get(u).copied().flatten(),
                "insert",
                self.pos.consistent_lsn as i64,
                None,
            ) {
                bad.push(BadRecord {
                    position: format!(
                        "snapshot row {}",
                        self.pos.snapshot_rows + b.rows as u64 + bad.len() as u64 + 1
                    ),
                    message: e,
                    raw: format!("{values:?}"),
                });
            }
        }
        let n = (b.rows + bad.len()) as u64;
        self.pos.snapshot_rows += n;
        if last_key.is_some() {
            self.pos.snapshot_last_key = last_key;
        }
        if n == 0 {
            // Snapshot done: the stream takes over at the slot's consistent point.
            if let Some(snap) = self.snapshot.take() {
                let _ = snap.client.batch_execute("COMMIT").await;
            }
            self.pos.in_snapshot = false;
            self.pos.lsn = self.pos.consistent_lsn;
            self.pos.skip = 0;
            tracing::info!(
                rows = self.pos.snapshot_rows,
                "Snapshot complete; streaming changes."
            );
        }
        let batch = self.finish(b)?;
        self.batch(batch, bad, None)
    }

    async fn connect_stream(&mut self) -> Result<()> {
        let ack = self.acked.load(Ordering::Relaxed);
        let cfg = self
            .opts
            .replication_config(self.pos.lsn, ack.min(self.pos.lsn));
        let started = match ReplicationClient::connect(cfg).await {
            Ok(mut client) => client.wait_started().await.map(|_| client),
            Err(e) => Err(e),
        };
        let client = match started {
            Ok(c) => c,
            Err(e) if e.to_string().contains("SQLSTATE 55006") => return Err(self.slot_busy(e)),
            Err(e) => {
                return Err(ConnectorError::io(
                    format!("starting replication from slot {}", self.opts.slot),
                    e,
                ))
            }
        };
        self.slot_busy_since = None;
        self.acked_sent = ack;
        self.txn = None;
        self.resume_skip = self.pos.skip;
        self.relations.clear();
        self.repl = Some(client);
        self.reconnects = 0;
        Ok(())
    }

    /// The slot is held by another consumer (SQLSTATE 55006). A consumer that just went away may
    /// hold it until PostgreSQL notices; one still there after [`SLOT_BUSY_TIMEOUT`] is a conflict.
    fn slot_busy(&mut self, e: pgwire_replication::PgWireError) -> ConnectorError {
        let since = *self.slot_busy_since.get_or_insert_with(Instant::now);
        let slot = &self.opts.slot;
        if since.elapsed() >= SLOT_BUSY_TIMEOUT {
            return ConnectorError::Config(format!(
                "replication slot {slot} has been in use by another consumer for {} s ({e}); \
                 stop that consumer (see pg_stat_replication upstream) or give this source its own slot",
                SLOT_BUSY_TIMEOUT.as_secs()
            ));
        }
        ConnectorError::io(
            format!("replication slot {slot} is in use by another consumer; waiting for it to be released"),
            e,
        )
    }

    /// Checks a relation message against the schema: an added column propagates or fails by the
    /// option; a dropped or retyped one stops the pipeline.
    fn check_relation(&self, rel: &Relation) -> Result<ColumnMap> {
        for c in &rel.columns {
            let found = self
                .data_columns
                .iter()
                .find(|(n, _)| *n == c.name)
                .map(|(_, i)| *i);
            match found {
                Some(i) => {
                    let (t, _) = arrow_type(c.type_oid, c.typmod);
                    let have = self.schema.field(i).data_type();
                    if &t != have {
                        return Err(ConnectorError::SchemaChanged(format!(
                            "column \"{}\" of {}.{} changed type upstream (now {t}, the pipeline reads {have}); \
                             recreate the source and pipeline to take the new type",
                            c.name, rel.namespace, rel.name
                        )));
                    }
                }
                None => {
                    let (t, _) = arrow_type(c.type_oid, c.typmod);
                    let what = format!(
                        "column \"{}\" ({t}) was added to {}.{} upstream",
                        c.name, rel.namespace, rel.name
                    );
                    if self.opts.fail_on_schema_change {
                        return Err(ConnectorError::SchemaChanged(format!(
                            "{what}; the source has on_schema_change = 'fail'"
                        )));
                    }
                    let mut fields: Vec<Field> = self
                        .schema
                        .fields()
                        .iter()
                        .map(|f| f.as_ref().clone())
                        .collect();
                    let at = fields
                        .iter()
                        .position(|f| f.name() == OP_COLUMN)
                        .unwrap_or(fields.len());
                    fields.insert(at, Field::new(&c.name, t, true));
                    return Err(ConnectorError::SchemaEvolved {
                        description: what,
                        schema: Arc::new(Schema::new_with_metadata(
                            fields,
                            self.schema.metadata().clone(),
                        )),
                    });
                }
            }
        }
        let added: Vec<&str> = self
            .schema
            .metadata()
            .get(ADDED_COLUMNS_METADATA)
            .map(|a| a.split(',').collect())
            .unwrap_or_default();
        for (name, _) in &self.data_columns {
            if !rel.columns.iter().any(|c| &c.name == name) && !added.contains(&name.as_str()) {
                return Err(ConnectorError::SchemaChanged(format!(
                    "column \"{name}\" of {}.{} was dropped or renamed upstream; the pipeline reads it",
                    rel.namespace, rel.name
                )));
            }
        }
        Ok(ColumnMap::new(
            &self.data_columns,
            rel.columns.iter().map(|c| c.name.as_str()),
        ))
    }

    fn is_our_relation(&self, rel: &Relation) -> bool {
        rel.namespace == self.opts.schema && rel.name == self.opts.table
    }

    /// Reads the stream until a batch is full, a transaction boundary after a short wait, or an
    /// error; reconnects with backoff when the connection breaks.
    async fn next_stream_batch(&mut self) -> Result<SourceBatch> {
        if let Some(e) = self.pending_error.take() {
            return Err(e);
        }
        if self.repl.is_none() {
            if let Err(e) = self.connect_stream().await {
                return self.backoff(e).await;
            }
        }
        let mut b = self.builders(self.opts.batch_size);
        let mut bad = Vec::new();
        let start_pos = self.pos.clone();
        let started = Instant::now();
        loop {
            let ack = self.acked.load(Ordering::Relaxed);
            let Some(repl) = self.repl.as_mut() else {
                return Err(ConnectorError::Internal(
                    "replication stream read while disconnected".into(),
                ));
            };
            if ack > self.acked_sent {
                repl.update_applied_lsn(Lsn(ack));
                self.acked_sent = ack;
            }
            let full = b.rows >= self.opts.batch_size;
            let waited = started.elapsed();
            if full
                || (self.txn.is_none()
                    && (b.rows > 0 || self.pos != start_pos)
                    && waited > Duration::from_millis(100))
            {
                break;
            }
            if self.txn.is_none()
                && self.last_emit.elapsed() > Duration::from_secs(1)
                && waited > Duration::from_millis(100)
            {
                // Nothing new for a while: report lag and any keepalive progress.
                break;
            }
            let ev = match tokio::time::timeout(Duration::from_millis(100), repl.recv()).await {
                Err(_) => continue,
                Ok(Ok(Some(ev))) => ev,
                Ok(Ok(None)) => {
                    let e = ConnectorError::Io {
                        context: "replication stream".into(),
                        source: "the server ended the replication stream".into(),
                    };
                    return self.interrupted(b, bad, e).await;
                }
                Ok(Err(e)) => {
                    let e = ConnectorError::io(
                        format!("replication stream from slot {}", self.opts.slot),
                        e,
                    );
                    return self.interrupted(b, bad, e).await;
                }
            };
            match ev {
                ReplicationEvent::Begin {
                    commit_time_micros, ..
                } => {
                    self.txn = Some(Txn {
                        commit_ts: commit_time_micros + PG_EPOCH_OFFSET_MICROS,
                        seen: 0,
                    });
                    self.last_commit_ms =
                        Some((commit_time_micros + PG_EPOCH_OFFSET_MICROS) / 1000);
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    self.txn = None;
                    self.pos.lsn = self.pos.lsn.max(end_lsn.0);
                    self.pos.skip = 0;
                    self.resume_skip = 0;
                    self.latest_lsn = self.latest_lsn.max(end_lsn.0);
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    self.latest_lsn = self.latest_lsn.max(wal_end.0);
                    if self.txn.is_none() && wal_end.0 > self.pos.lsn && self.resume_skip == 0 {
                        self.pos.lsn = wal_end.0;
                    }
                }
                ReplicationEvent::XLogData {
                    wal_start, data, ..
                } => {
                    let msg = match pgoutput::decode(&data) {
                        Ok(m) => m,
                        Err(e) => {
                            return Err(ConnectorError::Internal(format!(
                                "undecodable pgoutput message at {}: {e}",
                                format_lsn(wal_start.0)
                            )))
                        }
                    };
                    if let Err(e) = self.apply(msg, wal_start.0, &mut b, &mut bad) {
                        if b.rows > 0 || !bad.is_empty() {
                            // Emit what came before the change; the error follows.
                            self.pending_error = Some(e);
                            break;
                        }
                        return Err(e);
                    }
                }
                ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
            }
        }
        if let Some(t) = &self.txn {
            self.pos.skip = t.seen;
        }
        self.last_emit = Instant::now();
        let batch = self.finish(b)?;
        self.batch(batch, bad, None)
    }

    /// Applies one decoded message to the batch being built.
    fn apply(
        &mut self,
        msg: Message,
        lsn: u64,
        b: &mut Builders,
        bad: &mut Vec<BadRecord>,
    ) -> Result<()> {
        let (rel_id, rows): (u32, Vec<ChangeRow>) = match msg {
            Message::Relation(rel) => {
                if self.is_our_relation(&rel) {
                    let map = self.check_relation(&rel)?;
                    self.relations.insert(rel.id, map);
                }
                return Ok(());
            }
            Message::Insert { relation, new } => (relation, vec![("insert", new, None)]),
            Message::Update {
                relation,
                old,
                key_only,
                new,
            } => {
                let key_changed = key_only && old.is_some();
                if key_changed {
                    // The key changed: the old key goes away, the new row arrives.
                    (
                        relation,
                        vec![
                            ("delete", old.unwrap_or_default(), None),
                            ("insert", new, None),
                        ],
                    )
                } else {
                    (relation, vec![("update", new, old)])
                }
            }
            Message::Delete { relation, old, .. } => (relation, vec![("delete", old, None)]),
            Message::Truncate { relations } => {
                if relations.iter().any(|r| self.relations.contains_key(r)) {
                    bad.push(BadRecord {
                        position: format_lsn(lsn),
                        message: "TRUNCATE upstream is not applied to sinks; rows removed by it remain downstream".into(),
                        raw: "TRUNCATE".into(),
                    });
                }
                return Ok(());
            }
            Message::Other(_) => return Ok(()),
        };
        if !self.relations.contains_key(&rel_id) {
            return Ok(()); // another table of the publication
        }
        if let Some(t) = &mut self.txn {
            t.seen += 1;
            if t.seen <= self.resume_skip {
                return Ok(());
            }
        }
        let commit_ts = self.txn.as_ref().map(|t| t.commit_ts);
        let map = &self.relations[&rel_id];
        for (op, tuple, old) in rows {
            let value = |u: usize| -> Option<&str> {
                match tuple.get(u) {
                    Some(Datum::Text(t)) => std::str::from_utf8(t).ok(),
                    Some(Datum::Unchanged) => match old.as_ref().and_then(|o| o.get(u)) {
                        Some(Datum::Text(t)) => std::str::from_utf8(t).ok(),
                        _ => None,
                    },
                    _ => None,
                }
            };
            if let Err(e) = b.push_row(map, value, op, lsn as i64, commit_ts) {
                bad.push(BadRecord {
                    position: format_lsn(lsn),
                    message: e,
                    raw: format!("{op} {tuple:?}"),
                });
            }
        }
        Ok(())
    }

    /// The connection broke: emit what was read (its position is exact) and reconnect later.
    async fn interrupted(
        &mut self,
        b: Builders,
        bad: Vec<BadRecord>,
        e: ConnectorError,
    ) -> Result<SourceBatch> {
        self.repl = None;
        if let Some(t) = &self.txn {
            self.pos.skip = t.seen;
        }
        self.txn = None;
        tracing::warn!(error = %e, "Replication connection lost; reconnecting.");
        let msg = format!("reconnecting: {e}");
        let batch = self.finish(b)?;
        self.batch(batch, bad, Some(msg))
    }

    /// Waits before the next reconnect attempt (1 s doubling to 30 s) and says why.
    async fn backoff(&mut self, e: ConnectorError) -> Result<SourceBatch> {
        if let ConnectorError::Config(_) = e {
            return Err(e);
        }
        self.reconnects += 1;
        let wait = Duration::from_secs(1 << self.reconnects.min(5)).min(Duration::from_secs(30));
        tracing::warn!(error = %e, attempt = self.reconnects, wait_s = wait.as_secs(), "Replication stream unavailable; retrying.");
        tokio::time::sleep(wait).await;
        let batch = RecordBatch::new_empty(self.schema.clone());
        self.batch(
            batch,
            Vec::new(),
            Some(format!("reconnecting (attempt {}): {e}", self.reconnects)),
        )
    }
}

/// A decoded change: its `_op`, its row, and an update's old row when PostgreSQL sent one.
type ChangeRow = (&'static str, Vec<Datum>, Option<Vec<Datum>>);

struct Builders {
    columns: Vec<TextColumn>,
    op: StringBuilder,
    lsn: Int64Builder,
    ts: TimestampMicrosecondBuilder,
    rows: usize,
}

impl Builders {
    /// Appends one row, its values taken by upstream index as `map` says. Every value is parsed
    /// before anything is appended, so a bad value leaves no partial row.
    fn push_row<'a>(
        &mut self,
        map: &ColumnMap,
        value: impl Fn(usize) -> Option<&'a str>,
        op: &str,
        lsn: i64,
        commit_ts: Option<i64>,
    ) -> std::result::Result<(), String> {
        let mut parsed = Vec::with_capacity(map.fill.len());
        for (t, u) in &map.fill {
            parsed.push((*t, self.columns[*t].parse(value(*u))?));
        }
        for (t, p) in parsed {
            self.columns[t].append(p);
        }
        for t in &map.nulls {
            self.columns[*t].append_null();
        }
        self.op.append_value(op);
        self.lsn.append_value(lsn);
        self.ts.append_option(commit_ts);
        self.rows += 1;
        Ok(())
    }
}

#[async_trait]
impl Source for CdcSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        if self.pos.in_snapshot && self.snapshot.is_some() {
            return self.next_snapshot_batch().await.map(Some);
        }
        if self.preview {
            return Ok(None);
        }
        self.next_stream_batch().await.map(Some)
    }

    fn loading(&self) -> bool {
        self.pos.in_snapshot && !self.preview
    }

    fn ack(&self) -> Option<SourceAck> {
        let acked = self.acked.clone();
        Some(Arc::new(move |p: &SourcePosition| {
            if let Ok(pos) = serde_json::from_value::<CdcPosition>(p.0.clone()) {
                // During the snapshot nothing may be released: the stream starts at the consistent point.
                let lsn = if pos.in_snapshot {
                    pos.consistent_lsn
                } else {
                    pos.lsn
                };
                acked.fetch_max(lsn, Ordering::Relaxed);
            }
        }))
    }
}
