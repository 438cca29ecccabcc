//! The `kafka` connector: a source reading every partition of a topic (JSON, CSV or raw values)
//! with its offsets kept in Tributary's checkpoints, and a sink writing rows as JSON messages,
//! one Kafka transaction per checkpoint.

mod debezium;
mod decode;
mod metadata;
mod reader;
mod sink;
mod source;
mod transactions;
mod upsert;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rdkafka::ClientConfig;

use crate::error::{ConnectorError, Result};
use crate::format::schema_registry::SchemaRegistry;
use crate::options::{OptionSpec, Options};
pub use sink::KafkaSinkConnector;
pub use source::KafkaSourceConnector;

const SOURCE_OPTIONS: &[OptionSpec] = &[
    OptionSpec::required(
        "bootstrap_servers",
        "broker addresses, e.g. 'localhost:9092'",
    ),
    OptionSpec::required("topic", "the topic to read; every partition is read"),
    OptionSpec::optional(
        "format",
        "json (default), csv, raw (one text column 'value'), avro (with avro_schema) or debezium-json (Debezium's change events: rows with _op)",
    ),
    OptionSpec::optional(
        "avro_schema",
        "format = 'avro': the Avro schema (JSON) of every message value, a record (with a schema registry: the schema values are read as)",
    ),
    OptionSpec::optional(
        "schema_registry_url",
        "format = 'avro': a Confluent-compatible schema registry; values carry the id of their schema there",
    ),
    OptionSpec::optional(
        "schema_registry_subject",
        "the subject whose latest schema gives the columns when none are declared (default '<topic>-value')",
    ),
    OptionSpec::optional("schema_registry_username", "HTTP basic user for the schema registry"),
    OptionSpec::optional("schema_registry_password", "HTTP basic password for the schema registry"),
    OptionSpec::optional(
        "start_from",
        "earliest (default), latest or timestamp: where a first run starts",
    ),
    OptionSpec::optional(
        "start_timestamp",
        "start_from = 'timestamp': the first messages read are those at or after this time (UTC)",
    ),
    OptionSpec::optional(
        "header",
        "csv: whether messages start with a header line (default false)",
    ),
    OptionSpec::optional("delimiter", "csv: field delimiter (default ',')"),
    OptionSpec::optional("batch_size", "records per batch (default 8192)"),
    OptionSpec::optional(
        "readers",
        "tasks reading the partitions in parallel, each its share (default: one per core, at most one per partition)",
    ),
    OptionSpec::optional(
        "mode",
        "append (default) or upsert: each message the latest row of its key (the PRIMARY KEY), a tombstone a delete",
    ),
];

const SINK_OPTIONS: &[OptionSpec] = &[
    OptionSpec::required(
        "bootstrap_servers",
        "broker addresses, e.g. 'localhost:9092'",
    ),
    OptionSpec::required("topic", "the topic to write"),
    OptionSpec::optional("format", "json (default) or avro"),
    OptionSpec::optional(
        "avro_schema",
        "format = 'avro': the Avro schema (JSON) to write values with (default: a record of the columns)",
    ),
    OptionSpec::optional(
        "schema_registry_url",
        "format = 'avro': a Confluent-compatible schema registry; the schema is registered there and values carry its id",
    ),
    OptionSpec::optional(
        "schema_registry_subject",
        "the subject the schema is registered under (default '<topic>-value')",
    ),
    OptionSpec::optional("schema_registry_username", "HTTP basic user for the schema registry"),
    OptionSpec::optional("schema_registry_password", "HTTP basic password for the schema registry"),
    OptionSpec::optional(
        "key",
        "the key columns: one column's value as text, several as a JSON object; messages are partitioned by key (upsert: default the source's primary key)",
    ),
    OptionSpec::optional(
        "delivery",
        "exactly_once (default: one Kafka transaction per checkpoint) or at_least_once (no transactions)",
    ),
    OptionSpec::optional(
        "compression",
        "none (default), gzip, snappy, lz4 or zstd",
    ),
    OptionSpec::optional(
        "linger_ms",
        "how long the producer waits to fill a batch (librdkafka's default 5)",
    ),
    OptionSpec::optional(
        "mode",
        "append (default) or upsert: each message keyed by the key columns as a JSON object, a delete as a tombstone",
    ),
];

/// The schema registry named by `schema_registry_url` (for `format = 'avro'` only), and the
/// subject of the topic's values.
fn schema_registry(
    opts: &Options,
    avro: bool,
    topic: &str,
) -> Result<Option<(Arc<SchemaRegistry>, String)>> {
    let Some(url) = opts.get("schema_registry_url") else {
        for o in [
            "schema_registry_subject",
            "schema_registry_username",
            "schema_registry_password",
        ] {
            if opts.get(o).is_some() {
                return Err(ConnectorError::Config(format!(
                    "{o} needs schema_registry_url"
                )));
            }
        }
        return Ok(None);
    };
    if !avro {
        return Err(ConnectorError::Config(
            "schema_registry_url is for format = 'avro'".into(),
        ));
    }
    let registry = SchemaRegistry::new(
        url,
        opts.get("schema_registry_username"),
        opts.get("schema_registry_password"),
    )?;
    let subject = opts
        .get("schema_registry_subject")
        .map_or_else(|| format!("{topic}-value"), str::to_string);
    Ok(Some((Arc::new(registry), subject)))
}

/// Message value formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaFormat {
    /// One JSON object per message.
    Json,
    /// One CSV record per message.
    Csv,
    /// The value as text, in a column `value`.
    Raw,
    /// Debezium's JSON change events, as rows with `_op`.
    DebeziumJson,
    /// One Avro datum per message, of the `avro_schema` record.
    Avro,
}

/// Client settings shared by sources and sinks; `properties.*` options pass through to librdkafka.
fn client_config(opts: &BTreeMap<String, String>) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    if let Some(b) = opts.get("bootstrap_servers") {
        cfg.set("bootstrap.servers", b);
    }
    for (k, v) in opts {
        if let Some(prop) = k.strip_prefix("properties.") {
            cfg.set(prop, v);
        }
    }
    cfg
}

/// Options minus the `properties.*` pass-through keys, for validation.
fn without_properties(opts: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    opts.iter()
        .filter(|(k, _)| !k.starts_with("properties."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn format_of(opts: &Options) -> Result<KafkaFormat> {
    Ok(
        match opts.get_choice(
            "format",
            &["json", "csv", "raw", "debezium-json", "avro"],
            "json",
        )? {
            "avro" => KafkaFormat::Avro,
            "csv" => KafkaFormat::Csv,
            "raw" => KafkaFormat::Raw,
            "debezium-json" => KafkaFormat::DebeziumJson,
            _ => KafkaFormat::Json,
        },
    )
}

/// The schema of a raw-format source.
pub fn raw_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("value", DataType::Utf8, true)]))
}

fn kafka_error(context: impl Into<String>, e: rdkafka::error::KafkaError) -> ConnectorError {
    ConnectorError::io(context, e)
}
