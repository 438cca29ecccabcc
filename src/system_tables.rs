//! The schemas the SQL front end queries: `public` (sources and sinks as tables, resolved fresh
//! at every query) and `tributary` (live system tables built from the catalog and the runtime).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use tributary_connectors::options::secret_reference;
use tributary_connectors::{redact, SinkSpec, SourceSpec};

use crate::catalog::{schema_of, Catalog, PipelineState};
use crate::health::{verdict, History};
use crate::runtime::event_time::watermark_time;
use crate::runtime::graph::OperatorStats;
use crate::runtime::source_table::SourceTable;
use crate::runtime::Runtime;
use crate::sessions::{SessionInfo, Sessions};
use crate::sql::types::sql_type_name;

/// Sources and sinks as tables.
#[derive(Debug)]
pub struct CatalogSchema {
    catalog: Arc<Catalog>,
}

impl CatalogSchema {
    /// Tables over `catalog`.
    pub fn new(catalog: Arc<Catalog>) -> Self {
        CatalogSchema { catalog }
    }
}

/// A source entry as a table provider.
pub fn source_table(catalog: &Catalog, name: &str) -> crate::error::Result<Option<SourceTable>> {
    let Some(entry) = catalog.source(name) else {
        return Ok(None);
    };
    let schema = schema_of(&entry.columns)?;
    let connector = tributary_connectors::source_connector(&entry.options)?;
    let spec = SourceSpec {
        name: entry.name.clone(),
        schema: Some(schema.clone()),
        options: catalog.resolve_options(&entry.options)?,
    };
    Ok(Some(
        SourceTable::new(spec, schema, connector)
            .with_watermark(entry.watermark.clone())
            .with_primary_key(entry.primary_key.clone()),
    ))
}

#[async_trait]
impl SchemaProvider for CatalogSchema {
    /// Sources and sinks, but blackhole sinks: they keep nothing to query, and what lists the
    /// relations (information_schema) opens each.
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.catalog.sources().into_iter().map(|s| s.name).collect();
        names.extend(
            self.catalog
                .sinks()
                .into_iter()
                .filter(|s| {
                    s.options
                        .get("connector")
                        .is_none_or(|c| !c.eq_ignore_ascii_case("blackhole"))
                })
                .map(|s| s.name),
        );
        names
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(t) =
            source_table(&self.catalog, name).map_err(|e| DataFusionError::External(Box::new(e)))?
        {
            return Ok(Some(Arc::new(t)));
        }
        if let Some(sink) = self.catalog.sink(name) {
            let connector = tributary_connectors::sink_connector(&sink.options)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let spec = SinkSpec {
                name: sink.name.clone(),
                options: self
                    .catalog
                    .resolve_options(&sink.options)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?,
            };
            return match connector
                .table(&spec)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?
            {
                Some(t) => Ok(Some(t)),
                None if connector.name() == "blackhole" => Err(DataFusionError::Plan(format!(
                    "sink \"{name}\" is a blackhole: it keeps nothing to query"
                ))),
                None => Ok(Some(Arc::new(MemTable::try_new(
                    Arc::new(Schema::empty()),
                    vec![vec![]],
                )?))),
            };
        }
        Ok(None)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.catalog.source(name).is_some() || self.catalog.sink(name).is_some()
    }
}

/// `tributary.*` system tables.
pub struct SystemSchema {
    catalog: Arc<Catalog>,
    runtime: Arc<Runtime>,
    sessions: Arc<Sessions>,
    history: Arc<History>,
}

impl std::fmt::Debug for SystemSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SystemSchema")
    }
}

impl SystemSchema {
    /// System tables over the catalog and runtime, with the pipelines' sampled `history`.
    pub fn new(
        catalog: Arc<Catalog>,
        runtime: Arc<Runtime>,
        sessions: Arc<Sessions>,
        history: Arc<History>,
    ) -> Self {
        SystemSchema {
            catalog,
            runtime,
            sessions,
            history,
        }
    }
}

/// The names of the system tables.
pub const TABLES: &[&str] = &[
    "pipelines",
    "sources",
    "sinks",
    "errors",
    "checkpoints",
    "source_lag",
    "events",
    "durations",
    "commits",
    "operators",
    "sessions",
    "users",
    "secrets",
];

fn text(v: Vec<Option<String>>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}
/// Counts as BIGINT, what clients expect of a count.
fn count(v: Vec<u64>) -> ArrayRef {
    Arc::new(Int64Array::from(
        v.into_iter()
            .map(|n| i64::try_from(n).unwrap_or(i64::MAX))
            .collect::<Vec<_>>(),
    ))
}
fn ts(v: Vec<Option<DateTime<Utc>>>) -> ArrayRef {
    Arc::new(
        TimestampMicrosecondArray::from(
            v.into_iter()
                .map(|t| t.map(|t| t.timestamp_micros()))
                .collect::<Vec<_>>(),
        )
        .with_timezone("UTC"),
    )
}

/// `k = 'v', ...` with secrets redacted.
pub fn options_text(options: &std::collections::BTreeMap<String, String>) -> String {
    options
        .iter()
        .map(|(k, v)| match secret_reference(v) {
            Some(name) => format!("{k} = SECRET {name}"),
            None => format!("{k} = '{}'", redact(k, v).replace('\'', "''")),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A batch from named columns (every column nullable).
fn table(columns: Vec<(&str, ArrayRef)>) -> crate::error::Result<RecordBatch> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )?)
}

fn int(v: Vec<i64>) -> ArrayRef {
    Arc::new(arrow::array::Int64Array::from(v))
}
fn int_opt(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(arrow::array::Int64Array::from(v))
}
/// An LSN as PostgreSQL writes it, for partitions whose positions are LSNs.
fn lsn_text(p: &tributary_connectors::PartitionLag, v: i64) -> Option<String> {
    p.lsn
        .then(|| tributary_connectors::postgres::format_lsn(v.max(0) as u64))
}

impl SystemSchema {
    /// The rows of system table `name`, which must be one of [`TABLES`].
    pub async fn rows(&self, name: &str) -> crate::error::Result<RecordBatch> {
        self.build(name)
            .await?
            .ok_or_else(|| crate::error::Error::Internal(format!("no system table {name}")))
    }

    /// The rows of system table `name` as `tributary.name` reads them now; `None` when there is
    /// no such table. The HTTP API and `/metrics` read the same rows.
    pub async fn build(&self, name: &str) -> crate::error::Result<Option<RecordBatch>> {
        let batch = match name {
            "pipelines" => {
                let entries = self.catalog.pipelines();
                let st: Vec<_> = entries
                    .iter()
                    .map(|p| {
                        let mode = p.options.get("mode").cloned().unwrap_or_default();
                        self.runtime
                            .status(&p.name, &mode, p.state, p.error.clone())
                            .snapshot()
                    })
                    .collect();
                let verdicts: Vec<_> = entries
                    .iter()
                    .zip(&st)
                    .map(|(p, s)| {
                        let interval = p
                            .options
                            .get("checkpoint_interval")
                            .and_then(|v| tributary_connectors::options::parse_duration(v))
                            .unwrap_or(crate::jobs::DEFAULT_CHECKPOINT_INTERVAL);
                        let failed = (s.state == PipelineState::Failed).then(|| {
                            s.error
                                .clone()
                                .or_else(|| p.error.clone())
                                .unwrap_or_default()
                        });
                        let running = s.state == PipelineState::Running;
                        verdict(
                            &self.history.samples(&p.name),
                            interval,
                            running,
                            failed.as_deref(),
                        )
                    })
                    .collect();
                table(vec![
                    (
                        "name",
                        text(entries.iter().map(|p| Some(p.name.clone())).collect()),
                    ),
                    (
                        "mode",
                        text(st.iter().map(|s| Some(s.mode.clone())).collect()),
                    ),
                    (
                        "state",
                        text(
                            st.iter()
                                .map(|s| Some(s.state.as_str().to_string()))
                                .collect(),
                        ),
                    ),
                    (
                        "source",
                        text(entries.iter().map(|p| Some(p.sources.join(", "))).collect()),
                    ),
                    (
                        "sink",
                        text(entries.iter().map(|p| Some(p.sink.clone())).collect()),
                    ),
                    ("rows_in", count(st.iter().map(|s| s.rows_in).collect())),
                    ("rows_out", count(st.iter().map(|s| s.rows_out).collect())),
                    (
                        "rows_errored",
                        count(st.iter().map(|s| s.rows_errored).collect()),
                    ),
                    ("epoch", count(st.iter().map(|s| s.epoch).collect())),
                    ("rows_late", count(st.iter().map(|s| s.rows_late).collect())),
                    (
                        "watermark",
                        ts(st
                            .iter()
                            .map(|s| s.watermark.and_then(watermark_time))
                            .collect()),
                    ),
                    ("started_at", ts(st.iter().map(|s| s.started_at).collect())),
                    (
                        "last_checkpoint_at",
                        ts(st.iter().map(|s| s.last_checkpoint_at).collect()),
                    ),
                    ("phase", text(st.iter().map(|s| s.phase.clone()).collect())),
                    (
                        "error",
                        text(
                            st.iter()
                                .zip(&entries)
                                .map(|(s, p)| {
                                    s.error.clone().or_else(|| {
                                        (s.state == PipelineState::Failed)
                                            .then(|| p.error.clone())
                                            .flatten()
                                    })
                                })
                                .collect(),
                        ),
                    ),
                    (
                        "warning",
                        text(st.iter().map(|s| s.warning.clone()).collect()),
                    ),
                    (
                        "id",
                        text(entries.iter().map(|p| Some(p.id.clone())).collect()),
                    ),
                    (
                        "query",
                        text(entries.iter().map(|p| Some(p.query.clone())).collect()),
                    ),
                    (
                        "commit_failures",
                        count(st.iter().map(|s| s.commit_failures).collect()),
                    ),
                    (
                        "rows_in_since_start",
                        count(st.iter().map(|s| s.counted_since_start[0]).collect()),
                    ),
                    (
                        "rows_out_since_start",
                        count(st.iter().map(|s| s.counted_since_start[1]).collect()),
                    ),
                    (
                        "rows_errored_since_start",
                        count(st.iter().map(|s| s.counted_since_start[2]).collect()),
                    ),
                    (
                        "bytes_in_since_start",
                        count(st.iter().map(|s| s.bytes_in).collect()),
                    ),
                    (
                        "rows_late_since_start",
                        count(st.iter().map(|s| s.counted_since_start[3]).collect()),
                    ),
                    (
                        "health",
                        text(
                            verdicts
                                .iter()
                                .map(|v| v.as_ref().map(|v| v.name().to_string()))
                                .collect(),
                        ),
                    ),
                    (
                        "health_detail",
                        text(
                            verdicts
                                .iter()
                                .map(|v| v.as_ref().and_then(|v| v.detail()))
                                .collect(),
                        ),
                    ),
                ])?
            }
            "sources" => {
                let e = self.catalog.sources();
                table(vec![
                    (
                        "name",
                        text(e.iter().map(|e| Some(e.name.clone())).collect()),
                    ),
                    (
                        "connector",
                        text(
                            e.iter()
                                .map(|e| e.options.get("connector").cloned())
                                .collect(),
                        ),
                    ),
                    (
                        "options",
                        text(e.iter().map(|e| Some(options_text(&e.options))).collect()),
                    ),
                    (
                        "schema",
                        text(e.iter().map(|e| Some(columns_text(&e.columns))).collect()),
                    ),
                    (
                        "created_at",
                        ts(e.iter().map(|e| Some(e.created_at)).collect()),
                    ),
                ])?
            }
            "sinks" => {
                let e = self.catalog.sinks();
                table(vec![
                    (
                        "name",
                        text(e.iter().map(|e| Some(e.name.clone())).collect()),
                    ),
                    (
                        "connector",
                        text(
                            e.iter()
                                .map(|e| e.options.get("connector").cloned())
                                .collect(),
                        ),
                    ),
                    (
                        "options",
                        text(e.iter().map(|e| Some(options_text(&e.options))).collect()),
                    ),
                    (
                        "created_at",
                        ts(e.iter().map(|e| Some(e.created_at)).collect()),
                    ),
                ])?
            }
            "errors" => {
                let e = self.runtime.errors().snapshot();
                table(vec![
                    (
                        "pipeline",
                        text(e.iter().map(|e| Some(e.pipeline.clone())).collect()),
                    ),
                    (
                        "source",
                        text(e.iter().map(|e| Some(e.source.clone())).collect()),
                    ),
                    (
                        "position",
                        text(e.iter().map(|e| Some(e.position.clone())).collect()),
                    ),
                    (
                        "error",
                        text(e.iter().map(|e| Some(e.message.clone())).collect()),
                    ),
                    ("raw", text(e.iter().map(|e| Some(e.raw.clone())).collect())),
                    ("epoch", count(e.iter().map(|e| e.epoch).collect())),
                    ("at", ts(e.iter().map(|e| Some(e.at)).collect())),
                ])?
            }
            "secrets" => {
                // Names and who uses them: never a value, sealed or not.
                let secrets = self.catalog.secrets();
                let used_by = |name: &str| {
                    let users: Vec<String> = self
                        .catalog
                        .secret_users(name)
                        .into_iter()
                        .map(|(_, object)| object)
                        .collect();
                    Some(users.join(", "))
                };
                table(vec![
                    (
                        "name",
                        text(secrets.iter().map(|s| Some(s.name.clone())).collect()),
                    ),
                    (
                        "used_by",
                        text(secrets.iter().map(|s| used_by(&s.name)).collect()),
                    ),
                    (
                        "created_at",
                        ts(secrets.iter().map(|s| Some(s.created_at)).collect()),
                    ),
                    (
                        "updated_at",
                        ts(secrets.iter().map(|s| Some(s.updated_at)).collect()),
                    ),
                ])?
            }
            "users" => {
                // Names and roles only: a verifier is a secret too.
                let users = self.catalog.users();
                table(vec![
                    (
                        "name",
                        text(users.iter().map(|u| Some(u.name.clone())).collect()),
                    ),
                    (
                        "role",
                        text(users.iter().map(|u| Some(u.role.as_str().into())).collect()),
                    ),
                    (
                        "created_at",
                        ts(users.iter().map(|u| Some(u.created_at)).collect()),
                    ),
                    (
                        "password_changed_at",
                        ts(users.iter().map(|u| Some(u.password_changed_at)).collect()),
                    ),
                ])?
            }
            "sessions" => {
                let all = self.sessions.list();
                let state = |s: &SessionInfo| match s.query_started_at {
                    Some(_) => "active",
                    None => "idle",
                };
                table(vec![
                    (
                        "pid",
                        Arc::new(Int32Array::from(
                            all.iter().map(|s| s.pid).collect::<Vec<_>>(),
                        )) as ArrayRef,
                    ),
                    (
                        "user_name",
                        text(all.iter().map(|s| Some(s.user.clone())).collect()),
                    ),
                    (
                        "application_name",
                        text(
                            all.iter()
                                .map(|s| Some(s.application_name.clone()))
                                .collect(),
                        ),
                    ),
                    (
                        "client_addr",
                        text(all.iter().map(|s| Some(s.client_addr.clone())).collect()),
                    ),
                    (
                        "connected_at",
                        ts(all.iter().map(|s| Some(s.connected_at)).collect()),
                    ),
                    (
                        "state",
                        text(all.iter().map(|s| Some(state(s).to_string())).collect()),
                    ),
                    ("query", text(all.iter().map(|s| s.query.clone()).collect())),
                    (
                        "query_started_at",
                        ts(all.iter().map(|s| s.query_started_at).collect()),
                    ),
                    (
                        "tls",
                        Arc::new(BooleanArray::from(
                            all.iter().map(|s| s.tls).collect::<Vec<_>>(),
                        )) as ArrayRef,
                    ),
                ])?
            }
            "checkpoints" => {
                let mut rows = Vec::new();
                for p in self.catalog.pipelines() {
                    for cp in self.runtime.checkpoints(&p.id)?.list().await? {
                        let bytes = serde_json::to_vec(&cp).map(|b| b.len() as u64).unwrap_or(0);
                        rows.push((p.name.clone(), cp, bytes));
                    }
                }
                table(vec![
                    (
                        "pipeline",
                        text(rows.iter().map(|r| Some(r.0.clone())).collect()),
                    ),
                    ("epoch", count(rows.iter().map(|r| r.1.epoch).collect())),
                    ("at", ts(rows.iter().map(|r| Some(r.1.at)).collect())),
                    (
                        "duration_ms",
                        count(rows.iter().map(|r| r.1.duration_ms).collect()),
                    ),
                    ("bytes", count(rows.iter().map(|r| r.2).collect())),
                    ("rows_in", count(rows.iter().map(|r| r.1.rows_in).collect())),
                    (
                        "rows_out",
                        count(rows.iter().map(|r| r.1.rows_out).collect()),
                    ),
                ])?
            }
            "source_lag" => {
                let mut rows = Vec::new();
                for st in self.runtime.statuses() {
                    for (source, l) in st.lag() {
                        let split = st.split_watermark(&source, &l.partition);
                        rows.push((st.name.clone(), source, l, split));
                    }
                }
                rows.sort_by(|a, b| {
                    (&a.0, &a.1, &a.2.partition).cmp(&(&b.0, &b.1, &b.2.partition))
                });
                table(vec![
                    (
                        "pipeline",
                        text(rows.iter().map(|r| Some(r.0.clone())).collect()),
                    ),
                    (
                        "source",
                        text(rows.iter().map(|r| Some(r.1.clone())).collect()),
                    ),
                    (
                        "partition",
                        text(rows.iter().map(|r| Some(r.2.partition.clone())).collect()),
                    ),
                    ("position", int(rows.iter().map(|r| r.2.position).collect())),
                    ("latest", int(rows.iter().map(|r| r.2.latest).collect())),
                    (
                        "lag",
                        int(rows
                            .iter()
                            .map(|r| (r.2.latest - r.2.position).max(0))
                            .collect()),
                    ),
                    (
                        "confirmed",
                        int_opt(rows.iter().map(|r| r.2.confirmed).collect()),
                    ),
                    (
                        "position_lsn",
                        text(rows.iter().map(|r| lsn_text(&r.2, r.2.position)).collect()),
                    ),
                    (
                        "latest_lsn",
                        text(rows.iter().map(|r| lsn_text(&r.2, r.2.latest)).collect()),
                    ),
                    (
                        "confirmed_lsn",
                        text(
                            rows.iter()
                                .map(|r| r.2.confirmed.and_then(|c| lsn_text(&r.2, c)))
                                .collect(),
                        ),
                    ),
                    (
                        "watermark",
                        ts(rows
                            .iter()
                            .map(|r| r.3.as_ref()?.watermark.and_then(watermark_time))
                            .collect()),
                    ),
                    (
                        "idle",
                        Arc::new(arrow::array::BooleanArray::from(
                            rows.iter()
                                .map(|r| r.3.as_ref().map(|s| s.idle))
                                .collect::<Vec<_>>(),
                        )),
                    ),
                    (
                        "lag_seconds",
                        Arc::new(arrow::array::Float64Array::from(
                            rows.iter().map(|r| r.2.lag_seconds).collect::<Vec<_>>(),
                        )),
                    ),
                ])?
            }
            "operators" => {
                let now = Utc::now();
                let mut rows = Vec::new();
                for st in self.runtime.statuses() {
                    let started = st.snapshot().started_at;
                    for mut op in st.operators() {
                        let ratio = started.map(|s| {
                            let elapsed = (now - s).to_std().unwrap_or_default().as_secs_f64();
                            (op.busy.as_secs_f64() / elapsed.max(1e-3)).min(1.0)
                        });
                        // A parallel operator shows a row per instance.
                        let instances = std::mem::take(&mut op.instances);
                        if instances.is_empty() {
                            rows.push((st.name.clone(), op, ratio, 0));
                        } else {
                            for (i, figures) in instances.into_iter().enumerate() {
                                let op = OperatorStats {
                                    rows_in: figures.rows_in,
                                    rows_out: figures.rows_out,
                                    state_rows: figures.state_rows,
                                    state_bytes: figures.state_bytes,
                                    spilled_bytes: figures.spilled_bytes,
                                    ..op.clone()
                                };
                                rows.push((st.name.clone(), op, ratio, i as i64));
                            }
                        }
                    }
                }
                rows.sort_by(|a, b| a.0.cmp(&b.0));
                table(vec![
                    (
                        "pipeline",
                        text(rows.iter().map(|r| Some(r.0.clone())).collect()),
                    ),
                    (
                        "operator",
                        text(rows.iter().map(|r| Some(r.1.id.clone())).collect()),
                    ),
                    (
                        "kind",
                        text(rows.iter().map(|r| Some(r.1.kind.clone())).collect()),
                    ),
                    ("instance", int(rows.iter().map(|r| r.3).collect())),
                    ("rows_in", count(rows.iter().map(|r| r.1.rows_in).collect())),
                    (
                        "rows_out",
                        count(rows.iter().map(|r| r.1.rows_out).collect()),
                    ),
                    (
                        "state_rows",
                        count(rows.iter().map(|r| r.1.state_rows).collect()),
                    ),
                    (
                        "state_bytes",
                        count(rows.iter().map(|r| r.1.state_bytes).collect()),
                    ),
                    (
                        "spilled_bytes",
                        count(rows.iter().map(|r| r.1.spilled_bytes).collect()),
                    ),
                    (
                        "watermark",
                        ts(rows
                            .iter()
                            .map(|r| r.1.watermark.and_then(watermark_time))
                            .collect()),
                    ),
                    (
                        "busy_ratio",
                        Arc::new(arrow::array::Float64Array::from(
                            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                        )) as ArrayRef,
                    ),
                    (
                        "inputs",
                        text(rows.iter().map(|r| Some(r.1.inputs.join(", "))).collect()),
                    ),
                ])?
            }
            "commits" => {
                let statuses = self.runtime.statuses();
                let rows: Vec<_> = statuses
                    .iter()
                    .flat_map(|st| st.commits().into_iter().map(|c| (st.name.clone(), c)))
                    .collect();
                table(vec![
                    (
                        "pipeline",
                        text(rows.iter().map(|r| Some(r.0.clone())).collect()),
                    ),
                    ("epoch", count(rows.iter().map(|r| r.1.epoch).collect())),
                    ("at", ts(rows.iter().map(|r| Some(r.1.at)).collect())),
                    (
                        "checkpoint_ms",
                        count(rows.iter().map(|r| r.1.checkpoint_ms).collect()),
                    ),
                    (
                        "commit_ms",
                        count(rows.iter().map(|r| r.1.commit_ms).collect()),
                    ),
                    ("bytes", count(rows.iter().map(|r| r.1.bytes).collect())),
                    ("rows_in", count(rows.iter().map(|r| r.1.rows_in).collect())),
                    (
                        "rows_out",
                        count(rows.iter().map(|r| r.1.rows_out).collect()),
                    ),
                    (
                        "sink_commit",
                        text(rows.iter().map(|r| r.1.sink.clone()).collect()),
                    ),
                ])?
            }
            "durations" => {
                // A row per pipeline, measure and bucket: observations at or under `le` seconds.
                let mut rows = Vec::new();
                let statuses = self.runtime.statuses();
                for st in statuses {
                    for (measure, histogram) in [
                        ("checkpoint", &st.checkpoint_durations),
                        ("sink_commit", &st.commit_durations),
                    ] {
                        let h = histogram.snapshot();
                        for (le, n) in h.cumulative {
                            rows.push((st.name.clone(), measure, le, n, h.sum_seconds));
                        }
                    }
                }
                let floats =
                    |v: Vec<f64>| Arc::new(arrow::array::Float64Array::from(v)) as ArrayRef;
                table(vec![
                    (
                        "pipeline",
                        text(rows.iter().map(|r| Some(r.0.clone())).collect()),
                    ),
                    (
                        "measure",
                        text(rows.iter().map(|r| Some(r.1.to_string())).collect()),
                    ),
                    ("le", floats(rows.iter().map(|r| r.2).collect())),
                    ("count", count(rows.iter().map(|r| r.3).collect())),
                    ("sum_seconds", floats(rows.iter().map(|r| r.4).collect())),
                ])?
            }
            "events" => {
                let events = self.catalog.events().events();
                table(vec![
                    ("at", ts(events.iter().map(|e| Some(e.at)).collect())),
                    (
                        "kind",
                        text(events.iter().map(|e| Some(e.kind.clone())).collect()),
                    ),
                    (
                        "object_kind",
                        text(events.iter().map(|e| Some(e.object_kind.clone())).collect()),
                    ),
                    (
                        "object",
                        text(events.iter().map(|e| Some(e.object.clone())).collect()),
                    ),
                    (
                        "message",
                        text(events.iter().map(|e| Some(e.message.clone())).collect()),
                    ),
                ])?
            }
            _ => return Ok(None),
        };
        Ok(Some(batch))
    }
}

/// `name TYPE, ...`.
pub fn columns_text(columns: &[crate::catalog::ColumnEntry]) -> String {
    columns
        .iter()
        .map(|c| {
            let t = c
                .data_type
                .parse::<DataType>()
                .map(|t| sql_type_name(&t))
                .unwrap_or_else(|_| c.data_type.clone());
            if c.nullable {
                format!("{} {t}", c.name)
            } else {
                format!("{} {t} NOT NULL", c.name)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|s| s.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        match self
            .build(name)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
        {
            Some(batch) => Ok(Some(Arc::new(MemTable::try_new(
                batch.schema(),
                vec![vec![batch]],
            )?))),
            None => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}
