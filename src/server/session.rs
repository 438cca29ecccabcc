//! A connection's statements in its session: what `tributary.sessions` shows of them, the
//! settings `SET` changes (`application_name`, `statement_timeout`), and how a statement ends
//! when the client cancels it or its time runs out.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::ParamValues;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::sqlparser::ast;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use pgwire::error::ErrorInfo;

use super::access;
use super::pgwire::error_info;
use crate::engine::{Engine, Output};
use crate::error::Error;
use crate::sessions::RunningQuery;
use crate::sql::parse::Statement;
use crate::sql::redact::redact_statement;

/// How a statement failed.
pub enum Failure {
    Engine(Error),
    /// It ran past the session's `statement_timeout`.
    Timeout,
    /// The client cancelled it while its rows were being sent.
    Cancelled,
}

impl Failure {
    /// The error response, positions shifted by `offset` (where the statement starts).
    pub fn info(&self, offset: usize) -> ErrorInfo {
        match self {
            Failure::Engine(e) => error_info(e, offset),
            Failure::Timeout => ErrorInfo::new(
                "ERROR".into(),
                "57014".into(),
                "canceling statement due to statement timeout".into(),
            ),
            Failure::Cancelled => ErrorInfo::new(
                "ERROR".into(),
                "57014".into(),
                "canceling statement due to user request".into(),
            ),
        }
    }
}

/// What a statement gave.
pub enum Executed {
    Done(Output),
    /// A query's rows, as they come: each batch once the one before is sent.
    Rows {
        schema: SchemaRef,
        rows: BoxStream<'static, Result<RecordBatch, Failure>>,
    },
}

impl Executed {
    /// The output whole (a query's rows all read).
    pub async fn collect(self) -> Result<Output, Failure> {
        match self {
            Executed::Done(out) => Ok(out),
            Executed::Rows { schema, rows } => Ok(Output::Rows {
                schema,
                batches: rows.try_collect().await?,
            }),
        }
    }
}

/// Runs `statement` (written as `text`) for session `pid`: shown as running in its session until
/// its last row is sent, bounded by its `statement_timeout`. A query stops when the client
/// cancels it; any other statement (DDL, START, STOP) runs to its end even then, so that the
/// catalog never holds half of one.
pub async fn execute(
    engine: &Arc<Engine>,
    pid: i32,
    text: &str,
    statement: &Statement,
    params: Option<ParamValues>,
) -> Result<Executed, Failure> {
    let sessions = engine.sessions();
    // Who may run what: a session always exists from its startup on.
    let session = sessions.get(pid).ok_or_else(|| {
        Failure::Engine(Error::Internal(format!("no session for connection {pid}")))
    })?;
    access::check(statement, session.role, &session.user).map_err(Failure::Engine)?;
    let running = sessions.run(pid, &redact_statement(text));
    apply_setting(engine, pid, statement);
    if let Some(out) = show_setting(engine, pid, statement) {
        return Ok(Executed::Done(out));
    }
    let deadline = sessions
        .get(pid)
        .and_then(|s| s.statement_timeout)
        .map(|t| tokio::time::Instant::now() + t);
    if let Statement::Sql(query) = statement {
        if matches!(**query, ast::Statement::Query(_)) {
            let started = within(deadline, async {
                engine
                    .query_stream(query, params)
                    .await
                    .map_err(|e| Failure::Engine(e.located_in(text)))
            })
            .await?;
            let (schema, stream) = started;
            return Ok(Executed::Rows {
                schema,
                rows: guarded(stream, running, deadline),
            });
        }
    }
    let engine = engine.clone();
    let statement = statement.clone();
    let run = async move {
        tokio::spawn(async move { engine.execute_statement(&statement, params).await })
            .await
            .unwrap_or_else(|e| Err(Error::Internal(format!("statement task failed: {e}"))))
            .map_err(|e| Failure::Engine(e.located_in(text)))
    };
    Ok(Executed::Done(within(deadline, run).await?))
}

/// `work`, failing with [`Failure::Timeout`] past `deadline`.
async fn within<T>(
    deadline: Option<tokio::time::Instant>,
    work: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, work)
            .await
            .unwrap_or(Err(Failure::Timeout)),
        None => work.await,
    }
}

/// A query's rows, ending with an error when the client cancels it or its deadline passes; the
/// session shows it running until the stream ends or is dropped.
fn guarded(
    stream: SendableRecordBatchStream,
    running: RunningQuery,
    deadline: Option<tokio::time::Instant>,
) -> BoxStream<'static, Result<RecordBatch, Failure>> {
    let cancelled = running.cancelled();
    futures::stream::unfold(Some((stream, running)), move |state| {
        let cancelled = cancelled.clone();
        async move {
            let (mut stream, running) = state?;
            let expired = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                next = stream.next() => match next {
                    Some(Ok(batch)) => Some((Ok(batch), Some((stream, running)))),
                    Some(Err(e)) => Some((Err(Failure::Engine(e.into())), None)),
                    None => None,
                },
                _ = cancelled.notified() => Some((Err(Failure::Cancelled), None)),
                _ = expired => Some((Err(Failure::Timeout), None)),
            }
        }
    })
    .boxed()
}

/// Notes a `SET` of a setting the session keeps.
fn apply_setting(engine: &Engine, pid: i32, statement: &Statement) {
    let Statement::Sql(s) = statement else {
        return;
    };
    let ast::Statement::Set(ast::Set::SingleAssignment {
        variable, values, ..
    }) = s.as_ref()
    else {
        return;
    };
    let name = variable.to_string().to_ascii_lowercase();
    let value = match values.as_slice() {
        [ast::Expr::Value(v)] => match &v.value {
            ast::Value::SingleQuotedString(s) => s.clone(),
            ast::Value::Number(n, _) => n.to_string(),
            other => other.to_string(),
        },
        [other] => other.to_string(),
        _ => return,
    };
    match name.as_str() {
        "application_name" => engine
            .sessions()
            .update(pid, |s| s.application_name = value),
        "statement_timeout" => {
            let limit = timeout_of(&value);
            engine
                .sessions()
                .update(pid, |s| s.statement_timeout = limit);
        }
        _ => {}
    }
}

/// `SHOW` of a setting the session keeps, with its value.
fn show_setting(engine: &Engine, pid: i32, statement: &Statement) -> Option<Output> {
    let Statement::Sql(s) = statement else {
        return None;
    };
    let ast::Statement::ShowVariable { variable } = s.as_ref() else {
        return None;
    };
    let [name] = variable.as_slice() else {
        return None;
    };
    let session = engine.sessions().get(pid)?;
    let setting = name.value.to_ascii_lowercase();
    let value = match setting.as_str() {
        "application_name" => session.application_name,
        "statement_timeout" => match session.statement_timeout {
            Some(limit) => format!("{}ms", limit.as_millis()),
            None => "0".into(),
        },
        _ => return None,
    };
    crate::engine::setting_row(&setting, &value)
}

/// A `statement_timeout` value (`5000`, `'5s'`, `'1min'`; milliseconds when bare) as a limit;
/// `None` for 0 (no limit) or what cannot be read.
pub fn timeout_of(value: &str) -> Option<Duration> {
    let value = value.trim();
    let digits = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits);
    let number: f64 = number.parse().ok()?;
    let ms = number
        * match unit.trim() {
            "" | "ms" => 1.0,
            "s" => 1_000.0,
            "min" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            _ => return None,
        };
    // PostgreSQL's range: up to 2^31 - 1 ms (24.8 days).
    (ms >= 1.0 && ms <= i32::MAX as f64).then(|| Duration::from_millis(ms as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_as_postgres_reads_them() {
        assert_eq!(timeout_of("5000"), Some(Duration::from_secs(5)));
        assert_eq!(timeout_of("2s"), Some(Duration::from_secs(2)));
        assert_eq!(timeout_of("1min"), Some(Duration::from_secs(60)));
        assert_eq!(timeout_of("0"), None);
        assert_eq!(timeout_of("soon"), None);
        assert_eq!(
            timeout_of("2147483647"),
            Some(Duration::from_millis(2_147_483_647))
        );
        // Beyond PostgreSQL's range, which once overflowed the deadline's clock.
        assert_eq!(timeout_of("99999999999999999999d"), None);
    }
}
