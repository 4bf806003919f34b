//! Metadata-only lists, as the API server answers a list request whose `Accept` asks for
//! `application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1` (kube's
//! `Api::list_metadata`, client-go's metadata client): a `PartialObjectMetadataList` of
//! `meta.k8s.io/v1`, each item a `PartialObjectMetadata` carrying the object's whole
//! `metadata` and nothing else, the list's `resourceVersion`, `continue` and
//! `remainingItemCount` as for the full list (`asPartialObjectMetadataList` in the
//! apiserver's `handlers/response.go`). Asking a list for `as=PartialObjectMetadata` (one
//! object) is its 406. Leniencies: only the first media type of `Accept` is read (clients
//! here send one); only pod lists model it (no client here reads other lists' metadata
//! only: they answer whole objects, which a metadata client still decodes); `v=v1beta1`,
//! which the real server also serves, is refused here as no client here asks for it.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use super::status::status_body;

/// How a list request wants its answer, from its first `Accept` media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ListAs {
    /// Whole objects (plain `application/json`, or a Table: see [`super::table`]).
    Objects,
    MetadataList,
}

/// A representation the server cannot give a list in: its 406.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NotAcceptable(String);

impl NotAcceptable {
    pub(super) fn response(self) -> Response {
        status_body(StatusCode::NOT_ACCEPTABLE, "NotAcceptable", &self.0, None)
    }
}

/// The representation asked for, or why the server cannot give a list in it.
pub(super) fn list_as(headers: &HeaderMap, list_kind: &str) -> Result<ListAs, NotAcceptable> {
    let Some(first) = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .and_then(|accept| accept.split(',').next())
    else {
        return Ok(ListAs::Objects);
    };
    let parameter = |name: &str| {
        first
            .split(';')
            .skip(1)
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.trim())
    };
    match parameter("as") {
        Some("PartialObjectMetadataList") => {
            if parameter("g") == Some("meta.k8s.io") && parameter("v") == Some("v1") {
                Ok(ListAs::MetadataList)
            } else {
                Err(NotAcceptable(format!(
                    "no PartialObjectMetadataList exists in group version {}/{}",
                    parameter("g").unwrap_or_default(),
                    parameter("v").unwrap_or_default()
                )))
            }
        }
        Some("PartialObjectMetadata") => Err(NotAcceptable(format!(
            "you requested PartialObjectMetadata, but the requested object is a list (*core.{list_kind})"
        ))),
        _ => Ok(ListAs::Objects),
    }
}

/// The `PartialObjectMetadataList` of one page: `metadata` is the list's (version, token).
pub(super) fn list_response<'a>(
    items: impl Iterator<Item = &'a ObjectMeta>,
    metadata: Value,
) -> Response {
    let items: Vec<Value> = items
        .map(|object| {
            json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": object,
            })
        })
        .collect();
    let list = json!({
        "kind": "PartialObjectMetadataList",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "items": items,
    });
    (StatusCode::OK, axum::Json(list)).into_response()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn accepting(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    #[test]
    fn reads_the_first_media_type_of_accept() {
        let status = |value: &str| match list_as(&accepting(value), "PodList") {
            Ok(list_as) => Ok(list_as),
            Err(refusal) => Err(refusal.response().status().as_u16()),
        };
        assert_eq!(
            status("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
            Ok(ListAs::MetadataList)
        );
        assert_eq!(
            status("application/json; as=PartialObjectMetadataList; v=v1; g=meta.k8s.io"),
            Ok(ListAs::MetadataList)
        );
        assert_eq!(status("application/json"), Ok(ListAs::Objects));
        assert_eq!(
            status("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"),
            Err(406)
        );
        assert_eq!(
            status("application/json;as=PartialObjectMetadataList;g=apps;v=v1"),
            Err(406)
        );
        assert_eq!(
            list_as(&HeaderMap::new(), "PodList").ok(),
            Some(ListAs::Objects)
        );
    }
}
