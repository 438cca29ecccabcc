//! The `delta` sink: appends to a Delta Lake table, creating it on first write. Data files are
//! written as rows arrive, their Add actions are returned at prepare, and the commit carries the
//! application transaction (writer id, epoch) so an epoch replayed after a crash is skipped.

mod upsert;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::{ConnectorError, Result};
use crate::file::location::resolve_url;
use crate::options::{OptionSpec, Options};
use crate::{PreparedCommit, Sink, SinkConnector, SinkContext, SinkSpec};

const OPTIONS: &[OptionSpec] = &[
    OptionSpec::required(
        "path",
        "table location: a local directory or an object-store URL",
    ),
    OptionSpec::optional(
        "mode",
        "append (default) | upsert (one MERGE per checkpoint: inserts, updates, deletes by key)",
    ),
    OptionSpec::optional(
        "key",
        "upsert key columns, comma-separated (default: the source's primary key)",
    ),
    OptionSpec::optional(
        "partition_by",
        "comma-separated partition columns, used when the table is created",
    ),
];

/// Parsed options of a Delta sink.
#[derive(Debug, Clone)]
pub struct DeltaSinkOptions {
    /// Table URL.
    pub url: Url,
    /// Partition columns for a new table.
    pub partition_by: Vec<String>,
    /// MERGE changes by key instead of appending.
    pub upsert: bool,
    /// Upsert key (empty: the source's primary key).
    pub key: Vec<String>,
}

impl DeltaSinkOptions {
    fn parse(spec: &SinkSpec) -> Result<Self> {
        let opts = Options::validate("delta", OPTIONS, &spec.options)?;
        let upsert = opts.get_choice("mode", &["append", "upsert"], "append")? == "upsert";
        let key = opts.get_list("key");
        let partition_by = opts.get_list("partition_by");
        Ok(DeltaSinkOptions {
            url: resolve_url(opts.require("path")?)?,
            partition_by,
            upsert,
            key,
        })
    }
}

/// `connector = 'delta'`.
pub struct DeltaSinkConnector;

/// Opens the table at `url`; `None` when no table exists there yet.
pub async fn open_existing(url: &Url) -> Result<Option<DeltaTable>> {
    if url.scheme() == "file" {
        if let Ok(p) = url.to_file_path() {
            if !p.join("_delta_log").exists() {
                return Ok(None);
            }
        }
    }
    match deltalake::open_table(url.clone()).await {
        Ok(t) => Ok(Some(t)),
        Err(DeltaTableError::NotATable(_)) | Err(DeltaTableError::InvalidTableLocation(_)) => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl SinkConnector for DeltaSinkConnector {
    fn name(&self) -> &'static str {
        "delta"
    }
    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }
    async fn validate(&self, spec: &SinkSpec) -> Result<()> {
        DeltaSinkOptions::parse(spec).map(|_| ())
    }
    async fn create(&self, spec: &SinkSpec) -> Result<Box<dyn Sink>> {
        let opts = DeltaSinkOptions::parse(spec)?;
        if opts.upsert {
            return Ok(Box::new(upsert::DeltaUpsertSink::new(opts)));
        }
        Ok(Box::new(DeltaSink {
            opts,
            writer_id: String::new(),
            table: None,
            writer: None,
            new_table: None,
            published: false,
        }))
    }
    fn upsert_key(&self, spec: &SinkSpec) -> Result<Option<Vec<String>>> {
        let opts = DeltaSinkOptions::parse(spec)?;
        Ok(opts.upsert.then_some(opts.key))
    }
    async fn table(&self, spec: &SinkSpec) -> Result<Option<Arc<dyn TableProvider>>> {
        let opts = DeltaSinkOptions::parse(spec)?;
        match open_existing(&opts.url).await? {
            Some(table) => {
                Ok(Some(table.table_provider().await.map_err(|e| {
                    ConnectorError::io("opening Delta table for reading", e)
                })?))
            }
            None => Ok(None),
        }
    }
}

/// What a prepared epoch needs to be committed, possibly after a crash.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeltaPrepared {
    /// Data files written in the epoch.
    adds: Vec<Add>,
    /// When the table does not exist yet: its schema and partition columns.
    create: Option<NewTable>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NewTable {
    schema: StructType,
    partition_by: Vec<String>,
}

/// What a commit made visible: the table's version, or that the epoch had no rows.
fn describe_commit(table: Option<&DeltaTable>, published: bool) -> Option<String> {
    let version = table?.version()?;
    Some(if published {
        format!("Delta version {version}")
    } else {
        format!("no rows; Delta version {version} as it was")
    })
}

struct DeltaSink {
    opts: DeltaSinkOptions,
    writer_id: String,
    table: Option<DeltaTable>,
    writer: Option<RecordBatchWriter>,
    new_table: Option<NewTable>,
    /// Whether the last commit had rows to publish.
    published: bool,
}

impl DeltaSink {
    fn app_id(&self) -> String {
        format!("tributary-{}", self.writer_id)
    }
}

#[async_trait]
impl Sink for DeltaSink {
    async fn open(&mut self, ctx: &SinkContext, schema: SchemaRef) -> Result<()> {
        self.writer_id = ctx.writer_id.clone();
        let props = crate::parquet::writer_properties();
        match open_existing(&self.opts.url).await? {
            Some(mut table) => {
                let existing = table.snapshot()?.snapshot().arrow_schema();
                // Columns the pipeline now writes and the table lacks (a column added upstream
                // and propagated, a widened SELECT) are added to the table as nullable columns:
                // rows already there read NULL for them, as in delta-rs's schema merge.
                let missing: Vec<arrow::datatypes::Field> = schema
                    .fields()
                    .iter()
                    .filter(|f| existing.field_with_name(f.name()).is_err())
                    .map(|f| f.as_ref().clone().with_nullable(true))
                    .collect();
                if !missing.is_empty() {
                    let names: Vec<String> = missing.iter().map(|f| f.name().clone()).collect();
                    let added: StructType =
                        (&arrow::datatypes::Schema::new(missing)).try_into_kernel()?;
                    table = table
                        .add_columns()
                        .with_fields(added.fields().cloned().collect::<Vec<_>>())
                        .await?;
                    tracing::info!(table = %self.opts.url, columns = %names.join(", "), "Added columns to the Delta table.");
                }
                self.writer =
                    Some(RecordBatchWriter::for_table(&table)?.with_writer_properties(props));
                self.table = Some(table);
            }
            None => {
                for p in &self.opts.partition_by {
                    if schema.field_with_name(p).is_err() {
                        return Err(ConnectorError::no_such_column("partition_by", p, &schema));
                    }
                }
                let partitions =
                    (!self.opts.partition_by.is_empty()).then(|| self.opts.partition_by.clone());
                let writer = RecordBatchWriter::try_new(
                    self.opts.url.as_str(),
                    schema.clone(),
                    partitions,
                    None,
                )?
                .with_writer_properties(props);
                let delta_schema: StructType = schema.as_ref().try_into_kernel()?;
                self.new_table = Some(NewTable {
                    schema: delta_schema,
                    partition_by: self.opts.partition_by.clone(),
                });
                self.writer = Some(writer);
            }
        }
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| ConnectorError::Internal("delta sink written before open".into()))?;
        writer.write(batch).await?;
        Ok(())
    }

    async fn prepare(&mut self, _epoch: u64) -> Result<PreparedCommit> {
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| ConnectorError::Internal("delta sink prepared before open".into()))?;
        let adds = writer.flush().await?;
        let prepared = DeltaPrepared {
            adds,
            create: if self.table.is_none() {
                self.new_table.clone()
            } else {
                None
            },
        };
        Ok(PreparedCommit(
            serde_json::to_value(prepared).map_err(|e| ConnectorError::Internal(e.to_string()))?,
        ))
    }

    fn last_commit(&self) -> Option<String> {
        describe_commit(self.table.as_ref(), self.published)
    }

    async fn commit(&mut self, epoch: u64, prepared: PreparedCommit) -> Result<()> {
        let prepared: DeltaPrepared = serde_json::from_value(prepared.0).map_err(|e| {
            ConnectorError::Internal(format!("unreadable Delta commit in checkpoint: {e}"))
        })?;
        self.published = !prepared.adds.is_empty();
        if prepared.adds.is_empty() {
            // Nothing to publish; replaying an empty epoch changes nothing either.
            return Ok(());
        }
        let app_id = self.app_id();
        let props = CommitProperties::default()
            .with_application_transaction(Transaction::new(&app_id, epoch as i64));
        let actions: Vec<Action> = prepared.adds.into_iter().map(Action::Add).collect();
        let table = match self.table.take() {
            Some(mut t) => {
                t.update_state().await?;
                Some(t)
            }
            None => open_existing(&self.opts.url).await?,
        };
        match table {
            Some(mut table) => {
                let done = table
                    .snapshot()?
                    .transaction_version(table.log_store().as_ref(), &app_id)
                    .await?;
                if done.is_some_and(|v| v >= epoch as i64) {
                    tracing::info!(epoch, table = %self.opts.url, "Delta commit of this epoch already present; skipping.");
                    self.table = Some(table);
                    return Ok(());
                }
                let snapshot = table.snapshot()?;
                let parts = snapshot.metadata().partition_columns().to_vec();
                let op = DeltaOperation::Write {
                    mode: SaveMode::Append,
                    partition_by: if parts.is_empty() { None } else { Some(parts) },
                    predicate: None,
                };
                let finalized = CommitBuilder::from(props)
                    .with_actions(actions)
                    .build(Some(snapshot), table.log_store(), op)
                    .await?;
                table.state = Some(finalized.snapshot());
                self.table = Some(table);
            }
            None => {
                let new = prepared.create.ok_or_else(|| {
                    ConnectorError::Internal("Delta table vanished after it was written to".into())
                })?;
                let mut builder = deltalake::operations::create::CreateBuilder::new()
                    .with_location(self.opts.url.as_str())
                    .with_columns(new.schema.fields().cloned())
                    .with_save_mode(SaveMode::ErrorIfExists)
                    .with_commit_properties(props)
                    .with_actions(actions);
                if !new.partition_by.is_empty() {
                    builder = builder.with_partition_columns(new.partition_by);
                }
                let table = builder.await?;
                self.table = Some(table);
            }
        }
        // Later epochs write through a writer bound to the now existing table.
        if self.new_table.take().is_some() {
            if let Some(t) = &self.table {
                self.writer = Some(
                    RecordBatchWriter::for_table(t)?
                        .with_writer_properties(crate::parquet::writer_properties()),
                );
            }
        }
        Ok(())
    }
}
