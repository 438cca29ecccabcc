//! The JSON API under `/api/v1`: the system tables' rows as arrays of objects (filtered by
//! query parameters), one pipeline as an object, and START / STOP as POSTs. Errors are
//! `{"error": {"code": SQLSTATE, "message": ...}}` with the HTTP status the code calls for.

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::HttpState;
use crate::error::Error;
use crate::sql::parse::Statement;

/// The routes, relative to `/api/v1`.
pub(super) fn routes() -> Router<Arc<HttpState>> {
    let mut router = Router::new()
        .route("/pipelines/{name}", get(pipeline))
        .route("/pipelines/{name}/start", post(start))
        .route("/pipelines/{name}/stop", post(stop))
        .route("/pipelines/{name}/history", get(history))
        .route("/history", get(recent_history))
        .route("/sources", get(sources))
        .route("/sinks", get(sinks))
        .route("/openapi.json", get(openapi));
    // A system table's rows, narrowed by the query parameters.
    for (path, table) in [
        ("/pipelines", "pipelines"),
        ("/operators", "operators"),
        ("/checkpoints", "checkpoints"),
        ("/errors", "errors"),
        ("/lag", "source_lag"),
        ("/events", "events"),
        ("/commits", "commits"),
    ] {
        router = router.route(
            path,
            get(
                move |State(state): State<Arc<HttpState>>, f: FilterQuery| async move {
                    list(&state, table, &filter(f)?).await
                },
            ),
        );
    }
    router
}

/// The OpenAPI document of these routes, which the tests validate every response against.
pub(super) const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// What a list may be narrowed to: rows of one pipeline, of one source, whose error message
/// holds some text; at most `limit` of them (the last ones).
#[derive(Debug, Default, Deserialize)]
pub(super) struct Filter {
    pipeline: Option<String>,
    source: Option<String>,
    message: Option<String>,
    limit: Option<usize>,
}

/// An error as the API returns it.
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn not_found(message: String) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "42704",
            message,
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let code = e.sqlstate();
        let status = match code {
            "42704" | "42P01" => StatusCode::NOT_FOUND,
            "55000" | "42710" | "2BP01" => StatusCode::CONFLICT,
            c if c.starts_with("42") || c.starts_with("22") || c.starts_with("0A") => {
                StatusCode::BAD_REQUEST
            }
            c if c.starts_with("53") => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
        }
    }
}

impl From<arrow::error::ArrowError> for ApiError {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

/// Anything not routed.
pub(super) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such resource: {}", uri.path()))
}

type ApiResult = Result<Response, ApiError>;

/// The query parameters as a [`Filter`], or the API's JSON error naming what is wrong with them.
type FilterQuery = Result<Query<Filter>, QueryRejection>;

fn filter(query: FilterQuery) -> Result<Filter, ApiError> {
    query.map(|Query(f)| f).map_err(malformed)
}

/// Malformed query parameters, as the API's JSON error.
fn malformed(rejection: QueryRejection) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "22023",
        message: rejection.body_text(),
    }
}

/// The rows of system table `name`, narrowed by `filter`.
async fn rows(state: &HttpState, name: &str, filter: &Filter) -> Result<RecordBatch, ApiError> {
    let batch = state.system.rows(name).await?;
    // The pipelines table names its pipeline `name`; events, the object they happened to.
    let pipeline_column = match name {
        "pipelines" => "name",
        "events" => "object",
        _ => "pipeline",
    };
    let mut batch = narrow(&batch, pipeline_column, filter.pipeline.as_deref(), str::eq)?;
    // A pipeline reading several sources lists them as `a, b`.
    batch = narrow(&batch, "source", filter.source.as_deref(), |v, s| {
        v.split(", ").any(|one| one == s)
    })?;
    batch = narrow(&batch, "error", filter.message.as_deref(), |m, s| {
        m.contains(s)
    })?;
    if let Some(limit) = filter.limit {
        let rows = batch.num_rows();
        batch = batch.slice(rows.saturating_sub(limit), rows.min(limit));
    }
    Ok(batch)
}

/// The rows of `batch` whose text column `column` matches `wanted` (all when either is absent).
fn narrow(
    batch: &RecordBatch,
    column: &str,
    wanted: Option<&str>,
    matches: impl Fn(&str, &str) -> bool,
) -> Result<RecordBatch, ApiError> {
    let (Some(wanted), Ok(index)) = (wanted, batch.schema().index_of(column)) else {
        return Ok(batch.clone());
    };
    let values = batch.column(index);
    if values.data_type() != &DataType::Utf8 {
        return Ok(batch.clone());
    }
    let mask: BooleanArray = values
        .as_string::<i32>()
        .iter()
        .map(|v| Some(v.is_some_and(|v| matches(v, wanted))))
        .collect();
    Ok(filter_record_batch(batch, &mask)?)
}

/// Rows as a JSON array of objects, NULLs written as `null`.
fn json_rows(batch: &RecordBatch) -> Result<Vec<serde_json::Value>, ApiError> {
    let mut writer = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow_json::writer::JsonArray>(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Internal(format!("writing rows as JSON: {e}")).into())
}

fn json_response(value: serde_json::Value) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(value)).into_response()
}

async fn list(state: &HttpState, name: &str, filter: &Filter) -> ApiResult {
    let batch = rows(state, name, filter).await?;
    Ok(json_response(serde_json::Value::Array(json_rows(&batch)?)))
}

async fn sources(State(state): State<Arc<HttpState>>) -> ApiResult {
    list(&state, "sources", &Filter::default()).await
}

async fn sinks(State(state): State<Arc<HttpState>>) -> ApiResult {
    list(&state, "sinks", &Filter::default()).await
}

/// One pipeline's row, as an object.
async fn pipeline_object(state: &HttpState, name: &str) -> Result<serde_json::Value, ApiError> {
    let all = rows(state, "pipelines", &Filter::default()).await?;
    let one = narrow(&all, "name", Some(name), str::eq)?;
    json_rows(&one)?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("pipeline \"{name}\" does not exist")))
}

async fn pipeline(State(state): State<Arc<HttpState>>, Path(name): Path<String>) -> ApiResult {
    Ok(json_response(pipeline_object(&state, &name).await?))
}

/// The pipeline's figures sampled once a second over the last 15 minutes, oldest first.
async fn history(State(state): State<Arc<HttpState>>, Path(name): Path<String>) -> ApiResult {
    pipeline_object(&state, &name).await?;
    let samples = state.engine.history().samples(&name);
    let value = serde_json::to_value(samples)
        .map_err(|e| Error::Internal(format!("writing samples as JSON: {e}")))?;
    Ok(json_response(value))
}

/// How many of each pipeline's last samples `/history` returns.
#[derive(Debug, Deserialize)]
struct Recent {
    last: Option<usize>,
}

/// Every pipeline's last samples (60 unless `?last=`): what the console's pipelines list draws
/// its rates and sparklines from, in one request.
async fn recent_history(
    State(state): State<Arc<HttpState>>,
    query: Result<Query<Recent>, QueryRejection>,
) -> ApiResult {
    let Query(recent) = query.map_err(malformed)?;
    let samples = state.engine.history().recent(recent.last.unwrap_or(60));
    let value = serde_json::to_value(samples)
        .map_err(|e| Error::Internal(format!("writing samples as JSON: {e}")))?;
    Ok(json_response(value))
}

async fn start(State(state): State<Arc<HttpState>>, Path(name): Path<String>) -> ApiResult {
    lifecycle(&state, Statement::StartPipeline { name }).await
}

async fn stop(State(state): State<Arc<HttpState>>, Path(name): Path<String>) -> ApiResult {
    lifecycle(&state, Statement::StopPipeline { name }).await
}

/// Runs START or STOP as a psql user's statement would, and answers with the pipeline after it.
async fn lifecycle(state: &HttpState, statement: Statement) -> ApiResult {
    let name = match &statement {
        Statement::StartPipeline { name } | Statement::StopPipeline { name } => name.clone(),
        _ => return Err(Error::Internal("not a lifecycle statement".into()).into()),
    };
    tracing::info!(pipeline = %name, statement = %statement.tag(), "Requested over HTTP.");
    state.engine.execute_statement(&statement, None).await?;
    Ok(json_response(pipeline_object(state, &name).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_become_http_statuses() {
        let status = |e: Error| ApiError::from(e).status;
        assert_eq!(
            status(Error::NotFound {
                kind: "pipeline",
                name: "p".into()
            }),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(Error::InvalidState("running".into())),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(Error::Unsupported("x".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(Error::Internal("x".into())),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
