//! Who may use the console, the API and the metrics once users exist: HTTP basic
//! authentication against the same users and verifiers as the Postgres wire protocol; a reader
//! may look, and only an admin may start or stop pipelines. `/healthz` and `/readyz` stay open
//! for probes. Until a user exists, requests are trusted (the listener is loopback only).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::HttpState;
use crate::catalog::users::{Role, Verifier};
use crate::catalog::Catalog;

/// Lets through what [`role_of`] accepts, and a change (a POST) only from an admin.
pub(super) async fn authenticated(
    State(state): State<Arc<HttpState>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path == "/healthz" || path == "/readyz" {
        return next.run(request).await;
    }
    match role_of(state.engine.catalog(), request.headers()) {
        Ok(None) | Ok(Some(Role::Admin)) => next.run(request).await,
        Ok(Some(Role::Reader)) if request.method().is_safe() => next.run(request).await,
        Ok(Some(Role::Reader)) => refuse(
            StatusCode::FORBIDDEN,
            "42501",
            "permission denied: starting and stopping pipelines needs an admin user",
        ),
        Err(message) => {
            tracing::warn!(uri = %request.uri(), %message, "Refused an HTTP request.");
            let mut response = refuse(StatusCode::UNAUTHORIZED, "28P01", message);
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"tributary\", charset=\"UTF-8\""),
            );
            response
        }
    }
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

/// The role of the user the request authenticates as; `None` when no user exists (trusted).
fn role_of(catalog: &Catalog, headers: &HeaderMap) -> Result<Option<Role>, &'static str> {
    if !catalog.requires_authentication() {
        return Ok(None);
    }
    const WANTED: &str = "authentication required: HTTP basic with a Tributary user";
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(WANTED)?;
    let (scheme, encoded) = value.split_once(' ').ok_or(WANTED)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(WANTED);
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| WANTED)?;
    let decoded = String::from_utf8(decoded).map_err(|_| WANTED)?;
    let (name, password) = decoded.split_once(':').ok_or(WANTED)?;
    const FAILED: &str = "password authentication failed";
    let user = catalog.user(name);
    let verifier = user
        .as_ref()
        .and_then(|u| Verifier::parse(&u.verifier).ok());
    match (user, verifier) {
        (Some(user), Some(v)) if v.matches(password) => Ok(Some(user.role)),
        (Some(_), _) => Err(FAILED),
        // As long as a real check, so names cannot be probed by timing.
        (None, _) => {
            Verifier::new(password);
            Err(FAILED)
        }
    }
}
