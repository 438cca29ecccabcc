//! PostgreSQL connectors: the `postgres-cdc` source (snapshot, then the pgoutput change stream
//! from a replication slot), the `postgres` source (a table read whole or looked up by key) and
//! the `postgres` sink (append or upsert, exactly once).

pub mod pgoutput;
pub mod sink;
pub mod source;
pub mod table;
pub mod tls;
pub mod types;

use std::str::FromStr;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tls::PgTls;
use tokio_postgres::{Client, Config, NoTls};

use crate::error::{ConnectorError, Result};
use crate::PRIMARY_KEY_METADATA;
use types::quote_ident;

pub use sink::PostgresSinkConnector;
pub use source::PostgresCdcSourceConnector;
pub use table::PostgresTableSourceConnector;

/// Change-row metadata columns every CDC source adds.
pub const OP_COLUMN: &str = "_op";
/// The LSN of the change (the consistent point for snapshot rows).
pub const LSN_COLUMN: &str = "_lsn";
/// The commit time of the change's transaction (NULL for snapshot rows).
pub const COMMIT_TS_COLUMN: &str = "_commit_ts";

/// A parsed `postgres://user:password@host:port/db` URL, with libpq's `sslmode` and
/// `sslrootcert` parameters.
#[derive(Clone)]
pub struct PgUrl {
    config: Config,
    host: String,
    port: u16,
    tls: PgTls,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgUrl({}:{}/{})", self.host, self.port, self.database())
    }
}

impl PgUrl {
    /// Parses the `url` option.
    pub fn parse(url: &str) -> Result<Self> {
        let invalid = |reason: String| ConnectorError::InvalidOption {
            option: "url".into(),
            value: crate::options::redact_url_password(url),
            reason,
        };
        let (rest, tls) = PgTls::split(url).map_err(invalid)?;
        let mut config = Config::from_str(&rest).map_err(|e| {
            invalid(format!(
                "not a PostgreSQL URL (postgres://user:password@host:port/db): {e}"
            ))
        })?;
        config.ssl_mode(tls.session_mode());
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        Ok(PgUrl {
            config,
            host,
            port,
            tls,
        })
    }

    /// User name.
    pub fn user(&self) -> String {
        self.config.get_user().unwrap_or("postgres").to_string()
    }

    /// Password, empty when none.
    pub fn password(&self) -> String {
        self.config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default()
    }

    /// Database name (the user name when absent, as libpq does).
    pub fn database(&self) -> String {
        self.config
            .get_dbname()
            .map(str::to_string)
            .unwrap_or_else(|| self.user())
    }

    /// `host:port/db`, for messages.
    pub fn display(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.database())
    }

    /// A regular SQL session with UTC, ISO dates and hex bytea, so text values parse one way.
    pub async fn connect(&self) -> Result<Client> {
        let mut cfg = self.config.clone();
        cfg.application_name("tributary");
        cfg.options("-c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=3 -c bytea_output=hex -c IntervalStyle=postgres");
        cfg.connect_timeout(std::time::Duration::from_secs(10));
        if self.tls.mode == tls::SslMode::Disable {
            let (client, connection) = cfg
                .connect(NoTls)
                .await
                .map_err(|e| self.connect_error(e))?;
            tokio::spawn(drive(connection));
            return Ok(client);
        }
        let connector = self.tls.connector().map_err(|reason| {
            ConnectorError::Config(format!("TLS to PostgreSQL at {}: {reason}", self.display()))
        })?;
        let (client, connection) = cfg
            .connect(connector)
            .await
            .map_err(|e| self.connect_error(e))?;
        tokio::spawn(drive(connection));
        Ok(client)
    }

    /// The TLS settings of the replication stream.
    pub fn replication_tls(&self) -> pgwire_replication::TlsConfig {
        self.tls.replication()
    }

    /// What went wrong connecting, in words a user can act on.
    pub fn connect_error(&self, e: tokio_postgres::Error) -> ConnectorError {
        if !is_transient(&e) {
            // Wrong password, no such database: the same answer every time.
            return statement_error(format!("connecting to PostgreSQL at {}", self.display()), e);
        }
        let msg = match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => with_causes(&e),
        };
        ConnectorError::Io {
            context: format!("connecting to PostgreSQL at {}", self.display()),
            source: msg.into(),
        }
    }
}

/// Runs a session's connection until it ends.
async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "PostgreSQL connection ended");
    }
}

/// Whether a failed statement may succeed when tried again on a new connection: no answer came
/// (the connection broke), the server is shutting down or starting (57P01-57P03), refuses
/// connections for now (08xxx, 53300), or the transaction lost a serialization or deadlock race
/// (40001, 40P01). Everything else (a constraint, a type, a missing table) fails the same way again.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => e.as_db_error().is_none() && !tls_refused(e),
        Some(code) => {
            let code = code.code();
            code.starts_with("08")
                || matches!(
                    code,
                    "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300"
                )
        }
    }
}

/// Whether TLS failed in a way a new attempt repeats: an untrusted certificate, or a server
/// without TLS asked for it by `sslmode`.
fn tls_refused(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        if let Some(failure) = inner.downcast_ref::<tls::TlsFailure>() {
            return failure.permanent;
        }
        if inner.to_string() == "server does not support TLS" {
            return true;
        }
        source = inner.source();
    }
    false
}

/// A failed statement as a connector error: [`ConnectorError::Io`] when retrying may help,
/// [`ConnectorError::Refused`] with the server's message and SQLSTATE when it cannot.
pub fn statement_error(context: impl Into<String>, e: tokio_postgres::Error) -> ConnectorError {
    if is_transient(&e) {
        return ConnectorError::io(context, e);
    }
    let message = match e.as_db_error() {
        Some(db) => {
            let mut m = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                m.push_str(&format!("; {detail}"));
            }
            m
        }
        None => with_causes(&e),
    };
    ConnectorError::Refused {
        context: context.into(),
        message,
    }
}

/// An error and the errors it wraps, outermost first ("error performing TLS handshake:
/// invalid peer certificate: UnknownIssuer").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text = format!("{text}: {inner}");
        source = inner.source();
    }
    text
}

/// `schema.table` split, `public` when no schema is given.
pub fn split_table(name: &str) -> (String, String) {
    match name.split_once('.') {
        Some((s, t)) => (unquote(s), unquote(t)),
        None => ("public".to_string(), unquote(name)),
    }
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        s[1..s.len() - 1].replace("\"\"", "\"")
    } else {
        s.to_string()
    }
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// One upstream column.
#[derive(Debug, Clone)]
pub struct UpstreamColumn {
    /// Name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier.
    pub typmod: i32,
    /// `format_type` of it: `numeric(10,2)`.
    pub type_name: String,
}

/// A table as the upstream catalog describes it.
#[derive(Debug, Clone)]
pub struct UpstreamTable {
    /// Columns in table order.
    pub columns: Vec<UpstreamColumn>,
    /// Primary key columns, in key order; empty when the table has none.
    pub primary_key: Vec<String>,
}

/// Reads a table's columns and primary key from the upstream catalog.
pub async fn describe_table(client: &Client, schema: &str, table: &str) -> Result<UpstreamTable> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid::oid, a.atttypmod, format_type(a.atttypid, a.atttypmod),
                    array_position(i.indkey::int2[], a.attnum)
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
               AND c.relkind IN ('r', 'p')
             ORDER BY a.attnum",
            &[&schema, &table],
        )
        .await
        .map_err(|e| ConnectorError::io("reading the upstream table's columns", e))?;
    if rows.is_empty() {
        return Err(ConnectorError::Config(format!(
            "table {}.{} does not exist upstream (or has no columns)",
            schema, table
        )));
    }
    let mut key: Vec<(i32, String)> = Vec::new();
    let columns = rows
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            if let Some(pos) = r.get::<_, Option<i32>>(4) {
                key.push((pos, name.clone()));
            }
            UpstreamColumn {
                name,
                type_oid: r.get(1),
                typmod: r.get(2),
                type_name: r.get(3),
            }
        })
        .collect();
    key.sort();
    Ok(UpstreamTable {
        columns,
        primary_key: key.into_iter().map(|(_, n)| n).collect(),
    })
}

/// Checks that every column of `declared` (but those `skip` passes over) is a column of
/// `table` upstream, named `name` in messages.
pub fn check_declared(
    declared: &Schema,
    table: &UpstreamTable,
    name: &str,
    skip: impl Fn(&str) -> bool,
) -> Result<()> {
    for f in declared.fields() {
        if !skip(f.name()) && !table.columns.iter().any(|c| c.name == *f.name()) {
            return Err(ConnectorError::Config(format!(
                "column \"{}\" is not a column of {name} upstream",
                f.name()
            )));
        }
    }
    Ok(())
}

/// The change-row schema of a table: its columns (nullable: deletes carry only the key) and the
/// metadata columns, with the primary key in the schema metadata.
pub fn change_schema(table: &UpstreamTable) -> SchemaRef {
    table_schema(table, metadata_fields())
}

/// A table's columns as Arrow fields (all nullable), then `extra`, with the primary key in the
/// schema metadata.
pub fn table_schema(table: &UpstreamTable, extra: Vec<Field>) -> SchemaRef {
    let mut fields: Vec<Field> = table
        .columns
        .iter()
        .map(|c| {
            let (t, exact) = types::arrow_type(c.type_oid, c.typmod);
            if !exact {
                tracing::warn!(
                    column = %c.name,
                    r#type = %c.type_name,
                    "Upstream column type has no Arrow counterpart; it arrives as text."
                );
            }
            Field::new(&c.name, t, true)
        })
        .collect();
    fields.extend(extra);
    let mut md = std::collections::HashMap::new();
    if !table.primary_key.is_empty() {
        md.insert(
            PRIMARY_KEY_METADATA.to_string(),
            table.primary_key.join(","),
        );
    }
    Arc::new(Schema::new_with_metadata(fields, md))
}

/// `_op`, `_lsn`, `_commit_ts`.
pub fn metadata_fields() -> Vec<Field> {
    vec![
        Field::new(OP_COLUMN, DataType::Utf8, false),
        Field::new(LSN_COLUMN, DataType::Int64, false),
        Field::new(
            COMMIT_TS_COLUMN,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]
}

/// Formats an LSN as PostgreSQL does: `16/B374D848`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Parses `16/B374D848`.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip_and_names() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(
            split_table("customers"),
            ("public".into(), "customers".into())
        );
        assert_eq!(split_table("s.\"My T\""), ("s".into(), "My T".into()));
        let u = PgUrl::parse("postgres://u:secret@127.0.0.1:5999/db").unwrap();
        assert_eq!(
            (u.user(), u.password(), u.database()),
            ("u".into(), "secret".into(), "db".into())
        );
        assert!(!format!("{u:?}").contains("secret"));
    }
}
