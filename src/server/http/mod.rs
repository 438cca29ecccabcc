//! The HTTP edge of the control plane: the web console at `/`, the JSON API under `/api/v1`,
//! Prometheus metrics at `/metrics`, and `/healthz` and `/readyz`. Every figure is read from the
//! rows of the system tables, built by the code `tributary.*` queries run, so HTTP and psql
//! always agree.

mod api;
mod auth;
mod console;
mod guard;
mod metrics;
#[cfg(test)]
mod schema_check;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::engine::Engine;
use crate::system_tables::SystemSchema;

/// Where `tributary serve` listens for HTTP unless told otherwise.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7480";

/// What can go wrong starting the HTTP server.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Anyone who can reach the address could stop pipelines and read their errors' records.
    #[error(
        "refusing to serve HTTP on {addr}: beyond loopback the console and API need TLS \
         (--tls-cert and --tls-key) and users (--admin-password-file); otherwise listen on \
         127.0.0.1 or [::1] (and reach it through an SSH tunnel or an authenticating proxy)"
    )]
    NotLoopback {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The address could not be bound.
    #[error("listening for HTTP on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving HTTP: {0}")]
    Serve(#[source] std::io::Error),
}

/// What the handlers read: the engine and its system tables.
pub struct HttpState {
    engine: Arc<Engine>,
    system: Arc<SystemSchema>,
    ready: Arc<AtomicBool>,
}

/// The routes over `engine`. `/readyz` answers 200 once `ready` is set (the pipelines that
/// were running have been resumed).
pub fn router(engine: Arc<Engine>, ready: Arc<AtomicBool>) -> Router {
    let system = engine.system().clone();
    let state = Arc::new(HttpState {
        engine,
        system,
        ready,
    });
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .nest("/api/v1", api::routes())
        .merge(console::routes())
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticated,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::same_origin,
        ))
        .with_state(state)
}

/// Binds `addr`, which must be a loopback address unless `secured` (TLS, and users to
/// authenticate: see [`HttpError::NotLoopback`]).
pub async fn bind(addr: SocketAddr, secured: bool) -> Result<TcpListener, HttpError> {
    if !secured && !addr.ip().is_loopback() {
        return Err(HttpError::NotLoopback { addr });
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serves `router` on `listener` until `shutdown` completes, over TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    let Some(tls) = tls else {
        return axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(HttpError::Serve);
    };
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed.");
                    continue;
                }
            },
        };
        let (tls, router) = (tls.clone(), router.clone());
        tokio::spawn(async move {
            // A client that never finishes its handshake holds nothing for long.
            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(socket));
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed.");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error.");
            }
        });
    }
}

/// How long a client has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The process serves.
async fn healthz() -> &'static str {
    "ok\n"
}

/// The engine has resumed its pipelines and takes requests.
async fn readyz(State(state): State<Arc<HttpState>>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "resuming pipelines\n")
    }
}
