//! The API server's answers that are not objects: `Status` bodies, with the reasons, codes and
//! messages `k8s.io/apimachinery` builds (`api/errors`, `util/validation/field`), and the
//! `Warning` headers it adds for dropped unknown fields.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

pub(super) fn status_body(
    status: StatusCode,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Response {
    let mut body = Map::new();
    body.insert("kind".to_owned(), json!("Status"));
    body.insert("apiVersion".to_owned(), json!("v1"));
    body.insert("metadata".to_owned(), json!({}));
    let outcome = if status.is_success() {
        "Success"
    } else {
        "Failure"
    };
    body.insert("status".to_owned(), json!(outcome));
    if !message.is_empty() {
        body.insert("message".to_owned(), json!(message));
    }
    if !reason.is_empty() {
        body.insert("reason".to_owned(), json!(reason));
    }
    if let Some(details) = details {
        body.insert("details".to_owned(), details);
    }
    body.insert("code".to_owned(), json!(status.as_u16()));
    (status, axum::Json(Value::Object(body))).into_response()
}

/// `errors.NewNotFound`: `pods "web-1" not found`, `leases.coordination.k8s.io "x" not found`.
pub(super) fn not_found(resource: &str, name: &str) -> Response {
    let (kind, group) = match resource.split_once('.') {
        Some((kind, group)) => (kind, Some(group)),
        None => (resource, None),
    };
    let mut details = json!({"name": name, "kind": kind});
    if let (Some(group), Value::Object(map)) = (group, &mut details) {
        map.insert("group".to_owned(), json!(group));
    }
    status_body(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{resource} \"{name}\" not found"),
        Some(details),
    )
}

pub(super) fn bad_request(message: &str) -> Response {
    status_body(StatusCode::BAD_REQUEST, "BadRequest", message, None)
}

/// `errors.NewConflict` for an update computed from another `resourceVersion`.
pub(super) fn conflict(resource: &str, name: &str) -> Response {
    let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
    let mut details = json!({"name": name, "kind": kind});
    if let (false, Value::Object(map)) = (group.is_empty(), &mut details) {
        map.insert("group".to_owned(), json!(group));
    }
    status_body(
        StatusCode::CONFLICT,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again"
        ),
        Some(details),
    )
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

/// [`json_response`] with one `Warning: 299 - "…"` header per message, as the API server
/// reports each unknown field it dropped (field validation `Warn`, its default).
pub(super) fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for warning in warnings {
        let escaped = warning.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(value) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            response.headers_mut().append("Warning", value);
        }
    }
    response
}

/// One `field.Error`: what `k8s.io/apimachinery/pkg/util/validation/field` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FieldError {
    kind: FieldErrorKind,
    pub(super) field: String,
    /// The bad value as Go's `ErrorBody` prints it (strings quoted), if it prints one.
    value: Option<String>,
    detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldErrorKind {
    Invalid,
    NotSupported,
    Required,
    Duplicate,
    TooLong,
}

impl FieldErrorKind {
    fn text(self) -> &'static str {
        match self {
            FieldErrorKind::Invalid => "Invalid value",
            FieldErrorKind::NotSupported => "Unsupported value",
            FieldErrorKind::Required => "Required value",
            FieldErrorKind::Duplicate => "Duplicate value",
            FieldErrorKind::TooLong => "Too long",
        }
    }

    fn cause(self) -> &'static str {
        match self {
            FieldErrorKind::Invalid => "FieldValueInvalid",
            FieldErrorKind::NotSupported => "FieldValueNotSupported",
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Duplicate => "FieldValueDuplicate",
            FieldErrorKind::TooLong => "FieldValueTooLong",
        }
    }
}

/// Go's `%q` of a string, near enough: JSON string escaping.
pub(super) fn quoted(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| format!("\"{value}\""))
}

impl FieldError {
    /// `field.Invalid` with a string value.
    pub(super) fn invalid(field: &str, value: &str, detail: &str) -> Self {
        Self::invalid_printed(field, quoted(value), detail)
    }

    /// `field.Invalid` with a value already printed as Go prints it (numbers bare).
    pub(super) fn invalid_printed(field: &str, value: String, detail: &str) -> Self {
        FieldError {
            kind: FieldErrorKind::Invalid,
            field: field.to_owned(),
            value: Some(value),
            detail: detail.to_owned(),
        }
    }

    pub(super) fn not_supported(field: &str, value: &str, supported: &[&str]) -> Self {
        let supported: Vec<String> = supported.iter().map(|value| quoted(value)).collect();
        FieldError {
            kind: FieldErrorKind::NotSupported,
            field: field.to_owned(),
            value: Some(quoted(value)),
            detail: format!("supported values: {}", supported.join(", ")),
        }
    }

    pub(super) fn required(field: &str) -> Self {
        FieldError {
            kind: FieldErrorKind::Required,
            field: field.to_owned(),
            value: None,
            detail: String::new(),
        }
    }

    pub(super) fn duplicate(field: &str, printed: String, detail: &str) -> Self {
        FieldError {
            kind: FieldErrorKind::Duplicate,
            field: field.to_owned(),
            value: Some(printed),
            detail: detail.to_owned(),
        }
    }

    pub(super) fn too_long(field: &str, limit: usize) -> Self {
        FieldError {
            kind: FieldErrorKind::TooLong,
            field: field.to_owned(),
            value: None,
            detail: format!("may not be more than {limit} bytes"),
        }
    }

    /// `ErrorBody()`: everything after the field.
    fn body(&self) -> String {
        let mut body = self.kind.text().to_owned();
        if let Some(value) = &self.value {
            body = format!("{body}: {value}");
        }
        if !self.detail.is_empty() {
            body = format!("{body}: {}", self.detail);
        }
        body
    }

    fn text(&self) -> String {
        format!("{}: {}", self.field, self.body())
    }
}

/// `errors.NewInvalid`: 422 `Node "n" is invalid: spec.taints[0].effect: Unsupported value: …`
/// (several errors in brackets, comma-separated), each error a cause.
pub(super) fn invalid(group: &str, kind: &str, name: &str, errors: &[FieldError]) -> Response {
    let qualified = if group.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}.{group}")
    };
    let texts: Vec<String> = errors.iter().map(FieldError::text).collect();
    let summary = match texts.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let causes: Vec<Value> = errors
        .iter()
        .map(|error| {
            json!({"reason": error.kind.cause(), "message": error.body(), "field": error.field})
        })
        .collect();
    let mut details = Map::new();
    for (key, value) in [("name", name), ("group", group), ("kind", kind)] {
        if !value.is_empty() {
            details.insert(key.to_owned(), json!(value));
        }
    }
    details.insert("causes".to_owned(), Value::Array(causes));
    let details = Value::Object(details);
    status_body(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        &format!("{qualified} {} is invalid: {summary}", quoted(name)),
        Some(details),
    )
}

/// How the request asked unknown fields to be treated (`?fieldValidation=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FieldValidation {
    Ignore,
    /// The API server's default: drop them, say so in `Warning` headers.
    Warn,
    Strict,
}

impl FieldValidation {
    pub(super) fn of(query: Option<&str>) -> FieldValidation {
        let value = query
            .unwrap_or_default()
            .split('&')
            .find_map(|pair| pair.strip_prefix("fieldValidation="));
        match value {
            Some("Ignore") => FieldValidation::Ignore,
            Some("Strict") => FieldValidation::Strict,
            _ => FieldValidation::Warn,
        }
    }
}

/// The fields of `sent` that its typed reading `kept` dropped (unknown to the type), as
/// dotted paths (`spec.foo`, `metadata.labels` never: maps keep every key). Nulls are not
/// fields; list items are compared by position.
pub(super) fn unknown_fields(sent: &Value, kept: &Value) -> Vec<String> {
    let mut found = Vec::new();
    collect_unknown(sent, kept, "", &mut found);
    found
}

fn collect_unknown(sent: &Value, kept: &Value, path: &str, found: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(sent), Value::Object(kept)) => {
            for (key, value) in sent {
                if value.is_null() {
                    continue;
                }
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match kept.get(key) {
                    Some(kept_value) => collect_unknown(value, kept_value, &child, found),
                    None if is_empty(value) => {}
                    None => found.push(child),
                }
            }
        }
        (Value::Array(sent), Value::Array(kept)) => {
            for (index, (value, kept_value)) in sent.iter().zip(kept).enumerate() {
                collect_unknown(value, kept_value, &format!("{path}[{index}]"), found);
            }
        }
        _ => {}
    }
}

/// Values a typed object may leave out when serialized again although they were known.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.values().all(is_empty),
        Value::Array(items) => items.is_empty(),
        Value::String(text) => text.is_empty(),
        Value::Null => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_named_by_path() {
        let sent = json!({"spec": {"holderIdentity": "a", "colour": "red", "empty": {}},
                          "metadata": {"labels": {"x": "1"}}, "gone": null});
        let kept = json!({"spec": {"holderIdentity": "a"}, "metadata": {"labels": {"x": "1"}}});
        assert_eq!(unknown_fields(&sent, &kept), ["spec.colour"]);
    }

    #[test]
    fn field_errors_print_as_go_prints_them() {
        let error = FieldError::not_supported(
            "spec.taints[0].effect",
            "Bogus",
            &["NoSchedule", "PreferNoSchedule", "NoExecute"],
        );
        assert_eq!(
            error.text(),
            "spec.taints[0].effect: Unsupported value: \"Bogus\": supported values: \
             \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""
        );
        assert_eq!(
            FieldError::required("spec.taints[0].effect").text(),
            "spec.taints[0].effect: Required value"
        );
    }
}
