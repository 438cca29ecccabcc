//! The HTTP routes in process (a `Router` without a socket) over a real engine that ran a batch
//! pipeline over a file with a malformed line.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use tower::ServiceExt;

use super::schema_check::{check, response_schema};
use crate::catalog::PipelineState;
use crate::engine::Engine;

/// An engine whose pipeline `p` read 4 lines, 1 of them malformed, and the routes over it.
async fn served() -> (tempfile::TempDir, Arc<Engine>, Router) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"id\": 1, \"name\": \"a\"}\n{\"id\": 2, \"name\": \"b\"}\nnot json at all\n{\"id\": 3, \"name\": \"c\"}\n",
    )
    .unwrap();
    let engine = Engine::open(&dir.path().join("data")).await.unwrap();
    // The input sits beside the data directory.
    engine.allow_paths(&[dir.path().to_path_buf()]).unwrap();
    engine
        .execute_sql(&format!(
            "CREATE SOURCE events (id BIGINT, name TEXT) WITH (connector = 'file', path = '{}', format = 'json');
             CREATE SINK warehouse WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:1', topic = 't', \"properties.sasl.password\" = 'hunter2');
             CREATE SINK out WITH (connector = 'blackhole');
             CREATE PIPELINE p AS INSERT INTO out SELECT id, name FROM events;",
            input.display()
        ))
        .await
        .unwrap();
    assert_eq!(
        engine.wait_pipeline("p").await,
        Some(PipelineState::Completed)
    );
    let router = super::router(engine.clone(), Arc::new(AtomicBool::new(true)));
    (dir, engine, router)
}

async fn call(router: &Router, method: &str, uri: &str) -> (StatusCode, String) {
    call_with(router, method, uri, &[]).await
}

/// `method uri` with `headers`.
async fn call_with(
    router: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The JSON answer to `method uri`, checked against the OpenAPI document's schema for route
/// `route` (its path template) and the status.
async fn json(
    router: &Router,
    method: &str,
    uri: &str,
    route: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let (status, body) = call(router, method, uri).await;
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{uri}: {e}: {body}"));
    if let Some(route) = route {
        let doc: serde_json::Value = serde_json::from_str(super::api::OPENAPI).unwrap();
        let method = method.to_ascii_lowercase();
        let schema = response_schema(&doc, route, &method, status.as_u16());
        if let Err(e) = check(&doc, schema, &value, "$") {
            panic!("{method} {uri} answers other than the OpenAPI document says: {e}\n{value}");
        }
    }
    (status, value)
}

#[tokio::test]
async fn pipelines_and_their_rejected_rows_read_as_the_system_tables_do() {
    let (_dir, engine, router) = served().await;
    let (status, list) = json(
        &router,
        "GET",
        "/api/v1/pipelines",
        Some("/api/v1/pipelines"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    let p = &list[0];
    assert_eq!(p["name"], "p");
    assert_eq!(p["state"], "completed");
    assert_eq!(p["rows_in"], 4);
    assert_eq!(p["rows_out"], 3);
    assert_eq!(p["rows_errored"], 1);
    assert!(p["error"].is_null(), "{p}");

    // The same figures as tributary.pipelines over SQL.
    let sql = engine
        .execute_sql(
            "SELECT rows_in, rows_out, rows_errored FROM tributary.pipelines WHERE name = 'p'",
        )
        .await
        .unwrap();
    let crate::Output::Rows { batches, .. } = &sql[0] else {
        panic!("no rows")
    };
    let text = arrow::util::pretty::pretty_format_batches(batches)
        .unwrap()
        .to_string();
    assert!(
        text.contains("| 4       | 3        | 1            |"),
        "{text}"
    );

    let (status, one) = json(
        &router,
        "GET",
        "/api/v1/pipelines/p",
        Some("/api/v1/pipelines/{name}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, *p);

    let (status, errors) = json(
        &router,
        "GET",
        "/api/v1/errors?pipeline=p",
        Some("/api/v1/errors"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let errors = errors.as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["raw"], "not json at all", "{:?}", errors[0]);
    let (_, none) = json(
        &router,
        "GET",
        "/api/v1/errors?pipeline=other",
        Some("/api/v1/errors"),
    )
    .await;
    assert_eq!(none, serde_json::json!([]));

    // Secrets stay secret.
    let (status, sources) = call(&router, "GET", "/api/v1/sources").await;
    assert_eq!(status, StatusCode::OK);
    assert!(sources.contains("events"), "{sources}");
    let (status, sinks) = call(&router, "GET", "/api/v1/sinks").await;
    assert_eq!(status, StatusCode::OK);
    assert!(sinks.contains("warehouse"), "{sinks}");
    assert!(!sinks.contains("hunter2"), "{sinks}");
}

#[tokio::test]
async fn metrics_carry_the_counts_and_start_stop_answer_as_sql_does() {
    let (_dir, _engine, router) = served().await;
    let (status, text) = call(&router, "GET", "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        "tributary_pipeline_records_in_total{pipeline=\"p\"} 4",
        "tributary_pipeline_records_out_total{pipeline=\"p\"} 3",
        "tributary_pipeline_records_rejected_total{pipeline=\"p\"} 1",
        "tributary_pipeline_up{pipeline=\"p\"} 0",
        "tributary_pipeline_state{pipeline=\"p\",state=\"completed\"} 1",
        "tributary_pipeline_state{pipeline=\"p\",state=\"running\"} 0",
        "# TYPE tributary_process_cpu_seconds_total counter",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }

    let (status, body) = json(
        &router,
        "POST",
        "/api/v1/pipelines/nope/stop",
        Some("/api/v1/pipelines/{name}/stop"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "42704", "{body}");
    let (status, _) = call(&router, "GET", "/api/v1/pipelines/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = json(&router, "GET", "/api/v1/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "42704");
    let (status, _) = call(&router, "GET", "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&router, "GET", "/readyz").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn an_address_beyond_loopback_is_refused() {
    let err = super::bind("0.0.0.0:0".parse().unwrap(), false)
        .await
        .unwrap_err();
    assert!(matches!(err, super::HttpError::NotLoopback { .. }), "{err}");
    assert!(err.to_string().contains("need TLS"), "{err}");
    assert!(super::bind("127.0.0.1:0".parse().unwrap(), false)
        .await
        .is_ok());
    // With TLS and users, any address.
    assert!(super::bind("0.0.0.0:0".parse().unwrap(), true)
        .await
        .is_ok());
}

#[tokio::test]
async fn every_list_answers_as_the_openapi_document_says() {
    let (_dir, engine, router) = served().await;
    for route in [
        "/api/v1/pipelines",
        "/api/v1/sources",
        "/api/v1/sinks",
        "/api/v1/errors",
        "/api/v1/checkpoints",
        "/api/v1/operators",
        "/api/v1/lag",
        "/api/v1/events",
        "/api/v1/commits",
    ] {
        let (status, value) = json(&router, "GET", route, Some(route)).await;
        assert_eq!(status, StatusCode::OK, "{route}");
        assert!(value.is_array(), "{route}: {value}");
    }
    let (_, checkpoints) = json(&router, "GET", "/api/v1/checkpoints?pipeline=p", None).await;
    assert!(!checkpoints.as_array().unwrap().is_empty(), "{checkpoints}");
    let (status, _) = json(
        &router,
        "POST",
        "/api/v1/pipelines/p/start",
        Some("/api/v1/pipelines/{name}/start"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The history: a sample taken now is the last one.
    crate::sampler::sample(engine.system(), engine.history())
        .await
        .unwrap();
    let (status, samples) = json(
        &router,
        "GET",
        "/api/v1/pipelines/p/history",
        Some("/api/v1/pipelines/{name}/history"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let last = samples.as_array().unwrap().last().cloned().unwrap();
    assert_eq!(
        (&last["rows_in"], &last["rows_errored"]),
        (&4.into(), &1.into())
    );
    let (status, recent) = json(
        &router,
        "GET",
        "/api/v1/history?last=2",
        Some("/api/v1/history"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let p = recent["p"].as_array().unwrap();
    assert!(!p.is_empty() && p.len() <= 2, "{recent}");
    assert_eq!(p.last().unwrap()["rows_in"], 4);
    let (status, _) = json(
        &router,
        "GET",
        "/api/v1/history?last=x",
        Some("/api/v1/history"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The events: the DDL, the batch run's start and completion, then the START above (which
    // completes again).
    let (_, events) = json(&router, "GET", "/api/v1/events?pipeline=p", None).await;
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[..3], ["create", "start", "complete"], "{events}");
    assert!(kinds.len() >= 4 && kinds[3] == "start", "{events}");
    let (status, _) = json(
        &router,
        "GET",
        "/api/v1/pipelines/nope/history",
        Some("/api/v1/pipelines/{name}/history"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, doc) = json(&router, "GET", "/api/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
}

#[tokio::test]
async fn other_web_sites_and_rebound_names_are_refused_and_stop_nothing() {
    let (_dir, _engine, router) = served().await;
    let doc: serde_json::Value = serde_json::from_str(super::api::OPENAPI).unwrap();
    let refused = |(status, body): (StatusCode, String), route: &str, method: &str| {
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {route}: {body}");
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["error"]["code"], "42501", "{value}");
        check(&doc, response_schema(&doc, route, method, 403), &value, "$").unwrap();
    };
    // A cross-site form posting to START: refused before it runs.
    refused(
        call_with(
            &router,
            "POST",
            "/api/v1/pipelines/p/start",
            &[
                ("host", "127.0.0.1:7480"),
                ("origin", "https://evil.example"),
            ],
        )
        .await,
        "/api/v1/pipelines/{name}/start",
        "post",
    );
    let (_, p) = json(&router, "GET", "/api/v1/pipelines/p", None).await;
    assert_eq!(p["state"], "completed", "{p}");
    // A DNS-rebinding page reading the rejected records.
    refused(
        call_with(
            &router,
            "GET",
            "/api/v1/errors",
            &[
                ("host", "rebind.evil.example:7480"),
                ("origin", "http://rebind.evil.example:7480"),
            ],
        )
        .await,
        "/api/v1/errors",
        "get",
    );
    // The console's own requests pass.
    let (status, _) = call_with(
        &router,
        "GET",
        "/api/v1/errors",
        &[
            ("host", "localhost:7480"),
            ("origin", "http://localhost:7480"),
            ("sec-fetch-site", "same-origin"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn malformed_parameters_get_a_json_error_and_source_matches_any_of_several() {
    let (_dir, _engine, router) = served().await;
    let (status, body) = json(
        &router,
        "GET",
        "/api/v1/errors?limit=abc",
        Some("/api/v1/errors"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "22023", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("limit"),
        "{body}"
    );
    let (_, list) = json(&router, "GET", "/api/v1/pipelines?source=events", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let (_, list) = json(&router, "GET", "/api/v1/pipelines?source=even", None).await;
    assert_eq!(list, serde_json::json!([]));
}
