//! The router, and what every request goes through: latency, injected faults, the log.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

use super::status::status_body;
use super::workloads;
use super::{RequestRecord, Shared, discovery, disruption, events, leases, lock, nodes, pods};

pub(super) fn router(shared: Shared, address: String) -> Router {
    Router::new()
        .route("/version", get(discovery::version))
        .route(
            "/api",
            get(move || {
                let address = address.clone();
                async move { discovery::core_versions(&address) }
            }),
        )
        .route("/api/v1", get(discovery::core_resources))
        .route("/apis", get(discovery::groups))
        .route("/apis/{group}", get(discovery::group))
        .route("/apis/{group}/{version}", get(discovery::group_resources))
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
            post(leases::create_lease).get(leases::list_leases),
        )
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
            get(leases::get_lease)
                .put(leases::replace_lease)
                .patch(leases::patch_lease),
        )
        .route(
            "/apis/policy/v1/poddisruptionbudgets",
            get(disruption::list_all_pdbs),
        )
        .route(
            "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
            get(disruption::list_namespace_pdbs),
        )
        .route(
            "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}",
            get(disruption::get_pdb),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/daemonsets/{name}",
            get(workloads::get_daemon_set),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/replicasets/{name}",
            get(workloads::get_replica_set),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}",
            get(workloads::get_stateful_set),
        )
        .fallback(unknown_path)
        .layer(middleware::from_fn_with_state(shared.clone(), front_door))
        .with_state(shared)
}

fn reason_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BadRequest",
        404 => "NotFound",
        409 => "Conflict",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

/// Latency, injected faults and the request log, in front of every route.
async fn front_door(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let (latency, fault) = {
        let mut cluster = lock(&shared);
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
