//! `POST`/`GET /api/v1/namespaces/{ns}/events` (core/v1), recorded for the tests.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Event;
use serde_json::json;

use super::http::{json_response, status_body};
use super::{Shared, lock};

pub(super) async fn create_event(
    State(shared): State<Shared>,
    Path(namespace): Path<String>,
    body: Bytes,
) -> Response {
    let mut event: Event = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(error) => {
            return status_body(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("body is not a core/v1 Event: {error}"),
                None,
            );
        }
    };
    let mut cluster = lock(&shared);
    let uid = cluster.next_uid();
    if event.metadata.name.is_none() {
        let prefix = event.metadata.generate_name.clone().unwrap_or_default();
        event.metadata.name = Some(format!("{prefix}{}", &uid[uid.len() - 5..]));
    }
    event.metadata.namespace = Some(namespace);
    event.metadata.uid = Some(uid);
    event.metadata.resource_version = Some(cluster.next_resource_version());
    cluster.events.push(event.clone());
    json_response(StatusCode::CREATED, &event)
}

pub(super) async fn list_events(
    State(shared): State<Shared>,
    Path(namespace): Path<String>,
) -> Response {
    let cluster = lock(&shared);
    let items: Vec<&Event> = cluster
        .events
        .iter()
        .filter(|event| event.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .collect();
    let list = json!({
        "apiVersion": "v1",
        "kind": "EventList",
        "metadata": {"resourceVersion": cluster.resource_version.to_string()},
        "items": items,
    });
    (StatusCode::OK, axum::Json(list)).into_response()
}
