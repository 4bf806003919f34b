//! `POST`/`GET /api/v1/namespaces/{ns}/events` (core/v1), recorded for the tests, with
//! the API server's checks of a new Event (`ValidateEventCreate`): its name and metadata,
//! the involved object's namespace against the Event's, and, for an Event with `eventTime`,
//! the fields such an Event must carry.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Event;
use serde_json::{Value, json};

use super::status::{FieldError, invalid, json_response, status_body};
use super::validation;
use super::{Shared, lock};

/// `legacyValidateEvent` and the metadata checks, for an Event created in `namespace`.
fn event_errors(event: &Event, sent: &Value, namespace: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let name = event.metadata.name.as_deref().unwrap_or_default();
    for message in validation::subdomain_errors(name) {
        errors.push(FieldError::invalid("metadata.name", name, &message));
    }
    errors.extend(validation::metadata_errors(
        sent.get("metadata").unwrap_or(&Value::Null),
    ));
    let involved = event
        .involved_object
        .namespace
        .as_deref()
        .unwrap_or_default();
    let mismatch = FieldError::invalid(
        "involvedObject.namespace",
        involved,
        "does not match event.namespace",
    );
    if event.event_time.is_none() {
        let fits = if involved.is_empty() {
            namespace.is_empty() || namespace == "default"
        } else {
            namespace == involved
        };
        if !fits {
            errors.push(mismatch);
        }
        return errors;
    }
    if involved.is_empty() && namespace != "default" && namespace != "kube-system" {
        errors.push(mismatch);
    }
    let required = [
        ("reportingComponent", event.reporting_component.as_deref()),
        ("reportingInstance", event.reporting_instance.as_deref()),
        ("action", event.action.as_deref()),
        ("reason", event.reason.as_deref()),
    ];
    for (field, value) in required {
        if value.is_none_or(str::is_empty) {
            errors.push(FieldError::required(field));
        }
    }
    errors
}

pub(super) async fn create_event(
    State(shared): State<Shared>,
    Path(namespace): Path<String>,
    body: Bytes,
) -> Response {
    let decoded = serde_json::from_slice::<Value>(&body)
        .and_then(|sent| serde_json::from_value::<Event>(sent.clone()).map(|event| (event, sent)));
    let (mut event, sent) = match decoded {
        Ok(decoded) => decoded,
        Err(error) => {
            return status_body(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("Event in version \"v1\" cannot be handled as a Event: {error}"),
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
    if cluster.rules.validation {
        let errors = event_errors(&event, &sent, &namespace);
        if !errors.is_empty() {
            let name = event.metadata.name.clone().unwrap_or_default();
            return invalid("", "Event", &name, &errors);
        }
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
