//! NTH's webhook: one POST per handled notice (and per Spot Guard outcome), its body rendered
//! from WEBHOOK_TEMPLATE or WEBHOOK_TEMPLATE_FILE, its headers from WEBHOOK_HEADERS.

use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tracing::info;

use super::ReportError;
use super::interruption::{InterruptionEvent, NodeMetadata};
use super::template::{TemplateError, WebhookTemplate};
use crate::config::WebhookSettings;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("rendering the webhook template for event {event_id}: {reason}")]
    Render { event_id: String, reason: String },
    /// `host` is the webhook's scheme and host only and `source` carries no URL: the path
    /// of a Slack or Teams webhook is its credential.
    #[error("posting event {event_id} to the webhook at {host}: {source}")]
    Send {
        event_id: String,
        host: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("posting event {event_id} to the webhook at {host}: answered HTTP {status}")]
    Status {
        event_id: String,
        host: String,
        status: u16,
    },
}

/// A validated webhook, ready to post; cheap to clone. Its `Debug` shows the host only.
#[derive(Clone)]
pub struct Webhook {
    url: reqwest::Url,
    headers: HeaderMap,
    template: Arc<WebhookTemplate>,
    client: reqwest::Client,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("host", &self.host())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Validates everything NTH validates at start-up (and the headers and proxy, which NTH
    /// only finds broken at the first post) and builds the client.
    pub fn new(settings: &WebhookSettings) -> Result<Self, ReportError> {
        let url = parse_url(&settings.url)?;
        let headers = parse_headers(&settings.headers)?;
        let (text, origin) = match &settings.template_file {
            Some(path) => (
                std::fs::read_to_string(path).map_err(|source| {
                    ReportError::WebhookTemplateFile {
                        path: path.clone(),
                        source,
                    }
                })?,
                format!(" from WEBHOOK_TEMPLATE_FILE {}", path.display()),
            ),
            None => (settings.template.clone(), " WEBHOOK_TEMPLATE".to_owned()),
        };
        let template = WebhookTemplate::parse(&text).map_err(|error| match error {
            TemplateError::Parse(reason) => ReportError::WebhookTemplateParse {
                origin: origin.clone(),
                reason,
            },
            TemplateError::Render(reason) => ReportError::WebhookTemplateRender {
                origin: origin.clone(),
                reason,
            },
        })?;
        crate::tls::ensure_crypto_provider();
        let mut client = reqwest::Client::builder().timeout(settings.timeout);
        if let Some(proxy) = settings.proxy.as_deref().filter(|proxy| !proxy.is_empty()) {
            client = client.proxy(reqwest::Proxy::all(proxy).map_err(|source| {
                ReportError::WebhookProxy {
                    proxy: redact(proxy),
                    source: source.without_url(),
                }
            })?);
        }
        Ok(Webhook {
            url,
            headers,
            template: Arc::new(template),
            client: client
                .build()
                .map_err(|error| ReportError::WebhookClient(error.without_url()))?,
        })
    }

    /// The webhook's scheme and host (and port): what may be logged of it.
    pub fn host(&self) -> String {
        origin(&self.url)
    }

    /// Renders and posts one event; waits at most the configured timeout.
    pub async fn post(
        &self,
        node: &NodeMetadata,
        event: &InterruptionEvent,
        reason: &str,
    ) -> Result<(), WebhookError> {
        let body =
            self.template
                .render(node, event, reason)
                .map_err(|error| WebhookError::Render {
                    event_id: event.event_id.clone(),
                    reason: error.to_string(),
                })?;
        let response = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .body(body)
            .send()
            .await
            .map_err(|source| WebhookError::Send {
                event_id: event.event_id.clone(),
                host: self.host(),
                source: source.without_url(),
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(WebhookError::Status {
                event_id: event.event_id.clone(),
                host: self.host(),
                status: status.as_u16(),
            });
        }
        info!(event_id = %event.event_id, kind = %event.kind, "Webhook notification sent to {}", self.host());
        Ok(())
    }
}

/// `scheme://host[:port]` of a URL, without user, password, path or query.
fn origin(url: &reqwest::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{}://{host}:{port}", url.scheme()),
        (Some(host), None) => format!("{}://{host}", url.scheme()),
        (None, _) => format!("{}://", url.scheme()),
    }
}

/// What may be said of a configured URL in an error: its origin when it parses, nothing
/// of it otherwise (an unparsable URL may still hold a credential).
pub(crate) fn redact(url: &str) -> String {
    reqwest::Url::parse(url).map_or_else(|_| "(not shown)".to_owned(), |url| origin(&url))
}

fn parse_url(url: &str) -> Result<reqwest::Url, ReportError> {
    let invalid = |reason: String| ReportError::WebhookUrl {
        url: redact(url),
        reason,
    };
    let parsed = reqwest::Url::parse(url).map_err(|error| invalid(error.to_string()))?;
    match parsed.scheme() {
        "http" | "https" => Ok(parsed),
        other => Err(invalid(format!("scheme {other} is not http or https"))),
    }
}

/// WEBHOOK_HEADERS: a JSON object whose values are strings.
pub(crate) fn parse_headers(json: &str) -> Result<HeaderMap, ReportError> {
    let invalid = |reason: String| ReportError::WebhookHeaders { reason };
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json).map_err(|error| invalid(error.to_string()))?;
    let mut headers = HeaderMap::new();
    for (name, value) in object {
        let serde_json::Value::String(value) = value else {
            return Err(invalid(format!("the value of {name} is not a string")));
        };
        let header_name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(format!("{name:?} is not a valid header name")))?;
        let header_value = HeaderValue::from_str(&value)
            .map_err(|_| invalid(format!("the value of {name} is not a valid header value")))?;
        headers.insert(header_name, header_value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_WEBHOOK_TEMPLATE;

    #[test]
    fn headers_must_be_an_object_of_strings() {
        let headers =
            parse_headers(r#"{"Content-type":"application/json","X-Team":"infra"}"#).unwrap();
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-team"], "infra");
        for bad in [
            "not json",
            "[1]",
            r#"{"X-Count": 3}"#,
            r#"{"bad header": "x"}"#,
        ] {
            assert!(
                matches!(parse_headers(bad), Err(ReportError::WebhookHeaders { .. })),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn settings_errors_name_the_setting() {
        let mut settings = WebhookSettings::new("ftp://hooks.example.com");
        assert!(matches!(
            Webhook::new(&settings),
            Err(ReportError::WebhookUrl { .. })
        ));
        settings.url = "http://hooks.example.com/x".into();
        settings.template = "{{ .EventID ".into();
        let error = Webhook::new(&settings).unwrap_err();
        assert!(error.to_string().contains("WEBHOOK_TEMPLATE"), "{error}");
        settings.template = DEFAULT_WEBHOOK_TEMPLATE.into();
        settings.template_file = Some("/nonexistent/template.json".into());
        let error = Webhook::new(&settings).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/template.json"),
            "{error}"
        );
    }
}
