//! HTTP endpoints beside the client transports: `/health`, `/metrics`, and
//! the server API for backends ([`http`], spec/10-server-api.md) with its
//! OpenAPI document ([`openapi`]).

pub mod http;
pub mod openapi;

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::engine::Node;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its
/// handle; `None` when another recorder was installed first.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            crate::metrics::describe();
            Some(handle)
        })
        .as_ref()
}

/// `GET /health`: 200 when the node serves and its broker answers, 503 with
/// the reason otherwise (shutting down, broker unavailable).
pub async fn health(State(node): State<Arc<Node>>) -> Response {
    if node.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match node.broker().health().await {
        Ok(()) => {
            let stats = node.stats();
            let body = serde_json::json!({
                "status": "ok",
                "connections": stats.connections,
                "users": stats.users,
                "rooms": stats.rooms,
            });
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, format!("broker: {err}\n")).into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics() -> Response {
    match prometheus() {
        Some(handle) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed\n").into_response(),
    }
}
