//! The Postgres wire protocol server: psql, psycopg, asyncpg and JDBC talk to the engine here.
//! This is the one place engine errors become SQLSTATE codes with positions.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::common::{ParamValues, ScalarValue};
use futures::stream::BoxStream;
use futures::{stream, StreamExt};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{CopyResponse, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::{ClientInfo, ConnectionManager, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use tokio::net::TcpListener;

use super::auth::Startup;
use super::connection;
use super::copy::{copy_out, header as copy_header, rows as copy_rows, CopyOut};
use super::encode::{arrow_type_of_pg, encode_rows, fields};
use super::session::{self, Executed, Failure};
use crate::engine::{session_statement, Engine, Output};
use crate::error::Error;
use crate::pg_catalog::wire_type;
use crate::sql::column_names::postgres_names;
use crate::sql::parse::{parse_sql, parse_statement, Statement};

/// Turns an engine error into a Postgres error response.
pub fn error_info(e: &Error, offset: usize) -> ErrorInfo {
    let mut info = ErrorInfo::new("ERROR".to_owned(), e.sqlstate().to_owned(), e.to_string());
    info.position = e.position().map(|p| (p + offset).to_string());
    info
}

fn user_error(e: &Error) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(e, 0)))
}

/// Query handlers over one engine, shared by every connection.
pub struct Backend {
    engine: Arc<Engine>,
    parser: Arc<Parser>,
}

/// How connections are secured and how many are taken.
pub struct WireSettings {
    /// TLS, offered to clients that ask (psql's `sslmode=prefer`, the default, asks).
    pub tls: Option<pgwire::tokio::TlsAcceptor>,
    /// The certificate chain (PEM) TLS serves, for SCRAM channel binding (SCRAM-SHA-256-PLUS).
    pub tls_chain_pem: Option<Vec<u8>>,
    /// Refuse clients that do not use TLS.
    pub require_tls: bool,
    /// At most this many connections at once (`None`: no limit); the next is refused with
    /// PostgreSQL's `53300 sorry, too many clients already`.
    pub max_connections: Option<usize>,
    /// The longest message a client may send, in bytes (a statement, a COPY chunk); a longer
    /// one ends the connection with 54000 before its body is read.
    pub max_message_size: usize,
}

/// The default of `--max-message-size`: 64 MB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;

impl Default for WireSettings {
    /// No TLS, no connection limit, messages up to 64 MB.
    fn default() -> Self {
        WireSettings {
            tls: None,
            tls_chain_pem: None,
            require_tls: false,
            max_connections: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

/// Serves Postgres clients on `listener` until `shutdown` resolves.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    settings: WireSettings,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    // Connections by pid and secret key: registered at startup, found by cancel requests.
    let connections = Arc::new(ConnectionManager::new());
    let backend = Arc::new(Backend {
        engine: engine.clone(),
        parser: Arc::new(Parser { engine }),
    });
    let handlers = Arc::new(Handlers {
        startup: Arc::new(Startup::new(
            backend.engine.clone(),
            connections.clone(),
            settings.require_tls,
            settings.tls_chain_pem.as_deref(),
        )),
        cancel: Arc::new(CancelQueries {
            connections,
            sessions: backend.engine.sessions().clone(),
        }),
        backend,
    });
    let slots = settings
        .max_connections
        .map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "Accept failed.");
                        continue;
                    }
                };
                // A slot for as long as the connection lasts.
                let slot = match slots.as_ref().map(|s| s.clone().try_acquire_owned()) {
                    Some(Err(_)) => {
                        tracing::warn!(%peer, "Refused a connection: too many clients.");
                        let mut socket = socket;
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(
                                std::time::Duration::from_secs(5),
                                connection::refuse(&mut socket),
                            )
                            .await;
                        });
                        continue;
                    }
                    Some(Ok(permit)) => Some(permit),
                    None => None,
                };
                let h = handlers.clone();
                let tls = settings.tls.clone();
                let max_message = settings.max_message_size;
                tokio::spawn(async move {
                    let _slot = slot;
                    let served = connection::serve_connection(socket, tls, h, max_message).await;
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "Connection ended with an error.");
                    }
                });
            }
        }
    }
}

/// Binds the listening socket (so callers learn a bad address before anything else starts).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

struct Handlers {
    backend: Arc<Backend>,
    /// Authentication, and the session each connection gets.
    startup: Arc<Startup>,
    /// Cancel requests (psql's Ctrl-C) stop the query running on their connection.
    cancel: Arc<CancelQueries>,
}

/// Cancels what a connection runs: a statement being planned or run (pgwire drops it), or a
/// query whose rows are being sent (its session's stream ends with an error).
struct CancelQueries {
    connections: Arc<ConnectionManager>,
    sessions: Arc<crate::sessions::Sessions>,
}

#[async_trait]
impl CancelHandler for CancelQueries {
    async fn on_cancel_request(&self, request: CancelRequest) {
        // The manager knows the connection only when the secret key matches.
        if self
            .connections
            .cancel(request.pid, &request.secret_key)
            .await
        {
            self.sessions.cancel(request.pid);
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.backend.clone()
    }
    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.backend.clone()
    }
    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }
    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

fn output_response(out: Output, format: &Format) -> PgWireResult<Response> {
    Ok(match out {
        Output::Notice(_, out) => return output_response(*out, format),
        Output::Empty => Response::EmptyQuery,
        Output::Command(tag) => match tag.as_str() {
            "BEGIN" => Response::TransactionStart(Tag::new("BEGIN")),
            "COMMIT" | "ROLLBACK" => Response::TransactionEnd(Tag::new(&tag)),
            _ => Response::Execution(Tag::new(&tag)),
        },
        Output::Rows { schema, batches } => {
            let fields = Arc::new(fields(&schema, |i| format.format_for(i)));
            let rows = encode_rows(fields.clone(), &batches)?;
            Response::Query(QueryResponse::new(
                fields,
                stream::iter(rows.into_iter().map(Ok)),
            ))
        }
    })
}

/// A query's rows, a batch at a time as the client takes them, each batch turned into messages by
/// `encode`; a failure ends the stream with its error.
fn per_batch<T: Send + 'static>(
    rows: BoxStream<'static, Result<RecordBatch, Failure>>,
    encode: impl Fn(&RecordBatch) -> PgWireResult<Vec<T>> + Send + 'static,
) -> impl futures::Stream<Item = PgWireResult<T>> + Send + 'static {
    rows.map(move |batch| {
        let messages = batch
            .map_err(|f| PgWireError::UserError(Box::new(f.info(0))))
            .and_then(|b| encode(&b));
        match messages {
            Ok(m) => stream::iter(m.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(e) => stream::iter(vec![Err(e)]),
        }
    })
    .flatten()
}

/// A query's rows as data rows, encoded a batch at a time as the client takes them.
fn rows_response(
    schema: &SchemaRef,
    rows: BoxStream<'static, Result<RecordBatch, Failure>>,
    format: &Format,
) -> Response {
    let fields = Arc::new(fields(schema, |i| format.format_for(i)));
    let encoder = fields.clone();
    let data_rows = per_batch(rows, move |b| {
        encode_rows(encoder.clone(), std::slice::from_ref(b))
    });
    Response::Query(QueryResponse::new(fields, data_rows))
}

#[async_trait]
impl SimpleQueryHandler for Backend {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo
            + pgwire::api::ClientPortalStore
            + futures::Sink<pgwire::messages::PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: pgwire::api::store::PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as futures::Sink<pgwire::messages::PgWireBackendMessage>>::Error>,
    {
        let statements = match parse_sql(query) {
            Ok(s) => s,
            Err(e) => return Ok(vec![Response::Error(Box::new(error_info(&e, 0)))]),
        };
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        let (pid, _) = client.pid_and_secret_key();
        let single = statements.len() == 1;
        for stmt in statements {
            if let Some(copy) = copy_out(&stmt.statement) {
                match self.copy(pid, &stmt.text, stmt.offset, single, copy).await {
                    Ok(response) => responses.push(response),
                    Err(info) => {
                        responses.push(Response::Error(Box::new(info)));
                        break;
                    }
                }
                continue;
            }
            let executed =
                session::execute(&self.engine, pid, &stmt.text, &stmt.statement, None).await;
            // One statement's rows stream; of several, each runs whole before the next starts.
            let executed = match executed {
                Ok(e) if single => Ok(e),
                Ok(e) => e.collect().await.map(Executed::Done),
                Err(f) => Err(f),
            };
            match executed {
                Ok(Executed::Rows { schema, rows }) => {
                    responses.push(rows_response(&schema, rows, &Format::UnifiedText))
                }
                Ok(Executed::Done(Output::Notice(notice, out))) => {
                    use futures::SinkExt;
                    let info = ErrorInfo::new("NOTICE".into(), "00000".into(), notice);
                    client
                        .send(pgwire::messages::PgWireBackendMessage::NoticeResponse(
                            info.into(),
                        ))
                        .await?;
                    responses.push(output_response(*out, &Format::UnifiedText)?);
                }
                Ok(Executed::Done(out)) => {
                    responses.push(output_response(out, &Format::UnifiedText)?)
                }
                Err(failure) => {
                    let info = failure.info(stmt.offset);
                    tracing::debug!(error = %info.message, "Statement failed.");
                    responses.push(Response::Error(Box::new(info)));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

impl Backend {
    /// Runs a `COPY ... TO STDOUT`: its query's rows as copy data, streamed when it is the only
    /// statement (as a query's are); errors at `offset`, where the statement starts.
    async fn copy(
        &self,
        pid: i32,
        text: &str,
        offset: usize,
        single: bool,
        copy: crate::error::Result<CopyOut>,
    ) -> Result<Response, ErrorInfo> {
        let copy = copy.map_err(|e| error_info(&e.located_in(text), offset))?;
        let executed = session::execute(&self.engine, pid, text, &copy.query, None)
            .await
            .map_err(|f| f.info(offset))?;
        let (schema, rows) = match executed {
            Executed::Rows { schema, rows } if single => (schema, rows),
            other => match other.collect().await.map_err(|f| f.info(offset))? {
                Output::Rows { schema, batches } => {
                    (schema, stream::iter(batches.into_iter().map(Ok)).boxed())
                }
                _ => {
                    return Err(error_info(
                        &Error::Internal("COPY's query returned no rows".into()),
                        offset,
                    ))
                }
            },
        };
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let header = copy_header(&copy.format, &names);
        let format = copy.format;
        let data = stream::iter(header.map(Ok)).chain(per_batch(rows, move |b| {
            copy_rows(&format, b).map_err(|e| user_error(&e))
        }));
        Ok(Response::CopyOut(CopyResponse::new(0, names.len(), data)))
    }
}

/// A statement prepared through the extended protocol, with what describe needs.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The statement as the client wrote it.
    text: String,
    statement: Statement,
    params: Vec<Option<DataType>>,
    schema: Option<SchemaRef>,
}

/// Parses and plans statements for the extended protocol.
pub struct Parser {
    engine: Arc<Engine>,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let statement = parse_statement(sql).map_err(|e| user_error(&e))?;
        let mut params = Vec::new();
        let mut schema = None;
        match &statement {
            Statement::Empty => return Ok(None),
            Statement::Sql(stmt) if session_statement(stmt).is_none() => {
                let plan = self
                    .engine
                    .plan_query(stmt)
                    .await
                    .map_err(|e| user_error(&e))?;
                let types_by_name = plan
                    .get_parameter_types()
                    .map_err(|e| user_error(&e.into()))?;
                // Up to the highest placeholder, or as many as the client declared: a rewritten
                // catalog query may no longer use some of the parameters bound (they are unused).
                let highest = types_by_name
                    .keys()
                    .filter_map(|k| k.strip_prefix('$')?.parse::<usize>().ok())
                    .max()
                    .unwrap_or(0);
                let n = highest.max(types.len());
                for i in 1..=n {
                    let declared = types
                        .get(i - 1)
                        .cloned()
                        .flatten()
                        .and_then(|t| arrow_type_of_pg(&t));
                    params.push(
                        declared.or_else(|| types_by_name.get(&format!("${i}")).cloned().flatten()),
                    );
                }
                schema = Some(postgres_names(
                    stmt,
                    &Arc::new(plan.schema().as_arrow().clone()),
                ));
            }
            Statement::Sql(stmt) => {
                if let Some(Output::Rows { schema: s, .. }) = session_statement(stmt) {
                    schema = Some(s);
                }
            }
            Statement::Show { .. } | Statement::ShowCreate { .. } => {
                let out = self
                    .engine
                    .execute_statement(&statement, None)
                    .await
                    .map_err(|e| user_error(&e))?;
                if let Output::Rows { schema: s, .. } = out {
                    schema = Some(s);
                }
            }
            _ => {}
        }
        Ok(Some(Prepared {
            text: sql.to_string(),
            statement,
            params,
            schema,
        }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt
            .params
            .iter()
            .map(|t| t.as_ref().map(wire_type).unwrap_or(Type::TEXT))
            .collect())
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(match &stmt.schema {
            Some(s) => fields(s, |i| {
                format.map(|f| f.format_for(i)).unwrap_or(FieldFormat::Text)
            }),
            None => Vec::new(),
        })
    }
}

fn bind_params(portal: &Portal<Prepared>) -> PgWireResult<Option<ParamValues>> {
    let prepared = &portal.statement.statement;
    if prepared.params.is_empty() {
        return Ok(None);
    }
    let mut values = Vec::with_capacity(prepared.params.len());
    for (i, t) in prepared.params.iter().enumerate() {
        let v = match t.as_ref().map(wire_type).unwrap_or(Type::TEXT) {
            Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(i, &Type::BOOL)?),
            Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(i, &Type::INT2)?),
            Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(i, &Type::INT4)?),
            Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(i, &Type::INT8)?),
            Type::FLOAT4 => ScalarValue::Float32(portal.parameter::<f32>(i, &Type::FLOAT4)?),
            Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(i, &Type::FLOAT8)?),
            Type::DATE => {
                ScalarValue::Date32(portal.parameter::<chrono::NaiveDate>(i, &Type::DATE)?.map(
                    |d| {
                        (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default())
                            .num_days() as i32
                    },
                ))
            }
            Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
                portal
                    .parameter::<chrono::NaiveDateTime>(i, &Type::TIMESTAMP)?
                    .map(|d| d.and_utc().timestamp_micros()),
                None,
            ),
            _ => ScalarValue::Utf8(portal.parameter::<String>(i, &Type::TEXT)?),
        };
        values.push(v);
    }
    Ok(Some(ParamValues::List(
        values.into_iter().map(Into::into).collect(),
    )))
}

#[async_trait]
impl ExtendedQueryHandler for Backend {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let params = bind_params(portal)?;
        let (pid, _) = client.pid_and_secret_key();
        let executed = session::execute(
            &self.engine,
            pid,
            &portal.statement.statement.text,
            &portal.statement.statement.statement,
            params,
        )
        .await
        .map_err(|f| PgWireError::UserError(Box::new(f.info(0))))?;
        // Rows stream, so an Execute's row limit suspends the portal with the rest unread.
        match executed {
            Executed::Rows { schema, rows } => {
                Ok(rows_response(&schema, rows, &portal.result_column_format))
            }
            Executed::Done(out) => output_response(out, &portal.result_column_format),
        }
    }
}

impl Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Backend")
    }
}
