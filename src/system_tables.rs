//! The schemas the SQL front end queries: `public` (sources and sinks as tables, resolved fresh
//! at every query) and `tributary` (live system tables built from the catalog and the runtime).

use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray, TimestampMicrosecondArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use tributary_connectors::{redact, SinkSpec, SourceSpec};

use crate::catalog::{schema_of, Catalog, PipelineState};
use crate::runtime::source_table::SourceTable;
use crate::runtime::Runtime;
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
    let Some(entry) = catalog.source(name) else { return Ok(None) };
    let schema = schema_of(&entry.columns)?;
    let connector = tributary_connectors::source_connector(&entry.options)?;
    let spec = SourceSpec { name: entry.name.clone(), schema: Some(schema.clone()), options: entry.options.clone() };
    Ok(Some(SourceTable::new(spec, schema, connector)))
}

#[async_trait]
impl SchemaProvider for CatalogSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.catalog.sources().into_iter().map(|s| s.name).collect();
        names.extend(self.catalog.sinks().into_iter().map(|s| s.name));
        names
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(t) = source_table(&self.catalog, name).map_err(|e| DataFusionError::External(Box::new(e)))? {
            return Ok(Some(Arc::new(t)));
        }
        if let Some(sink) = self.catalog.sink(name) {
            let connector = tributary_connectors::sink_connector(&sink.options).map_err(|e| DataFusionError::External(Box::new(e)))?;
            let spec = SinkSpec { name: sink.name.clone(), options: sink.options.clone() };
            return match connector.table(&spec).await.map_err(|e| DataFusionError::External(Box::new(e)))? {
                Some(t) => Ok(Some(t)),
                None if connector.name() == "blackhole" => {
                    Err(DataFusionError::Plan(format!("sink \"{name}\" is a blackhole: it keeps nothing to query")))
                }
                None => Ok(Some(Arc::new(MemTable::try_new(Arc::new(Schema::empty()), vec![vec![]])?))),
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
}

impl std::fmt::Debug for SystemSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SystemSchema")
    }
}

impl SystemSchema {
    /// System tables over the catalog and runtime.
    pub fn new(catalog: Arc<Catalog>, runtime: Arc<Runtime>) -> Self {
        SystemSchema { catalog, runtime }
    }
}

const TABLES: &[&str] = &["pipelines", "sources", "sinks", "errors", "checkpoints", "source_lag"];

fn text(v: Vec<Option<String>>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}
fn count(v: Vec<u64>) -> ArrayRef {
    Arc::new(UInt64Array::from(v))
}
fn ts(v: Vec<Option<DateTime<Utc>>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v.into_iter().map(|t| t.map(|t| t.timestamp_micros())).collect::<Vec<_>>()).with_timezone("UTC"))
}
fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// `k = 'v', ...` with secrets redacted.
pub fn options_text(options: &std::collections::BTreeMap<String, String>) -> String {
    options.iter().map(|(k, v)| format!("{k} = '{}'", redact(k, v).replace('\'', "''"))).collect::<Vec<_>>().join(", ")
}

impl SystemSchema {
    async fn build(&self, name: &str) -> crate::error::Result<Option<RecordBatch>> {
        let batch = match name {
            "pipelines" => {
                let entries = self.catalog.pipelines();
                let mut cols: (Vec<_>, Vec<_>, Vec<_>, Vec<_>, Vec<_>) = Default::default();
                let (mut rin, mut rout, mut rerr, mut epoch, mut started, mut ckpt, mut error, mut source, mut sink) =
                    (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
                for p in &entries {
                    let mode = p.options.get("mode").cloned().unwrap_or_default();
                    let st = self.runtime.status(&p.name, &mode, p.state, p.error.clone()).snapshot();
                    cols.0.push(Some(p.name.clone()));
                    cols.1.push(Some(st.mode.clone()));
                    cols.2.push(Some(st.state.as_str().to_string()));
                    cols.3.push(Some(p.id.clone()));
                    cols.4.push(Some(p.query.clone()));
                    rin.push(st.rows_in);
                    rout.push(st.rows_out);
                    rerr.push(st.rows_errored);
                    epoch.push(st.epoch);
                    started.push(st.started_at);
                    ckpt.push(st.last_checkpoint_at);
                    error.push(st.error.clone().or_else(|| (st.state == PipelineState::Failed).then(|| p.error.clone()).flatten()));
                    source.push(Some(p.sources.join(", ")));
                    sink.push(Some(p.sink.clone()));
                }
                let schema = Schema::new(vec![
                    Field::new("name", DataType::Utf8, true),
                    Field::new("mode", DataType::Utf8, true),
                    Field::new("state", DataType::Utf8, true),
                    Field::new("source", DataType::Utf8, true),
                    Field::new("sink", DataType::Utf8, true),
                    Field::new("rows_in", DataType::UInt64, false),
                    Field::new("rows_out", DataType::UInt64, false),
                    Field::new("rows_errored", DataType::UInt64, false),
                    Field::new("epoch", DataType::UInt64, false),
                    Field::new("started_at", ts_type(), true),
                    Field::new("last_checkpoint_at", ts_type(), true),
                    Field::new("error", DataType::Utf8, true),
                    Field::new("id", DataType::Utf8, true),
                    Field::new("query", DataType::Utf8, true),
                ]);
                RecordBatch::try_new(
                    Arc::new(schema),
                    vec![
                        text(cols.0),
                        text(cols.1),
                        text(cols.2),
                        text(source),
                        text(sink),
                        count(rin),
                        count(rout),
                        count(rerr),
                        count(epoch),
                        ts(started),
                        ts(ckpt),
                        text(error),
                        text(cols.3),
                        text(cols.4),
                    ],
                )?
            }
            "sources" => {
                let entries = self.catalog.sources();
                let schema = Schema::new(vec![
                    Field::new("name", DataType::Utf8, true),
                    Field::new("connector", DataType::Utf8, true),
                    Field::new("options", DataType::Utf8, true),
                    Field::new("schema", DataType::Utf8, true),
                    Field::new("created_at", ts_type(), true),
                ]);
                RecordBatch::try_new(
                    Arc::new(schema),
                    vec![
                        text(entries.iter().map(|e| Some(e.name.clone())).collect()),
                        text(entries.iter().map(|e| e.options.get("connector").cloned()).collect()),
                        text(entries.iter().map(|e| Some(options_text(&e.options))).collect()),
                        text(entries.iter().map(|e| Some(columns_text(&e.columns))).collect()),
                        ts(entries.iter().map(|e| Some(e.created_at)).collect()),
                    ],
                )?
            }
            "sinks" => {
                let entries = self.catalog.sinks();
                let schema = Schema::new(vec![
                    Field::new("name", DataType::Utf8, true),
                    Field::new("connector", DataType::Utf8, true),
                    Field::new("options", DataType::Utf8, true),
                    Field::new("created_at", ts_type(), true),
                ]);
                RecordBatch::try_new(
                    Arc::new(schema),
                    vec![
                        text(entries.iter().map(|e| Some(e.name.clone())).collect()),
                        text(entries.iter().map(|e| e.options.get("connector").cloned()).collect()),
                        text(entries.iter().map(|e| Some(options_text(&e.options))).collect()),
                        ts(entries.iter().map(|e| Some(e.created_at)).collect()),
                    ],
                )?
            }
            "errors" => {
                let entries = self.runtime.errors().snapshot();
                let schema = Schema::new(vec![
                    Field::new("pipeline", DataType::Utf8, true),
                    Field::new("source", DataType::Utf8, true),
                    Field::new("position", DataType::Utf8, true),
                    Field::new("error", DataType::Utf8, true),
                    Field::new("raw", DataType::Utf8, true),
                    Field::new("epoch", DataType::UInt64, false),
                    Field::new("at", ts_type(), true),
                ]);
                RecordBatch::try_new(
                    Arc::new(schema),
                    vec![
                        text(entries.iter().map(|e| Some(e.pipeline.clone())).collect()),
                        text(entries.iter().map(|e| Some(e.source.clone())).collect()),
                        text(entries.iter().map(|e| Some(e.position.clone())).collect()),
                        text(entries.iter().map(|e| Some(e.message.clone())).collect()),
                        text(entries.iter().map(|e| Some(e.raw.clone())).collect()),
                        count(entries.iter().map(|e| e.epoch).collect()),
                        ts(entries.iter().map(|e| Some(e.at)).collect()),
                    ],
                )?
            }
            "checkpoints" => {
                let mut rows = Vec::new();
                for p in self.catalog.pipelines() {
                    for cp in self.runtime.checkpoints(&p.id)?.list().await? {
                        let bytes = serde_json::to_vec(&cp).map(|b| b.len() as u64).unwrap_or(0);
                        rows.push((p.name.clone(), cp, bytes));
                    }
                }
                let schema = Schema::new(vec![
                    Field::new("pipeline", DataType::Utf8, true),
                    Field::new("epoch", DataType::UInt64, false),
                    Field::new("at", ts_type(), true),
                    Field::new("duration_ms", DataType::UInt64, false),
                    Field::new("bytes", DataType::UInt64, false),
                    Field::new("rows_in", DataType::UInt64, false),
                    Field::new("rows_out", DataType::UInt64, false),
                ]);
                RecordBatch::try_new(
                    Arc::new(schema),
                    vec![
                        text(rows.iter().map(|r| Some(r.0.clone())).collect()),
                        count(rows.iter().map(|r| r.1.epoch).collect()),
                        ts(rows.iter().map(|r| Some(r.1.at)).collect()),
                        count(rows.iter().map(|r| r.1.duration_ms).collect()),
                        count(rows.iter().map(|r| r.2).collect()),
                        count(rows.iter().map(|r| r.1.rows_in).collect()),
                        count(rows.iter().map(|r| r.1.rows_out).collect()),
                    ],
                )?
            }
            "source_lag" => {
                let mut rows = Vec::new();
                for st in self.runtime.statuses() {
                    for (source, l) in st.lag() {
                        rows.push((st.name.clone(), source, l));
                    }
                }
                rows.sort_by(|a, b| (&a.0, &a.1, &a.2.partition).cmp(&(&b.0, &b.1, &b.2.partition)));
                let schema = Schema::new(vec![
                    Field::new("pipeline", DataType::Utf8, true),
                    Field::new("source", DataType::Utf8, true),
                    Field::new("partition", DataType::Utf8, true),
                    Field::new("position", DataType::Int64, false),
                    Field::new("latest", DataType::Int64, false),
                    Field::new("lag", DataType::Int64, false),
                ]);
                let int = |v: Vec<i64>| -> ArrayRef { Arc::new(arrow::array::Int64Array::from(v)) };
                RecordBatch::try_new(
                    Arc::new(schema),
                    vec![
                        text(rows.iter().map(|r| Some(r.0.clone())).collect()),
                        text(rows.iter().map(|r| Some(r.1.clone())).collect()),
                        text(rows.iter().map(|r| Some(r.2.partition.clone())).collect()),
                        int(rows.iter().map(|r| r.2.position).collect()),
                        int(rows.iter().map(|r| r.2.latest).collect()),
                        int(rows.iter().map(|r| (r.2.latest - r.2.position).max(0)).collect()),
                    ],
                )?
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
            let t = c.data_type.parse::<DataType>().map(|t| sql_type_name(&t)).unwrap_or_else(|_| c.data_type.clone());
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
        match self.build(name).await.map_err(|e| DataFusionError::External(Box::new(e)))? {
            Some(batch) => Ok(Some(Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?))),
            None => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}
