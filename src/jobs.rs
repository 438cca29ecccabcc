//! Turns a catalog pipeline into a job for the data plane: its compiled query, its settings from
//! the WITH options, its source and its sink, checked against each other.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use datafusion::sql::sqlparser::ast;
pub use tributary_connectors::options::{parse_duration, parse_size};
use tributary_connectors::{SinkConnector, SinkSpec, SourceSpec};

use crate::catalog::{columns_of, Catalog, SinkEntry};
use crate::error::{Error, Result};
use crate::runtime::pipeline::{JobInput, OnError, PipelineJob, PipelineSettings};
use crate::sql::parse::{parse_statement, Statement};
use crate::sql::plan::{compile, Target};

/// Compiles a catalog pipeline into a job for the data plane. The job can rebuild itself after
/// its source's schema grew (an upstream ADD COLUMN): the catalog learns the new columns first.
pub(crate) fn build_job(
    catalog: Arc<Catalog>,
    state: datafusion::execution::SessionState,
    name: String,
) -> futures::future::BoxFuture<'static, Result<PipelineJob>> {
    Box::pin(async move {
        let entry = catalog.pipeline(&name).ok_or_else(|| Error::NotFound {
            kind: "pipeline",
            name: name.clone(),
        })?;
        let Statement::Sql(stmt) = parse_statement(&entry.query)? else {
            return Err(Error::Internal(format!(
                "pipeline {name} has an unreadable query"
            )));
        };
        let ast::Statement::Query(query) = *stmt else {
            return Err(Error::Internal(format!(
                "pipeline {name} query is not a SELECT"
            )));
        };
        let sink_entry = catalog.sink(&entry.sink).ok_or_else(|| Error::NotFound {
            kind: "sink",
            name: entry.sink.clone(),
        })?;
        // Its connector reads its options: secrets as their values.
        let sink_entry = SinkEntry {
            options: catalog.resolve_options(&sink_entry.options)?,
            ..sink_entry
        };
        let settings = pipeline_settings(&entry.options)?;
        let target = Target {
            applies_by_key: applies_by_key(&sink_entry)?,
            groups_expire: settings.state_ttl.is_some(),
        };
        let plan = compile(&state, &query, target).await?;
        let mut inputs = Vec::with_capacity(plan.inputs.len());
        let mut source_key = Vec::new();
        for input in &plan.inputs {
            let source_entry = catalog
                .source(&input.source)
                .ok_or_else(|| Error::NotFound {
                    kind: "source",
                    name: input.source.clone(),
                })?;
            if plan.inputs.len() == 1 {
                source_key = source_entry.primary_key.clone();
            }
            inputs.push(job_input(&catalog, &source_entry)?);
        }
        let replan: crate::runtime::pipeline::Replan = {
            let catalog = catalog.clone();
            let name = name.clone();
            Arc::new(move |source: String, schema: SchemaRef| {
                let catalog = catalog.clone();
                let state = state.clone();
                let name = name.clone();
                Box::pin(async move {
                    catalog.evolve_source(&source, columns_of(&schema)).await?;
                    build_job(catalog, state, name).await
                })
            })
        };
        // An aggregate's updates are keyed by its GROUP BY columns.
        let primary_key = plan.output_key.clone().unwrap_or(source_key);
        Ok(PipelineJob {
            plan,
            settings,
            inputs,
            primary_key,
            sink_spec: SinkSpec {
                name: sink_entry.name.clone(),
                options: sink_entry.options.clone(),
            },
            sink_connector: tributary_connectors::sink_connector(&sink_entry.options)?,
            entry,
            replan: Some(replan),
        })
    })
}

/// What a run needs to read `source`: its spec, schema (with its added columns and primary key
/// as metadata) and connector.
fn job_input(catalog: &Catalog, source: &crate::catalog::SourceEntry) -> Result<JobInput> {
    let mut metadata = std::collections::HashMap::new();
    if !source.added_columns.is_empty() {
        metadata.insert(
            tributary_connectors::ADDED_COLUMNS_METADATA.to_string(),
            source.added_columns.join(","),
        );
    }
    if !source.primary_key.is_empty() {
        metadata.insert(
            tributary_connectors::PRIMARY_KEY_METADATA.to_string(),
            source.primary_key.join(","),
        );
    }
    let schema = crate::catalog::schema_of(&source.columns)?;
    let schema = Arc::new(schema.as_ref().clone().with_metadata(metadata));
    Ok(JobInput {
        spec: SourceSpec {
            name: source.name.clone(),
            schema: Some(schema.clone()),
            options: catalog.resolve_options(&source.options)?,
        },
        schema,
        connector: tributary_connectors::source_connector(&source.options)?,
    })
}

/// Whether `sink` applies rows by key (an upsert sink): a change stream written to it is a table.
pub(crate) fn applies_by_key(sink: &SinkEntry) -> Result<bool> {
    Ok(upsert_key(sink)?.1.is_some())
}

/// A sink's connector, and the key it applies rows by (`None`: it only appends; empty: the
/// pipeline's key).
type SinkWithKey = (Arc<dyn SinkConnector>, Option<Vec<String>>);

/// The sink's connector and key.
fn upsert_key(sink: &SinkEntry) -> Result<SinkWithKey> {
    let connector = tributary_connectors::sink_connector(&sink.options)?;
    let key = connector.upsert_key(&SinkSpec {
        name: sink.name.clone(),
        options: sink.options.clone(),
    })?;
    Ok((connector, key))
}

/// An aggregate's updates need a sink that applies rows by key, on the GROUP BY columns; the
/// first rows of a ROW_NUMBER() (`ranked`), on the PARTITION BY columns and row number.
pub(crate) fn check_updates_sink(sink: &SinkEntry, key: &[String], ranked: bool) -> Result<()> {
    let (connector, upsert_key) = upsert_key(sink)?;
    match upsert_key {
        // A blackhole keeps nothing, updates included (benchmarks).
        None if connector.name() == "blackhole" => Ok(()),
        None if ranked => Err(Error::Unsupported(format!(
            "a ROW_NUMBER() kept to its first rows emits updates (each changed partition's rows again), and sink \"{}\" ({}) only appends: \
             write it to a sink that applies rows by key, a delta, postgres or kafka sink with mode = 'upsert'",
            sink.name,
            connector.name()
        ))),
        None => Err(Error::Unsupported(format!(
            "a GROUP BY without a window emits updates (each changed group again), and sink \"{}\" ({}) only appends: \
             write it to a sink that applies rows by key, a delta, postgres or kafka sink with mode = 'upsert', \
             or GROUP BY a window (FROM TUMBLE(...) ... GROUP BY window_start, window_end, ...) to emit each row once",
            sink.name,
            connector.name()
        ))),
        Some(k) if !k.is_empty() && k != key => Err(Error::Plan(format!(
            "sink \"{}\" applies rows by key ({}), but the pipeline's updates are keyed by its {} ({}): \
             drop the sink's key option or make it match",
            sink.name,
            k.join(", "),
            if ranked { "PARTITION BY columns (and row number)" } else { "GROUP BY columns" },
            key.join(", ")
        ))),
        Some(_) => Ok(()),
    }
}

/// Checks that `sink` applies rows by key and names the key a join of two change streams' rows
/// are applied by.
pub(crate) fn check_change_join_sink(sink: &SinkEntry) -> Result<()> {
    let (connector, upsert_key) = upsert_key(sink)?;
    match upsert_key {
        // A blackhole keeps nothing, updates included (benchmarks).
        None if connector.name() == "blackhole" => Ok(()),
        None => Err(Error::Unsupported(format!(
            "a join of two change streams emits updates (each joined row again when either side changes, and deletes), and sink \"{}\" ({}) only appends: \
             write it to a sink that applies rows by key, a delta, postgres or kafka sink with mode = 'upsert' and key = '...' (the columns that name a joined row)",
            sink.name,
            connector.name()
        ))),
        Some(k) if k.is_empty() => Err(Error::Plan(format!(
            "sink \"{}\" applies rows by key but names none, and a join of two change streams has no key of its own: \
             give the sink key = '...', the columns that name a joined row (the left table's primary key when each of its rows joins one row, else both tables')",
            sink.name
        ))),
        _ => Ok(()),
    }
}

/// Default time between checkpoints.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

const PIPELINE_OPTIONS: &[&str] = &[
    "mode",
    "checkpoint_interval",
    "on_error",
    "on_late",
    "idle_timeout",
    "parallelism",
    "state_ttl",
    "state_memory",
];

/// How long a split (a Kafka partition) may give no rows before it stops holding the
/// watermark back.
const DEFAULT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub(crate) fn check_pipeline_options(options: &BTreeMap<String, String>) -> Result<()> {
    for k in options.keys() {
        if !PIPELINE_OPTIONS.contains(&k.as_str()) {
            return Err(Error::Connector(
                tributary_connectors::ConnectorError::UnknownOption {
                    connector: "pipeline".into(),
                    option: k.clone(),
                    accepted: PIPELINE_OPTIONS.join(", "),
                },
            ));
        }
    }
    pipeline_settings(options).map(|_| ())
}

fn pipeline_settings(options: &BTreeMap<String, String>) -> Result<PipelineSettings> {
    let invalid = |k: &str, v: &str, reason: &str| {
        Error::Connector(tributary_connectors::ConnectorError::InvalidOption {
            option: k.into(),
            value: v.into(),
            reason: reason.into(),
        })
    };
    let mode = match options.get("mode").map(|s| s.to_ascii_lowercase()) {
        None => "batch".to_string(),
        Some(m) if m == "batch" || m == "streaming" => m,
        Some(m) => return Err(invalid("mode", &m, "expected batch or streaming")),
    };
    let on_error = match options.get("on_error").map(|s| s.to_ascii_lowercase()) {
        None => OnError::Skip,
        Some(m) if m == "skip" => OnError::Skip,
        Some(m) if m == "fail" => OnError::Fail,
        Some(m) => return Err(invalid("on_error", &m, "expected skip or fail")),
    };
    let checkpoint_interval = match options.get("checkpoint_interval") {
        None => DEFAULT_CHECKPOINT_INTERVAL,
        Some(v) => parse_duration(v).ok_or_else(|| {
            invalid(
                "checkpoint_interval",
                v,
                "expected a duration such as '500ms', '10s' or '1m'",
            )
        })?,
    };
    let keep_late = match options.get("on_late").map(|s| s.to_ascii_lowercase()) {
        None => false,
        Some(m) if m == "drop" => false,
        Some(m) if m == "errors" => true,
        Some(m) => return Err(invalid("on_late", &m, "expected drop or errors")),
    };
    let idle_timeout = match options.get("idle_timeout") {
        None => DEFAULT_IDLE_TIMEOUT,
        Some(v) => parse_duration(v).filter(|d| !d.is_zero()).ok_or_else(|| {
            invalid(
                "idle_timeout",
                v,
                "expected a positive duration such as '30s' or '5m'",
            )
        })?,
    };
    let most = crate::runtime::operator::parallel::KEY_GROUPS;
    let parallelism = match options.get("parallelism") {
        // One per core, less the one the source reader and the sink keep busy.
        None => std::thread::available_parallelism()
            .map_or(1, |n| n.get().saturating_sub(1).clamp(1, most)),
        Some(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=most).contains(n))
            .ok_or_else(|| {
                invalid(
                    "parallelism",
                    v,
                    &format!("expected a number of instances from 1 to {most}"),
                )
            })?,
    };
    let state_ttl = match options.get("state_ttl") {
        None => None,
        Some(v) => Some(parse_duration(v).ok_or_else(|| {
            invalid(
                "state_ttl",
                v,
                "expected a duration such as '7 days', '12h' or '30m'",
            )
        })?),
    };
    let least = crate::runtime::memory::MIN_STATE_MEMORY;
    let state_memory = match options.get("state_memory") {
        None => None,
        Some(v) => Some(parse_size(v).filter(|n| *n >= least).ok_or_else(|| {
            invalid(
                "state_memory",
                v,
                "expected a size of at least 4 MB, such as '512 MB' or '2 GB'",
            )
        })?),
    };
    Ok(PipelineSettings {
        mode,
        parallelism,
        state_ttl,
        state_memory,
        checkpoint_interval,
        on_error,
        keep_late,
        idle_timeout,
    })
}
