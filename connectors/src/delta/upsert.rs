//! The `delta` sink in `mode = 'upsert'`: each epoch's changes, reduced to the last change per
//! key, are staged at prepare and applied at commit as one MERGE carrying the application
//! transaction (writer id, epoch), so a replayed epoch is recognised and skipped.

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::common::Column;
use datafusion::logical_expr::{binary_expr, Operator};
use datafusion::prelude::{lit, Expr, SessionContext};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{StructType, Transaction};
use deltalake::protocol::SaveMode;
use deltalake::DeltaTable;

use super::{open_existing, DeltaSinkOptions};
use crate::changes::{upsert_key, EpochStage, OP};
use crate::error::{ConnectorError, Result};
use crate::{PreparedCommit, Sink, SinkContext};

pub(super) struct DeltaUpsertSink {
    opts: DeltaSinkOptions,
    writer_id: String,
    key: Vec<String>,
    stage: Option<EpochStage>,
    table: Option<DeltaTable>,
    /// Whether the last commit had rows to merge.
    published: bool,
}

impl DeltaUpsertSink {
    pub(super) fn new(opts: DeltaSinkOptions) -> Self {
        DeltaUpsertSink {
            opts,
            writer_id: String::new(),
            key: Vec::new(),
            stage: None,
            table: None,
            published: false,
        }
    }

    fn app_id(&self) -> String {
        format!("tributary-{}", self.writer_id)
    }

    fn stage(&mut self) -> Result<&mut EpochStage> {
        self.stage
            .as_mut()
            .ok_or_else(|| ConnectorError::Internal("delta upsert sink used before open".into()))
    }
}

fn source(c: &str) -> Expr {
    Expr::Column(Column::new(Some("source"), c))
}

fn target(c: &str) -> Expr {
    Expr::Column(Column::new(Some("target"), c))
}

#[async_trait]
impl Sink for DeltaUpsertSink {
    async fn open(&mut self, ctx: &SinkContext, schema: SchemaRef) -> Result<()> {
        self.writer_id = ctx.writer_id.clone();
        self.key = upsert_key(&self.opts.key, ctx, &schema)?;
        let data = Schema::new(
            schema
                .fields()
                .iter()
                .filter(|f| f.name() != OP)
                .cloned()
                .collect::<Vec<_>>(),
        );
        self.table = match open_existing(&self.opts.url).await? {
            Some(t) => Some(t),
            None => {
                let delta_schema: StructType = (&data).try_into_kernel()?;
                let mut builder = deltalake::operations::create::CreateBuilder::new()
                    .with_location(self.opts.url.as_str())
                    .with_columns(delta_schema.fields().cloned())
                    .with_save_mode(SaveMode::Ignore);
                if !self.opts.partition_by.is_empty() {
                    builder = builder.with_partition_columns(self.opts.partition_by.clone());
                }
                Some(builder.await?)
            }
        };
        self.stage = Some(EpochStage::open(ctx, schema, self.key.clone())?);
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.stage()?.push(batch)
    }

    async fn prepare(&mut self, epoch: u64) -> Result<PreparedCommit> {
        self.stage()?.prepare(epoch)
    }

    fn last_commit(&self) -> Option<String> {
        super::describe_commit(self.table.as_ref(), self.published)
    }

    async fn commit(&mut self, epoch: u64, prepared: PreparedCommit) -> Result<()> {
        self.published = false;
        let Some(file) = EpochStage::staged_file(&prepared) else {
            return Ok(());
        };
        let app_id = self.app_id();
        let mut table = match self.table.take() {
            Some(t) => t,
            None => open_existing(&self.opts.url).await?.ok_or_else(|| {
                ConnectorError::Config(format!("Delta table {} vanished", self.opts.url))
            })?,
        };
        table.update_state().await?;
        let done = table
            .snapshot()?
            .transaction_version(table.log_store().as_ref(), &app_id)
            .await?;
        if done.is_some_and(|v| v >= epoch as i64) {
            tracing::info!(
                epoch,
                "Delta MERGE of this epoch already present; skipping."
            );
            self.stage()?.done(epoch);
            self.table = Some(table);
            return Ok(());
        }
        let batches = self.stage()?.read(&file)?;
        let Some(first) = batches.first() else {
            self.table = Some(table);
            return Ok(());
        };
        let cols: Vec<String> = first
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| n != OP)
            .collect();
        let has_op = first.schema().field_with_name(OP).is_ok();
        // A NULL key matches the target's NULL key (IS NOT DISTINCT FROM); without NULLs in the
        // epoch, `=` means the same and lets delta-rs prune the target's files by the key's range.
        let null_keys: Vec<bool> = self
            .key
            .iter()
            .map(|k| {
                batches
                    .iter()
                    .any(|b| b.column_by_name(k).is_some_and(|c| c.null_count() > 0))
            })
            .collect();
        let ctx = SessionContext::new();
        let df = ctx
            .read_batches(batches)
            .map_err(|e| ConnectorError::io("reading the staged epoch for MERGE", e))?;
        let predicate = self
            .key
            .iter()
            .zip(&null_keys)
            .map(|(k, &null)| match null {
                true => binary_expr(target(k), Operator::IsNotDistinctFrom, source(k)),
                false => target(k).eq(source(k)),
            })
            .reduce(Expr::and)
            .ok_or_else(|| ConnectorError::Internal("upsert without key".into()))?;
        let is_delete = if has_op {
            source(OP).eq(lit("delete"))
        } else {
            lit(false)
        };
        let not_delete = if has_op {
            source(OP).is_null().or(source(OP).not_eq(lit("delete")))
        } else {
            lit(true)
        };
        let props = CommitProperties::default()
            .with_application_transaction(Transaction::new(&app_id, epoch as i64));
        let key = self.key.clone();
        let (table, metrics) = table
            .merge(df, predicate)
            .with_source_alias("source")
            .with_target_alias("target")
            .with_merge_schema(true)
            .with_commit_properties(props)
            .when_matched_delete(|d| d.predicate(is_delete.clone()))?
            .when_matched_update(|mut u| {
                for c in cols.iter().filter(|c| !key.contains(c)) {
                    u = u.update(Column::new_unqualified(c.as_str()), source(c));
                }
                u
            })?
            .when_not_matched_insert(|mut i| {
                i = i.predicate(not_delete.clone());
                for c in &cols {
                    i = i.set(Column::new_unqualified(c.as_str()), source(c));
                }
                i
            })?
            .await?;
        tracing::debug!(
            epoch,
            inserted = metrics.num_target_rows_inserted,
            updated = metrics.num_target_rows_updated,
            deleted = metrics.num_target_rows_deleted,
            "Delta MERGE committed."
        );
        self.table = Some(table);
        self.published = true;
        self.stage()?.done(epoch);
        Ok(())
    }
}
