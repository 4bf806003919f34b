//! The router, and what every request goes through: latency, injected faults, the log.

use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{RequestRecord, Shared, events, leases, lock, nodes, pods};

pub(super) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/api/v1/nodes", get(nodes::list_nodes))
        .route(
            "/api/v1/nodes/{name}",
            get(nodes::get_node).patch(nodes::patch_node),
        )
        .route("/api/v1/pods", get(pods::list_all_pods))
        .route(
            "/api/v1/namespaces/{ns}/pods",
            get(pods::list_namespace_pods),
        )
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(pods::get_pod))
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/eviction",
            post(pods::evict_pod),
        )
        .route(
            "/api/v1/namespaces/{ns}/events",
            post(events::create_event).get(events::list_events),
        )
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
            post(leases::create_lease),
        )
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
            get(leases::get_lease)
                .put(leases::replace_lease)
                .patch(leases::patch_lease),
        )
        .fallback(unknown_path)
        .layer(middleware::from_fn_with_state(shared.clone(), front_door))
        .with_state(shared)
}

pub(super) fn status_body(
    status: StatusCode,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Response {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": if status.is_success() { "Success" } else { "Failure" },
        "message": message,
        "reason": reason,
        "code": status.as_u16(),
    });
    if let (Some(details), Value::Object(map)) = (details, &mut body) {
        map.insert("details".to_owned(), details);
    }
    (status, axum::Json(body)).into_response()
}

pub(super) fn not_found(kind: &str, name: &str) -> Response {
    status_body(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{kind} \"{name}\" not found"),
        Some(json!({"name": name, "kind": kind})),
    )
}

fn reason_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BadRequest",
        404 => "NotFound",
        409 => "Conflict",
        415 => "UnsupportedMediaType",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

pub(super) fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_value(value) {
        Ok(value) => (status, axum::Json(value)).into_response(),
        Err(error) => status_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &format!("serializing response: {error}"),
            None,
        ),
    }
}

/// Latency, injected faults and the request log, in front of every route.
async fn front_door(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let (latency, fault) = {
        let mut cluster = lock(&shared);
        cluster.reap(Instant::now());
        (cluster.latency, cluster.take_fault(&method, &path))
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let response = match fault {
        Some(status) => status_body(
            status,
            reason_for(status),
            &format!("injected fault: {method} {path} answered {status}"),
            None,
        ),
        None => next.run(request).await,
    };
    lock(&shared).requests.push(RequestRecord {
        method,
        path,
        query,
        status: response.status().as_u16(),
    });
    response
}

async fn unknown_path(request: Request) -> Response {
    status_body(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!(
            "the server could not find the requested resource ({})",
            request.uri().path()
        ),
        None,
    )
}
