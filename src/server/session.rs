//! A connection's statements in its session: what `tributary.sessions` shows of them, the
//! settings `SET` changes (`application_name`, `statement_timeout`), and how a statement ends
//! when the client cancels it or its time runs out.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{RecordBatch, StringArray};
use datafusion::common::ParamValues;
use datafusion::sql::sqlparser::ast;
use pgwire::error::ErrorInfo;

use super::pgwire::error_info;
use crate::engine::{Engine, Output};
use crate::error::Error;
use crate::sql::parse::Statement;

/// How a statement failed.
pub enum Failure {
    Engine(Error),
    /// It ran past the session's `statement_timeout`.
    Timeout,
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
        }
    }
}

/// Runs `statement` (written as `text`) for session `pid`: shown as running in its session,
/// bounded by its `statement_timeout`. A query stops when the client cancels it (the future is
/// dropped); any other statement (DDL, START, STOP) runs to its end even then, so that the
/// catalog never holds half of one.
pub async fn execute(
    engine: &Arc<Engine>,
    pid: i32,
    text: &str,
    statement: &Statement,
    params: Option<ParamValues>,
) -> Result<Output, Failure> {
    let sessions = engine.sessions();
    let _running = sessions.run(pid, text);
    apply_setting(engine, pid, statement);
    if let Some(out) = show_setting(engine, pid, statement) {
        return Ok(out);
    }
    let timeout = sessions.get(pid).and_then(|s| s.statement_timeout);
    let run = async {
        let result = if is_query(statement) {
            engine.execute_statement(statement, params).await
        } else {
            let engine = engine.clone();
            let statement = statement.clone();
            tokio::spawn(async move { engine.execute_statement(&statement, params).await })
                .await
                .unwrap_or_else(|e| Err(Error::Internal(format!("statement task failed: {e}"))))
        };
        result.map_err(|e| Failure::Engine(e.located_in(text)))
    };
    match timeout {
        Some(limit) => tokio::time::timeout(limit, run)
            .await
            .unwrap_or(Err(Failure::Timeout)),
        None => run.await,
    }
}

fn is_query(statement: &Statement) -> bool {
    matches!(statement, Statement::Sql(s) if matches!(**s, ast::Statement::Query(_)))
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
    let value = match name.value.to_ascii_lowercase().as_str() {
        "application_name" => session.application_name,
        "statement_timeout" => match session.statement_timeout {
            Some(limit) => format!("{}ms", limit.as_millis()),
            None => "0".into(),
        },
        _ => return None,
    };
    let Some(Output::Rows { schema, .. }) = crate::engine::session_statement(s) else {
        return None;
    };
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(vec![value]))],
    )
    .ok()?;
    Some(Output::Rows {
        schema,
        batches: vec![batch],
    })
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
    (ms >= 1.0).then(|| Duration::from_millis(ms as u64))
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
    }
}
