//! The `postgres` source: a PostgreSQL table read whole (a batch pipeline, a preview), or looked
//! up by key from a join, which asks for the keys of each batch of its stream as it arrives.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, SimpleQueryMessage, Statement};

use super::types::{quote_ident, quote_literal, TextColumn};
use super::UpstreamTable;
use super::{
    check_declared, describe_table, is_transient, qualified, split_table, statement_error,
    table_schema, PgUrl,
};
use crate::error::{ConnectorError, Result};
use crate::options::{OptionSpec, Options};
use crate::{
    BadRecord, Lookup, LookupCache, ReadOptions, Source, SourceBatch, SourceConnector,
    SourcePosition, SourceSpec,
};

const OPTIONS: &[OptionSpec] = &[
    OptionSpec::required("url", "postgres://user:password@host:port/database"),
    OptionSpec::required(
        "table",
        "the upstream table: schema.table (public when omitted)",
    ),
    OptionSpec::optional(
        "batch_size",
        "rows per batch of a whole read (default 8192)",
    ),
    OptionSpec::optional(
        "lookup_cache_ttl",
        "how long a lookup join uses the rows it found for a key before asking again \
         (default: no cache, each batch asks for its keys)",
    ),
    OptionSpec::optional(
        "lookup_cache_rows",
        "rows a lookup join caches at most (default 100000 with lookup_cache_ttl; 0: no cache)",
    ),
    OptionSpec::optional(
        "lookup_max_retries",
        "retries of a failed lookup (connection lost, server restarting) before the pipeline \
         fails (default 8, waiting 100 ms, doubling up to 5 s)",
    ),
    OptionSpec::optional(
        "lookup_batch_keys",
        "keys asked for in one query at most (default 5000)",
    ),
];

const CURSOR: &str = "tributary_table_read";
const DEFAULT_CACHE_ROWS: usize = 100_000;
const DEFAULT_MAX_RETRIES: u32 = 8;
const DEFAULT_BATCH_KEYS: usize = 5000;
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(100);
const LONGEST_RETRY_WAIT: Duration = Duration::from_secs(5);

/// Parsed options of a `postgres` source.
#[derive(Debug, Clone)]
struct TableOptions {
    url: PgUrl,
    schema: String,
    table: String,
    batch_size: usize,
    cache: LookupCache,
    max_retries: u32,
}

impl TableOptions {
    fn parse(spec: &SourceSpec) -> Result<Self> {
        let opts = Options::validate("postgres", OPTIONS, &spec.options)?;
        let url = PgUrl::parse(opts.require("url")?)?;
        let (schema, table) = split_table(opts.require("table")?);
        let positive = |key: &str, default: usize| -> Result<usize> {
            match opts.get_u64(key)? {
                None => Ok(default),
                Some(0) => Err(ConnectorError::InvalidOption {
                    option: key.into(),
                    value: "0".into(),
                    reason: "expected a positive number".into(),
                }),
                Some(n) => Ok(n as usize),
            }
        };
        let ttl = opts.get_duration("lookup_cache_ttl")?;
        let rows = match opts.get_u64("lookup_cache_rows")? {
            Some(n) if ttl.is_none() && n > 0 => {
                return Err(ConnectorError::Config(
                    "lookup_cache_rows caches rows for lookup_cache_ttl: set both".into(),
                ))
            }
            Some(n) => n as usize,
            None if ttl.is_some() => DEFAULT_CACHE_ROWS,
            None => 0,
        };
        Ok(TableOptions {
            url,
            schema,
            table,
            batch_size: positive("batch_size", 8192)?,
            cache: LookupCache {
                rows,
                ttl,
                batch_keys: positive("lookup_batch_keys", DEFAULT_BATCH_KEYS)?,
            },
            max_retries: opts
                .get_u64("lookup_max_retries")?
                .map_or(DEFAULT_MAX_RETRIES, |n| n.min(100) as u32),
        })
    }

    fn qualified(&self) -> String {
        qualified(&self.schema, &self.table)
    }
}

/// `connector = 'postgres'`: a table read whole, or looked up by a join.
pub struct PostgresTableSourceConnector;

#[async_trait]
impl SourceConnector for PostgresTableSourceConnector {
    fn name(&self) -> &'static str {
        "postgres"
    }
    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }
    async fn validate(&self, spec: &SourceSpec) -> Result<SchemaRef> {
        let opts = TableOptions::parse(spec)?;
        let client = opts.url.connect().await?;
        let upstream = describe_table(&client, &opts.schema, &opts.table).await?;
        let inferred = table_schema(&upstream, Vec::new());
        let Some(declared) = &spec.schema else {
            return Ok(inferred);
        };
        check_declared(declared, &upstream, &opts.qualified(), |_| false)?;
        Ok(Arc::new(Schema::new_with_metadata(
            declared.fields().clone(),
            inferred.metadata().clone(),
        )))
    }
    fn is_bounded(&self, _spec: &SourceSpec) -> bool {
        true
    }
    async fn open(
        &self,
        spec: &SourceSpec,
        schema: SchemaRef,
        from: Option<SourcePosition>,
        _read: ReadOptions,
    ) -> Result<Box<dyn Source>> {
        let opts = TableOptions::parse(spec)?;
        let pos: TablePosition = SourcePosition::decode(from, "postgres")?;
        Ok(Box::new(TableRead::start(opts, schema, pos).await?))
    }
    fn looks_up(&self) -> bool {
        true
    }
    fn lookup(
        &self,
        spec: &SourceSpec,
        schema: SchemaRef,
        key: &[String],
    ) -> Result<Option<Box<dyn Lookup>>> {
        let opts = TableOptions::parse(spec)?;
        let mut key_columns = Vec::with_capacity(key.len());
        for k in key {
            let i = schema.index_of(k).map_err(|_| {
                ConnectorError::Config(format!("source \"{}\" has no column {k}", spec.name))
            })?;
            key_columns.push(i);
        }
        if key_columns.is_empty() {
            return Err(ConnectorError::Internal(
                "a lookup needs at least one key column".into(),
            ));
        }
        Ok(Some(Box::new(TableLookup {
            opts,
            schema,
            key_columns,
            connection: None,
        })))
    }
}

/// Rows of `schema` built from PostgreSQL's text output; a row with a value that does not
/// parse is not appended at all.
struct TextRows {
    columns: Vec<TextColumn>,
    rows: usize,
}

impl TextRows {
    fn new(schema: &Schema, capacity: usize) -> Self {
        TextRows {
            columns: schema
                .fields()
                .iter()
                .map(|f| TextColumn::new(f.data_type(), capacity))
                .collect(),
            rows: 0,
        }
    }

    /// Appends a row whose column `i` has the text `value(i)` (`None`: NULL).
    fn push<'a>(
        &mut self,
        value: impl Fn(usize) -> Option<&'a str>,
    ) -> std::result::Result<(), String> {
        let parsed = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| c.parse(value(i)))
            .collect::<std::result::Result<Vec<_>, String>>()?;
        for (c, p) in self.columns.iter_mut().zip(parsed) {
            c.append(p);
        }
        self.rows += 1;
        Ok(())
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        let columns = self.columns.iter_mut().map(TextColumn::finish).collect();
        self.rows = 0;
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

/// `SELECT` list of `schema`'s columns from `upstream`: NULL for a column it no longer has.
fn select_list(schema: &Schema, upstream: &UpstreamTable, as_text: bool) -> String {
    schema
        .fields()
        .iter()
        .map(|f| {
            if upstream.columns.iter().any(|c| c.name == *f.name()) {
                let c = quote_ident(f.name());
                if as_text {
                    format!("{c}::text")
                } else {
                    c
                }
            } else {
                "NULL::text".to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a whole read of a table is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct TablePosition {
    /// Primary key (text values) of the last row read.
    #[serde(default)]
    last_key: Option<Vec<Option<String>>>,
    /// Rows read.
    #[serde(default)]
    rows: u64,
    /// Every row was read.
    #[serde(default)]
    done: bool,
}

/// A table read whole in primary-key order, in one REPEATABLE READ snapshot; a read resumes
/// after the last key it gave.
struct TableRead {
    client: Client,
    schema: SchemaRef,
    /// Positions of the primary key's columns in the SELECT list.
    key: Vec<usize>,
    batch_size: usize,
    pos: TablePosition,
    /// The cursor is exhausted: the next batch is the last (its position says done).
    exhausted: bool,
}

impl TableRead {
    async fn start(opts: TableOptions, schema: SchemaRef, pos: TablePosition) -> Result<Self> {
        let client = opts.url.connect().await?;
        let upstream = describe_table(&client, &opts.schema, &opts.table).await?;
        let mut read = TableRead {
            client,
            key: Vec::new(),
            batch_size: opts.batch_size,
            schema: schema.clone(),
            pos,
            exhausted: false,
        };
        if read.pos.done {
            return Ok(read);
        }
        let keys = &upstream.primary_key;
        let mut select = schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect::<Vec<_>>();
        // The key travels after the schema's columns when the schema leaves it out.
        for k in keys {
            let at = match select.iter().position(|c| c == k) {
                Some(i) => i,
                None => {
                    select.push(k.clone());
                    select.len() - 1
                }
            };
            read.key.push(at);
        }
        let list = select
            .iter()
            .map(|c| {
                if upstream.columns.iter().any(|u| u.name == *c) {
                    quote_ident(c)
                } else {
                    "NULL".to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = format!(
            "DECLARE {CURSOR} NO SCROLL CURSOR FOR SELECT {list} FROM {}",
            opts.qualified()
        );
        if keys.is_empty() {
            if read.pos.rows > 0 {
                return Err(ConnectorError::Config(format!(
                    "table {} has no primary key, so a read stopped after {} rows cannot resume where it stopped; \
                     add a primary key upstream, or drop and create the pipeline again",
                    opts.qualified(),
                    read.pos.rows
                )));
            }
        } else {
            if let Some(last) = &read.pos.last_key {
                let lhs: Vec<String> = keys.iter().map(|k| quote_ident(k)).collect();
                let rhs: Vec<String> = keys
                    .iter()
                    .zip(last)
                    .map(|(k, v)| {
                        let ty = upstream
                            .columns
                            .iter()
                            .find(|c| &c.name == k)
                            .map_or("text", |c| c.type_name.as_str());
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
        }
        read.client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {sql}"
            ))
            .await
            .map_err(|e| statement_error(format!("reading {}", opts.qualified()), e))?;
        Ok(read)
    }
}

#[async_trait]
impl Source for TableRead {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        if self.pos.done {
            return Ok(None);
        }
        let mut rows = TextRows::new(&self.schema, self.batch_size);
        let mut bad = Vec::new();
        if !self.exhausted {
            let msgs = self
                .client
                .simple_query(&format!("FETCH {} FROM {CURSOR}", self.batch_size))
                .await
                .map_err(|e| ConnectorError::io("reading the table", e))?;
            let mut fetched = 0;
            for m in &msgs {
                let SimpleQueryMessage::Row(row) = m else {
                    continue;
                };
                fetched += 1;
                if !self.key.is_empty() {
                    self.pos.last_key = Some(
                        self.key
                            .iter()
                            .map(|i| row.get(*i).map(str::to_string))
                            .collect(),
                    );
                }
                if let Err(message) = rows.push(|i| row.get(i)) {
                    let values: Vec<Option<&str>> = (0..row.len()).map(|i| row.get(i)).collect();
                    bad.push(BadRecord {
                        position: format!("row {}", self.pos.rows + fetched),
                        message,
                        raw: format!("{values:?}"),
                    });
                }
            }
            self.pos.rows += fetched;
            self.exhausted = fetched < self.batch_size as u64;
        }
        if self.exhausted {
            self.pos.done = true;
            let _ = self.client.batch_execute("COMMIT").await;
        }
        let batch = rows.finish(&self.schema)?;
        let mut out = SourceBatch::new(
            batch,
            SourcePosition(serde_json::to_value(&self.pos).map_err(|e| {
                ConnectorError::Internal(format!("encoding a table position: {e}"))
            })?),
        );
        out.bad_records = bad;
        Ok(Some(out))
    }
}

/// A connection with the lookup's statement prepared on it.
struct Prepared {
    client: Client,
    statement: Statement,
}

/// Looks rows up by key with one `= ANY($1)` query per chunk of keys, reconnecting and retrying
/// what may succeed when tried again.
struct TableLookup {
    opts: TableOptions,
    schema: SchemaRef,
    /// The key columns, as indexes into `schema`.
    key_columns: Vec<usize>,
    connection: Option<Prepared>,
}

/// A failed attempt, and whether another may succeed.
struct Attempt {
    error: ConnectorError,
    retry: bool,
}

impl TableLookup {
    async fn connect(&self) -> std::result::Result<Prepared, Attempt> {
        let retry = |error: ConnectorError| Attempt {
            retry: matches!(error, ConnectorError::Io { .. }),
            error,
        };
        let client = self.opts.url.connect().await.map_err(retry)?;
        let upstream = describe_table(&client, &self.opts.schema, &self.opts.table)
            .await
            .map_err(retry)?;
        let mut types = Vec::with_capacity(self.key_columns.len());
        for &k in &self.key_columns {
            let name = self.schema.field(k).name();
            let Some(c) = upstream.columns.iter().find(|c| c.name == *name) else {
                return Err(Attempt {
                    error: ConnectorError::Config(format!(
                        "column \"{name}\" is no longer a column of {} upstream",
                        self.opts.qualified()
                    )),
                    retry: false,
                });
            };
            types.push(c.type_name.clone());
        }
        let names: Vec<String> = self
            .key_columns
            .iter()
            .map(|&k| quote_ident(self.schema.field(k).name()))
            .collect();
        let filter = match names.as_slice() {
            [one] => format!("{one} = ANY($1::text[]::{}[])", types[0]),
            _ => format!(
                "({}) IN (SELECT * FROM unnest({}))",
                names.join(", "),
                types
                    .iter()
                    .enumerate()
                    .map(|(i, t)| format!("${}::text[]::{t}[]", i + 1))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let sql = format!(
            "SELECT {} FROM {} WHERE {filter}",
            select_list(&self.schema, &upstream, true),
            self.opts.qualified()
        );
        let statement = client.prepare(&sql).await.map_err(|e| Attempt {
            retry: is_transient(&e),
            error: statement_error(
                format!("preparing the lookup of {}", self.opts.qualified()),
                e,
            ),
        })?;
        Ok(Prepared { client, statement })
    }

    async fn attempt(&mut self, keys: &[Vec<String>]) -> std::result::Result<RecordBatch, Attempt> {
        // Taken while in use: a connection that failed is not put back.
        let c = match self.connection.take() {
            Some(c) => c,
            None => self.connect().await?,
        };
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = keys
            .iter()
            .map(|k| k as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let found = c
            .client
            .query(&c.statement, &params)
            .await
            .map_err(|e| Attempt {
                retry: is_transient(&e),
                error: statement_error(format!("looking rows up in {}", self.opts.qualified()), e),
            })?;
        self.connection = Some(c);
        let mut rows = TextRows::new(&self.schema, found.len());
        for row in &found {
            rows.push(|i| row.get::<_, Option<&str>>(i))
                .map_err(|message| Attempt {
                    error: ConnectorError::Refused {
                        context: format!("reading a row looked up in {}", self.opts.qualified()),
                        message,
                    },
                    retry: false,
                })?;
        }
        rows.finish(&self.schema).map_err(|error| Attempt {
            error,
            retry: false,
        })
    }
}

/// Key values as PostgreSQL reads them in text form.
fn key_text(values: &ArrayRef) -> Result<Vec<String>> {
    if let DataType::Binary = values.data_type() {
        let bytes = values.as_binary::<i32>();
        return Ok(bytes
            .iter()
            .map(|b| {
                let hex: String = b
                    .unwrap_or_default()
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect();
                format!("\\x{hex}")
            })
            .collect());
    }
    let text = arrow::compute::cast(values, &DataType::Utf8)?;
    Ok(text
        .as_string::<i32>()
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect())
}

#[async_trait]
impl Lookup for TableLookup {
    async fn get(&mut self, keys: &[ArrayRef]) -> Result<RecordBatch> {
        if keys.first().is_none_or(|k| k.is_empty()) {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        let keys = keys.iter().map(key_text).collect::<Result<Vec<_>>>()?;
        let mut attempt = 0;
        loop {
            match self.attempt(&keys).await {
                Ok(batch) => return Ok(batch),
                Err(Attempt { error, retry }) if retry && attempt < self.opts.max_retries => {
                    let wait =
                        (FIRST_RETRY_WAIT * 2u32.saturating_pow(attempt)).min(LONGEST_RETRY_WAIT);
                    attempt += 1;
                    tracing::warn!(table = %self.opts.qualified(), %error, attempt, wait_ms = wait.as_millis() as u64, "Lookup failed; retrying.");
                    tokio::time::sleep(wait).await;
                }
                Err(Attempt { error, .. }) => return Err(error),
            }
        }
    }

    fn cache(&self) -> LookupCache {
        self.opts.cache
    }
}
