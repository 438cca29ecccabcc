//! The `postgres` sink: appends or upserts into a PostgreSQL table, creating it (and new columns)
//! when absent. An epoch is staged durably at prepare; its commit applies it with `COPY`,
//! `INSERT ... ON CONFLICT` and `DELETE` in one transaction together with the writer's progress
//! row, so an epoch already applied is recognised and skipped: exactly once.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{Array, BinaryArray, LargeBinaryArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::catalog::TableProvider;
use futures::SinkExt;
use tokio_postgres::Client;

use super::types::{pg_type, quote_ident};
use super::{qualified, split_table, statement_error, PgUrl};
use crate::changes::{upsert_key, EpochStage, OP};
use crate::error::{ConnectorError, Result};
use crate::options::{OptionSpec, Options};
use crate::{PreparedCommit, Sink, SinkConnector, SinkContext, SinkSpec};

const OPTIONS: &[OptionSpec] = &[
    OptionSpec::required("url", "postgres://user:password@host:port/database"),
    OptionSpec::required(
        "table",
        "target table: schema.table (public when omitted); created when absent",
    ),
    OptionSpec::optional(
        "mode",
        "append (default) | upsert (insert, update and delete by key)",
    ),
    OptionSpec::optional(
        "key",
        "upsert key columns, comma-separated (default: the source's primary key)",
    ),
];
/// The table holding each writer's last applied epoch, in the target's schema.
const PROGRESS_TABLE: &str = "_tributary_progress";
/// COPY data is sent in chunks of about this many bytes.
const COPY_CHUNK: usize = 1 << 20;

#[derive(Debug, Clone)]
struct PgSinkOptions {
    url: PgUrl,
    schema: String,
    table: String,
    upsert: bool,
    key: Vec<String>,
}

impl PgSinkOptions {
    fn parse(spec: &SinkSpec) -> Result<Self> {
        let opts = Options::validate("postgres", OPTIONS, &spec.options)?;
        let (schema, table) = split_table(opts.require("table")?);
        Ok(PgSinkOptions {
            url: PgUrl::parse(opts.require("url")?)?,
            schema,
            table,
            upsert: opts.get_choice("mode", &["append", "upsert"], "append")? == "upsert",
            key: opts.get_list("key"),
        })
    }
}

/// `connector = 'postgres'`.
pub struct PostgresSinkConnector;

#[async_trait]
impl SinkConnector for PostgresSinkConnector {
    fn name(&self) -> &'static str {
        "postgres"
    }
    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }
    async fn validate(&self, spec: &SinkSpec) -> Result<()> {
        let opts = PgSinkOptions::parse(spec)?;
        // Credentials and reachability are checked now, where the user can fix them.
        opts.url.connect().await.map(|_| ())
    }
    async fn create(&self, spec: &SinkSpec) -> Result<Box<dyn Sink>> {
        Ok(Box::new(PostgresSink {
            opts: PgSinkOptions::parse(spec)?,
            client: None,
            writer_id: String::new(),
            columns: Vec::new(),
            key: Vec::new(),
            stage: None,
            last_commit: None,
        }))
    }
    async fn table(&self, _spec: &SinkSpec) -> Result<Option<Arc<dyn TableProvider>>> {
        // Query the warehouse directly; Tributary does not proxy it.
        Ok(None)
    }
    fn upsert_key(&self, spec: &SinkSpec) -> Result<Option<Vec<String>>> {
        let opts = PgSinkOptions::parse(spec)?;
        Ok(opts.upsert.then_some(opts.key))
    }
}

struct PostgresSink {
    opts: PgSinkOptions,
    client: Option<Client>,
    writer_id: String,
    /// Data columns written (the pipeline's output minus `_op` when upserting).
    columns: Vec<(String, DataType)>,
    key: Vec<String>,
    stage: Option<EpochStage>,
    /// What the last commit did, for `tributary.commits`.
    last_commit: Option<String>,
}

impl PostgresSink {
    fn stage(&mut self) -> Result<&mut EpochStage> {
        self.stage
            .as_mut()
            .ok_or_else(|| ConnectorError::Internal("postgres sink used before open".into()))
    }

    fn client(&self) -> Result<&Client> {
        self.client
            .as_ref()
            .ok_or_else(|| ConnectorError::Internal("postgres sink used before open".into()))
    }

    fn target(&self) -> String {
        qualified(&self.opts.schema, &self.opts.table)
    }

    fn progress(&self) -> String {
        qualified(&self.opts.schema, PROGRESS_TABLE)
    }

    /// Creates the table when absent, adds columns the pipeline now yields, and creates the
    /// progress table.
    /// [`Self::prepare_tables`] under a transaction-scoped advisory lock: concurrent
    /// `CREATE ... IF NOT EXISTS` of the same table or schema (two sinks starting at once) can
    /// otherwise fail with a unique violation in PostgreSQL's catalog.
    async fn prepare_tables_serialized(&self) -> Result<()> {
        let client = self.client()?;
        client
            .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(7306392581)")
            .await
            .map_err(|e| ConnectorError::io("locking for sink table setup", e))?;
        let result = self.prepare_tables().await;
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = client
            .batch_execute(end)
            .await
            .map_err(|e| ConnectorError::io("finishing sink table setup", e));
        result.and(ended)
    }

    async fn prepare_tables(&self) -> Result<()> {
        let client = self.client()?;
        let ctx = |what: &str| format!("{what} {}", self.target());
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote_ident(&self.opts.schema)
            ))
            .await
            .map_err(|e| ConnectorError::io(ctx("creating the schema of"), e))?;
        let existing: Vec<String> = client
            .query(
                "SELECT a.attname::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                &[&self.opts.schema, &self.opts.table],
            )
            .await
            .map_err(|e| ConnectorError::io(ctx("reading the columns of"), e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if existing.is_empty() {
            let mut defs: Vec<String> = self
                .columns
                .iter()
                .map(|(n, t)| format!("{} {}", quote_ident(n), pg_type(t)))
                .collect();
            if self.opts.upsert {
                defs.push(format!(
                    "PRIMARY KEY ({})",
                    self.key
                        .iter()
                        .map(|k| quote_ident(k))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {} ({})",
                self.target(),
                defs.join(", ")
            );
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| ConnectorError::io(ctx("creating"), e))?;
            tracing::info!(table = %self.target(), "Created the sink table.");
        } else {
            for (n, t) in &self.columns {
                if !existing.iter().any(|e| e == n) {
                    let sql = format!(
                        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
                        self.target(),
                        quote_ident(n),
                        pg_type(t)
                    );
                    client
                        .batch_execute(&sql)
                        .await
                        .map_err(|e| ConnectorError::io(ctx("adding a column to"), e))?;
                    tracing::info!(table = %self.target(), column = %n, "Added a column to the sink table.");
                }
            }
        }
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} (writer_id text PRIMARY KEY, epoch bigint NOT NULL, committed_at timestamptz NOT NULL DEFAULT now())",
                self.progress()
            ))
            .await
            .map_err(|e| ConnectorError::io("creating the progress table", e))
    }

    async fn applied_epoch(&self) -> Result<u64> {
        let row = self
            .client()?
            .query_opt(
                &format!("SELECT epoch FROM {} WHERE writer_id = $1", self.progress()),
                &[&self.writer_id],
            )
            .await
            .map_err(|e| statement_error("reading the sink's progress row", e))?;
        Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64).unwrap_or(0))
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn open(&mut self, ctx: &SinkContext, schema: SchemaRef) -> Result<()> {
        self.writer_id = ctx.writer_id.clone();
        self.columns = schema
            .fields()
            .iter()
            .filter(|f| !(self.opts.upsert && f.name() == OP))
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        if self.opts.upsert {
            self.key = upsert_key(&self.opts.key, ctx, &schema)?;
        }
        self.client = Some(self.opts.url.connect().await?);
        self.prepare_tables_serialized().await?;
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
        self.last_commit.clone()
    }

    async fn commit(&mut self, epoch: u64, prepared: PreparedCommit) -> Result<()> {
        // Applying an epoch is idempotent (the progress row), so a connection lost to a server
        // restart is retried on a new connection for a while before the pipeline fails. What the
        // server refuses (a constraint, a type) comes back as `Refused` and fails at once.
        self.last_commit = None;
        let Some(file) = EpochStage::staged_file(&prepared) else {
            return Ok(()); // an epoch without rows: nothing to apply
        };
        let mut attempt = 0u32;
        loop {
            if self.client.as_ref().is_none_or(|c| c.is_closed()) {
                match self.opts.url.connect().await {
                    Ok(c) => self.client = Some(c),
                    Err(e @ ConnectorError::Io { .. }) if attempt < 10 => {
                        attempt += 1;
                        tracing::warn!(error = %e, attempt, "PostgreSQL sink cannot connect; retrying.");
                        tokio::time::sleep(std::time::Duration::from_secs(
                            u64::from(attempt).min(5),
                        ))
                        .await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            match self.apply_epoch(epoch, &file).await {
                Ok(()) => {
                    self.last_commit = Some(format!(
                        "epoch {epoch} applied to {} (its progress row says so)",
                        self.target()
                    ));
                    return Ok(());
                }
                Err(e @ ConnectorError::Io { .. }) if attempt < 10 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "PostgreSQL sink failed to apply an epoch; retrying on a new connection.");
                    self.client = None;
                    tokio::time::sleep(std::time::Duration::from_secs(u64::from(attempt).min(5)))
                        .await;
                }
                other => return other,
            }
        }
    }
}

impl PostgresSink {
    async fn apply_epoch(&mut self, epoch: u64, file: &str) -> Result<()> {
        if self.applied_epoch().await? >= epoch {
            self.stage()?.done(epoch);
            return Ok(());
        }
        let batches = self.stage()?.read(file)?;
        let target = self.target();
        let progress = self.progress();
        let cols: Vec<String> = self.columns.iter().map(|(n, _)| quote_ident(n)).collect();
        let upsert = self.opts.upsert;
        let key: Vec<String> = self.key.iter().map(|k| quote_ident(k)).collect();
        let writer_id = self.writer_id.clone();
        let column_names: Vec<String> = self.columns.iter().map(|(n, _)| n.clone()).collect();
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| ConnectorError::Internal("commit before open".into()))?;
        let io = |what: &'static str| {
            move |e: tokio_postgres::Error| statement_error(format!("{what} (epoch {epoch})"), e)
        };
        let tx = client
            .transaction()
            .await
            .map_err(io("starting the sink transaction"))?;
        if upsert {
            tx.batch_execute(&format!(
                "CREATE TEMP TABLE _tributary_stage ON COMMIT DROP AS SELECT {} FROM {target} WITH NO DATA;
                 ALTER TABLE _tributary_stage ADD COLUMN _op text",
                cols.join(", ")
            ))
            .await
            .map_err(io("creating the staging table"))?;
            // Rows without `_op` (a source that is not a change stream) are all upserts.
            let mut with_op = column_names.clone();
            if batches
                .iter()
                .any(|b| b.schema().field_with_name(OP).is_ok())
            {
                with_op.push(OP.to_string());
            }
            copy_batches(&tx, "_tributary_stage", &with_op, &batches).await?;
            let on_key = key
                .iter()
                .map(|k| format!("t.{k} = s.{k}"))
                .collect::<Vec<_>>()
                .join(" AND ");
            tx.execute(&format!("DELETE FROM {target} t USING _tributary_stage s WHERE s._op = 'delete' AND {on_key}"), &[])
                .await
                .map_err(io("applying deletes"))?;
            let non_key: Vec<&String> = cols.iter().filter(|c| !key.contains(c)).collect();
            let action = if non_key.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!(
                    "DO UPDATE SET {}",
                    non_key
                        .iter()
                        .map(|c| format!("{c} = EXCLUDED.{c}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            tx.execute(
                &format!(
                    "INSERT INTO {target} ({cols}) SELECT {cols} FROM _tributary_stage WHERE _op IS DISTINCT FROM 'delete' ON CONFLICT ({keys}) {action}",
                    cols = cols.join(", "),
                    keys = key.join(", ")
                ),
                &[],
            )
            .await
            .map_err(io("applying inserts and updates"))?;
        } else {
            copy_batches(&tx, &target, &column_names, &batches).await?;
        }
        tx.execute(
            &format!(
                "INSERT INTO {progress} (writer_id, epoch, committed_at) VALUES ($1, $2, now())
                 ON CONFLICT (writer_id) DO UPDATE SET epoch = EXCLUDED.epoch, committed_at = EXCLUDED.committed_at"
            ),
            &[&writer_id, &(epoch as i64)],
        )
        .await
        .map_err(io("writing the progress row"))?;
        tx.commit().await.map_err(io("committing"))?;
        self.stage()?.done(epoch);
        Ok(())
    }
}

/// `COPY table (columns) FROM STDIN` with the named columns of `batches` in text format.
async fn copy_batches(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    columns: &[String],
    batches: &[RecordBatch],
) -> Result<()> {
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let sink = tx
        .copy_in::<_, Bytes>(&format!("COPY {table} ({}) FROM STDIN", cols.join(", ")))
        .await
        .map_err(|e| statement_error(format!("starting COPY into {table}"), e))?;
    futures::pin_mut!(sink);
    for batch in batches {
        for chunk in encode_copy_text(batch, columns)? {
            sink.send(chunk)
                .await
                .map_err(|e| statement_error(format!("COPY into {table}"), e))?;
        }
    }
    sink.finish()
        .await
        .map_err(|e| statement_error(format!("finishing COPY into {table}"), e))?;
    Ok(())
}

/// The named columns of `batch` in COPY text format, in chunks of about [`COPY_CHUNK`] bytes.
fn encode_copy_text(batch: &RecordBatch, columns: &[String]) -> Result<Vec<Bytes>> {
    let mut chunks = Vec::new();
    let mut buf = String::with_capacity(COPY_CHUNK + 4096);
    let mut scratch = String::new();
    let options = FormatOptions::default();
    let arrays: Vec<&Arc<dyn Array>> = columns
        .iter()
        .map(|c| {
            batch
                .column_by_name(c)
                .ok_or_else(|| ConnectorError::Internal(format!("staged epoch lacks column {c}")))
        })
        .collect::<Result<_>>()?;
    let formatters: Vec<ArrayFormatter<'_>> = arrays
        .iter()
        .map(|a| ArrayFormatter::try_new(a.as_ref(), &options))
        .collect::<std::result::Result<_, _>>()?;
    for row in 0..batch.num_rows() {
        for (i, (a, f)) in arrays.iter().zip(&formatters).enumerate() {
            if i > 0 {
                buf.push('\t');
            }
            if a.is_null(row) {
                buf.push_str("\\N");
                continue;
            }
            scratch.clear();
            if let Some(b) = a.as_any().downcast_ref::<BinaryArray>() {
                write_bytea(&mut scratch, b.value(row));
            } else if let Some(b) = a.as_any().downcast_ref::<LargeBinaryArray>() {
                write_bytea(&mut scratch, b.value(row));
            } else {
                let _ = write!(scratch, "{}", f.value(row));
            }
            escape_copy(&mut buf, &scratch);
        }
        buf.push('\n');
        if buf.len() >= COPY_CHUNK {
            chunks.push(Bytes::from(std::mem::take(&mut buf)));
        }
    }
    if !buf.is_empty() {
        chunks.push(Bytes::from(buf));
    }
    Ok(chunks)
}

fn write_bytea(out: &mut String, bytes: &[u8]) {
    out.push_str("\\x");
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

/// COPY text format: backslash, tab, newline and carriage return are escaped (also what the
/// server's COPY TO STDOUT writes).
pub fn escape_copy(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_copy_text() {
        let mut s = String::new();
        escape_copy(&mut s, "a\tb\\c\nd");
        assert_eq!(s, "a\\tb\\\\c\\nd");
        let mut b = String::new();
        write_bytea(&mut b, &[0, 255]);
        let mut s = String::new();
        escape_copy(&mut s, &b);
        assert_eq!(s, "\\\\x00ff");
    }
}
