//! Webhook templates in Go's text/template language (NTH's WEBHOOK_TEMPLATE), rendered by
//! `gtmpl` with the fields NTH offers and a few of the sprig functions NTH templates use.
//!
//! Limits against Go: only the sprig functions below exist (`lower`, `upper`, `trim`,
//! `trimPrefix`, `trimSuffix`, `replace`, `quote`, `join`, `default`). A list or map printed
//! whole by a plain reference (`{{ .Pods }}`, `{{ $labels }}`) prints as Go's `%v` does
//! (`[a b]`, `map[k:v]`); one printed at the end of a longer pipeline does not. `range` over
//! a map (`.NodeLabels`) visits keys in no set order (Go: sorted), and `index` of a missing
//! key prints `<no value>` (Go: an empty string).

use std::collections::HashMap;

use gtmpl::{Context, Func, FuncError, Template, Value};

use super::interruption::{
    GO_ZERO_TIME, INSTANCE_FIELDS, InterruptionEvent, NodeMetadata, go_time,
};

/// A parsed webhook template; parsed once at start-up, rendered for every post.
pub struct WebhookTemplate {
    template: Template,
}

impl std::fmt::Debug for WebhookTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTemplate")
            .field("text", &self.template.text)
            .finish()
    }
}

impl WebhookTemplate {
    /// Parses `text`, then renders it once for an empty event, as NTH validates at start-up,
    /// so that a template naming a field that does not exist is refused before any notice.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut template = Template::default();
        template.add_funcs(SPRIG_SUBSET);
        let spans = action_spans(text).map_err(TemplateError::Parse)?;
        template
            .parse(print_references_as_go(text, &spans))
            .map_err(|error| TemplateError::Parse(error.to_string()))?;
        let parsed = WebhookTemplate { template };
        parsed.render(&NodeMetadata::default(), &InterruptionEvent::default(), "")?;
        Ok(parsed)
    }

    /// The body for one post; `reason` fills the `.Reason` field (Spot Guard's fallback reason).
    pub fn render(
        &self,
        node: &NodeMetadata,
        event: &InterruptionEvent,
        reason: &str,
    ) -> Result<String, TemplateError> {
        self.template
            .render(&Context::from(template_data(node, event, reason)))
            .map_err(|error| TemplateError::Render(error.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{0}")]
    Parse(String),
    #[error("{0}")]
    Render(String),
}

/// The byte spans of the actions (`{{` … `}}`) of `text`, quotes respected. Also guards
/// gtmpl 0.7, whose lexer never returns on an action left open at the end of the text after
/// whitespace (`{{ .EventID `): such templates are refused before it sees them.
fn action_spans(text: &str) -> Result<Vec<(usize, usize)>, String> {
    let mut spans = Vec::new();
    let mut offset = 0;
    while let Some(found) = text[offset..].find("{{") {
        let open = offset + found;
        let mut chars = text[open + 2..].char_indices().peekable();
        let mut closed_at = None;
        while let Some((index, c)) = chars.next() {
            match c {
                '"' | '\'' | '`' => {
                    let mut escaped = false;
                    let terminated = chars.by_ref().any(|(_, inner)| {
                        let done = inner == c && !escaped;
                        escaped = c != '`' && inner == '\\' && !escaped;
                        done
                    });
                    if !terminated {
                        return Err(format!(
                            "unterminated quote in the action at {:?}",
                            excerpt(text, open)
                        ));
                    }
                }
                '}' if chars.peek().is_some_and(|&(_, next)| next == '}') => {
                    closed_at = Some(open + 2 + index + 2);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = closed_at else {
            return Err(format!(
                "unclosed action {:?}: no matching }}}}",
                excerpt(text, open)
            ));
        };
        spans.push((open, end));
        offset = end;
    }
    Ok(spans)
}

/// gtmpl prints a list or map in Rust's debug form; an action that only references a
/// value (`{{ .Pods }}`, `{{- $x -}}`) is rewritten to print it through [`GO_PRINT`]
/// instead, as Go's text/template would.
fn print_references_as_go(text: &str, spans: &[(usize, usize)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for &(open, end) in spans {
        let inner = &text[open + 2..end - 2];
        let lead = if inner.starts_with("- ") { "- " } else { "" };
        let trail = if inner.ends_with(" -") { " -" } else { "" };
        let core = inner[lead.len()..inner.len() - trail.len()].trim();
        if is_reference(core) {
            out.push_str(&text[copied..open]);
            // Single spaces around the trim markers: gtmpl reads `{{-  x  -}}` as an
            // extra argument `-`.
            out.push_str(&format!("{{{{{lead}{GO_PRINT} {core}{trail}}}}}"));
            copied = end;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// `.Field.Sub`, `$`, `$var.Field` or `.`: nothing else (no quotes, so no `}}` inside).
fn is_reference(core: &str) -> bool {
    let fields = core.strip_prefix('$').map_or(core, |after| {
        after.trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_')
    });
    !core.is_empty()
        && (fields.is_empty()
            || fields == "."
            || fields.split('.').skip(1).all(|name| {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            }) && fields.starts_with('.'))
}

/// The function the rewritten actions print through.
const GO_PRINT: &str = "_go_print";

fn go_print(args: &[Value]) -> Result<Value, FuncError> {
    let [value] = args else {
        return Err(FuncError::ExactlyXArgs(GO_PRINT.to_owned(), 1));
    };
    Ok(Value::String(go_format(value)))
}

/// Go's `%v`: `[a b]` for a slice, `map[k1:v1 k2:v2]` (keys sorted) for a map.
fn go_format(value: &Value) -> String {
    match value {
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(go_format).collect();
            format!("[{}]", items.join(" "))
        }
        Value::Map(map) | Value::Object(map) => {
            let mut pairs: Vec<(&String, &Value)> = map.iter().collect();
            pairs.sort_by(|a, b| a.0.cmp(b.0));
            let pairs: Vec<String> = pairs
                .into_iter()
                .map(|(key, value)| format!("{key}:{}", go_format(value)))
                .collect();
            format!("map[{}]", pairs.join(" "))
        }
        other => other.to_string(),
    }
}

fn excerpt(text: &str, from: usize) -> String {
    text[from..].chars().take(30).collect()
}

/// NTH's template data: its node metadata and interruption event fields side by side, with
/// the event's instance id preferred, plus Spot Guard's `.Reason`.
fn template_data(node: &NodeMetadata, event: &InterruptionEvent, reason: &str) -> Value {
    let text = |value: &str| Value::String(value.to_owned());
    let time =
        |value: Option<_>| Value::String(value.map_or_else(|| GO_ZERO_TIME.to_owned(), go_time));
    let instance = INSTANCE_FIELDS
        .iter()
        .map(|(name, _, value)| (*name, text(value(&node.instance))));
    let fields = [
        ("EventID", text(&event.event_id)),
        ("Kind", text(&event.kind)),
        ("Monitor", text(&event.monitor)),
        ("Description", text(&event.description)),
        ("State", text(&event.state)),
        ("AutoScalingGroupName", text(&event.auto_scaling_group_name)),
        ("NodeName", text(&node.node_name)),
        (
            "NodeLabels",
            Value::Map(
                event
                    .node_labels
                    .iter()
                    .map(|(key, value)| (key.clone(), text(value)))
                    .collect(),
            ),
        ),
        (
            "Pods",
            Value::Array(event.pods.iter().map(|pod| text(pod)).collect()),
        ),
        ("ProviderID", text(&provider_id(node))),
        ("IsManaged", Value::Bool(true)),
        ("StartTime", time(event.start_time)),
        ("EndTime", time(event.end_time)),
        ("NodeProcessed", Value::Bool(false)),
        ("InProgress", Value::Bool(true)),
        ("Reason", text(reason)),
    ];
    Value::Object(
        fields
            .into_iter()
            .chain(instance)
            .map(|(key, value)| (key.to_owned(), value))
            .collect::<HashMap<_, _>>(),
    )
}

fn provider_id(node: &NodeMetadata) -> String {
    let instance = &node.instance;
    if instance.instance_id.is_empty() {
        return String::new();
    }
    format!(
        "aws:///{}/{}",
        instance.availability_zone, instance.instance_id
    )
}

static SPRIG_SUBSET: &[(&str, Func)] = &[
    ("lower", lower as Func),
    ("upper", upper as Func),
    ("trim", trim as Func),
    ("trimPrefix", trim_prefix as Func),
    ("trimSuffix", trim_suffix as Func),
    ("replace", replace as Func),
    ("quote", quote as Func),
    ("join", join as Func),
    ("default", default as Func),
    (GO_PRINT, go_print as Func),
];

/// Sprig's functions take the piped value last, e.g. `{{ .EventID | trimPrefix "spot-" }}`.
fn strings<const N: usize>(name: &str, args: &[Value]) -> Result<[String; N], FuncError> {
    let values: Vec<String> = args.iter().map(ToString::to_string).collect();
    values
        .try_into()
        .map_err(|_| FuncError::ExactlyXArgs(name.to_owned(), N))
}

fn lower(args: &[Value]) -> Result<Value, FuncError> {
    let [text] = strings("lower", args)?;
    Ok(Value::String(text.to_lowercase()))
}

fn upper(args: &[Value]) -> Result<Value, FuncError> {
    let [text] = strings("upper", args)?;
    Ok(Value::String(text.to_uppercase()))
}

fn trim(args: &[Value]) -> Result<Value, FuncError> {
    let [text] = strings("trim", args)?;
    Ok(Value::String(text.trim().to_owned()))
}

fn trim_prefix(args: &[Value]) -> Result<Value, FuncError> {
    let [prefix, text] = strings("trimPrefix", args)?;
    Ok(Value::String(
        text.strip_prefix(prefix.as_str())
            .unwrap_or(&text)
            .to_owned(),
    ))
}

fn trim_suffix(args: &[Value]) -> Result<Value, FuncError> {
    let [suffix, text] = strings("trimSuffix", args)?;
    Ok(Value::String(
        text.strip_suffix(suffix.as_str())
            .unwrap_or(&text)
            .to_owned(),
    ))
}

fn replace(args: &[Value]) -> Result<Value, FuncError> {
    let [old, new, text] = strings("replace", args)?;
    Ok(Value::String(text.replace(&old, &new)))
}

/// Go's `%q`: a double-quoted string with JSON-compatible escapes for the common cases.
fn quote(args: &[Value]) -> Result<Value, FuncError> {
    let quoted: Vec<String> = args
        .iter()
        .map(|arg| serde_json::Value::String(arg.to_string()).to_string())
        .collect();
    Ok(Value::String(quoted.join(" ")))
}

fn join(args: &[Value]) -> Result<Value, FuncError> {
    let [separator, list] = args else {
        return Err(FuncError::ExactlyXArgs("join".to_owned(), 2));
    };
    let joined = match list {
        Value::Array(items) => items
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(&separator.to_string()),
        other => other.to_string(),
    };
    Ok(Value::String(joined))
}

fn default(args: &[Value]) -> Result<Value, FuncError> {
    let [fallback, value] = args else {
        return Err(FuncError::ExactlyXArgs("default".to_owned(), 2));
    };
    let empty = match value {
        Value::NoValue | Value::Nil => true,
        Value::Bool(flag) => !flag,
        Value::String(text) => text.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(map) | Value::Map(map) => map.is_empty(),
        Value::Number(_) | Value::Function(_) => false,
    };
    Ok(if empty {
        fallback.clone()
    } else {
        value.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance_metadata::InstanceMetadata;

    fn render(text: &str) -> Result<String, TemplateError> {
        let node = NodeMetadata::new("node-a").with_instance(&InstanceMetadata {
            instance_id: "i-0abc".into(),
            ..InstanceMetadata::default()
        });
        let mut event =
            InterruptionEvent::spot_interruption("spot-itn-1234", "2020-10-27T08:22:00Z");
        event.pods = vec!["default/web-1".into(), "default/web-2".into()];
        WebhookTemplate::parse(text)?.render(&node, &event, "capacity")
    }

    #[test]
    fn renders_nth_fields_and_sprig_functions() {
        assert_eq!(
            render(r#"{{ .Kind | lower }} {{ .EventID | trimPrefix "spot-itn-" }} {{ .NodeName }} {{ .InstanceID }}"#).unwrap(),
            "spot_itn 1234 node-a i-0abc"
        );
        assert_eq!(
            render(r#"{{ join ", " .Pods }}"#).unwrap(),
            "default/web-1, default/web-2"
        );
        assert_eq!(render(r#"{{ .State | default "none" }}"#).unwrap(), "none");
        assert_eq!(render(r#"{{ .Reason | quote }}"#).unwrap(), r#""capacity""#);
        assert_eq!(
            render("{{ .StartTime }}").unwrap(),
            "2020-10-27 08:22:00 +0000 UTC"
        );
        assert_eq!(
            render(r#"{{ replace "-" "_" .EventID | upper }}"#).unwrap(),
            "SPOT_ITN_1234"
        );
    }

    #[test]
    fn whole_lists_and_maps_print_as_go_does() {
        assert_eq!(
            render("{{ .Pods }}|{{- .Pods -}}|{{ .NodeLabels }}").unwrap(),
            "[default/web-1 default/web-2]|[default/web-1 default/web-2]|map[]"
        );
        assert_eq!(
            render("{{ range $i, $p := .Pods }}{{ $i }}={{ $p }} {{ end }}{{/* .Pods */}}")
                .unwrap(),
            "0=default/web-1 1=default/web-2 "
        );
        assert_eq!(
            render(r#"{{ printf "}}{{ .Pods }}" }}"#).unwrap(),
            "}}{{ .Pods }}"
        );
    }

    #[test]
    fn refuses_unknown_fields_and_bad_syntax() {
        assert!(matches!(
            WebhookTemplate::parse("{{ .Nope }}"),
            Err(TemplateError::Render(_))
        ));
        assert!(matches!(
            WebhookTemplate::parse("{{ .EventID "),
            Err(TemplateError::Parse(_))
        ));
        assert!(matches!(
            WebhookTemplate::parse("{{ nosuchfunc .EventID }}"),
            Err(TemplateError::Parse(_))
        ));
    }
}
