//! What the API server refuses in the objects the fake stores, with its messages:
//! `k8s.io/apimachinery/pkg/util/validation` (qualified names, label values, DNS
//! subdomains), `ValidateObjectMeta`'s labels and annotations, `validateNodeTaints`,
//! `ValidateLeaseSpec`, and the decoder's JSON type errors (Go's `encoding/json` wording).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Taint;
use serde_json::Value;

use super::status::{FieldError, quoted};

const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const SUBDOMAIN_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
/// `TotalAnnotationSizeLimitB`.
const ANNOTATIONS_LIMIT: usize = 256 * 1024;

pub(super) const TAINT_EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// `RegexError`: `msg (e.g. 'a',  or 'b', regex used for validation is 'fmt')`.
fn regex_error(message: &str, format: &str, examples: &[&str]) -> String {
    let examples: Vec<String> = examples.iter().map(|e| format!("'{e}', ")).collect();
    format!(
        "{message} (e.g. {}regex used for validation is '{format}')",
        examples.join(" or ")
    )
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, the qualified name part (non-empty).
fn is_name_part(value: &str) -> bool {
    let bytes = value.as_bytes();
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    match bytes {
        [] => false,
        [only] => alnum(only),
        [first, middle @ .., last] => {
            alnum(first)
                && alnum(last)
                && middle
                    .iter()
                    .all(|b| alnum(b) || matches!(b, b'-' | b'_' | b'.'))
        }
    }
}

fn is_dns_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    let ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match bytes {
        [] => false,
        [only] => ok(only),
        [first, middle @ .., last] => {
            ok(first) && ok(last) && middle.iter().all(|b| ok(b) || *b == b'-')
        }
    }
}

/// `IsDNS1123Subdomain`.
pub(super) fn subdomain_errors(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 253 {
        errors.push("must be no more than 253 characters".to_owned());
    }
    if !value.split('.').all(is_dns_label) {
        errors.push(regex_error(SUBDOMAIN_MSG, SUBDOMAIN_FMT, &["example.com"]));
    }
    errors
}

/// `IsQualifiedName`: label keys, annotation keys, taint keys.
pub(super) fn qualified_name_errors(value: &str) -> Vec<String> {
    let examples = ["MyName", "my.name", "123-abc"];
    let mut errors = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errors.push("prefix part must be non-empty".to_owned());
            } else {
                errors.extend(
                    subdomain_errors(prefix)
                        .into_iter()
                        .map(|error| format!("prefix part {error}")),
                );
            }
            *name
        }
        _ => {
            return vec![format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_MSG, QUALIFIED_NAME_FMT, &examples)
            )];
        }
    };
    if name.is_empty() {
        errors.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errors.push("name part must be no more than 63 characters".to_owned());
    }
    if !is_name_part(name) {
        errors.push(format!(
            "name part {}",
            regex_error(QUALIFIED_NAME_MSG, QUALIFIED_NAME_FMT, &examples)
        ));
    }
    errors
}

/// `IsValidLabelValue`: label values, taint values.
pub(super) fn label_value_errors(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 63 {
        errors.push("must be no more than 63 characters".to_owned());
    }
    if !value.is_empty() && !is_name_part(value) {
        errors.push(regex_error(
            LABEL_VALUE_MSG,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errors
}

/// `ValidateLabels` and `ValidateAnnotations` on `metadata`.
pub(super) fn metadata_errors(metadata: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let strings = |key: &str| -> BTreeMap<String, String> {
        metadata
            .get(key)
            .and_then(Value::as_object)
            .map(|map| {
                map.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    };
    for (key, value) in strings("labels") {
        for message in qualified_name_errors(&key) {
            errors.push(FieldError::invalid("metadata.labels", &key, &message));
        }
        for message in label_value_errors(&value) {
            errors.push(FieldError::invalid("metadata.labels", &value, &message));
        }
    }
    let annotations = strings("annotations");
    let mut size = 0;
    for (key, value) in &annotations {
        for message in qualified_name_errors(&key.to_lowercase()) {
            errors.push(FieldError::invalid("metadata.annotations", key, &message));
        }
        size += key.len() + value.len();
    }
    if size > ANNOTATIONS_LIMIT {
        errors.push(FieldError::too_long(
            "metadata.annotations",
            ANNOTATIONS_LIMIT,
        ));
    }
    errors
}

/// `validateNodeTaints`: key, value and effect of each taint, and no two with one key and
/// effect.
pub(super) fn taint_errors(taints: &[Taint]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
    for (index, taint) in taints.iter().enumerate() {
        let path = format!("spec.taints[{index}]");
        for message in qualified_name_errors(&taint.key) {
            errors.push(FieldError::invalid(
                &format!("{path}.key"),
                &taint.key,
                &message,
            ));
        }
        let value = taint.value.as_deref().unwrap_or_default();
        let value_errors = label_value_errors(value);
        if !value_errors.is_empty() {
            errors.push(FieldError::invalid(
                &format!("{path}.value"),
                value,
                &value_errors.join(";"),
            ));
        }
        if taint.effect.is_empty() {
            errors.push(FieldError::required(&format!("{path}.effect")));
        } else if !TAINT_EFFECTS.contains(&taint.effect.as_str()) {
            errors.push(FieldError::not_supported(
                &format!("{path}.effect"),
                &taint.effect,
                &TAINT_EFFECTS,
            ));
        }
        if !seen.insert((taint.key.as_str(), taint.effect.as_str())) {
            let time_added = if taint.time_added.is_some() {
                "(*v1.Time)(0xc000000000)"
            } else {
                "(*v1.Time)(nil)"
            };
            let printed = format!(
                "core.Taint{{Key:{}, Value:{}, Effect:{}, TimeAdded:{time_added}}}",
                quoted(&taint.key),
                quoted(value),
                quoted(&taint.effect)
            );
            errors.push(FieldError::duplicate(
                &path,
                printed,
                "taints must be unique by key and effect pair",
            ));
        }
    }
    errors
}

/// `ValidateLeaseSpec`.
pub(super) fn lease_spec_errors(spec: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(duration) = spec.get("leaseDurationSeconds").and_then(Value::as_i64)
        && duration <= 0
    {
        errors.push(FieldError::invalid_printed(
            "spec.leaseDurationSeconds",
            duration.to_string(),
            "must be greater than 0",
        ));
    }
    if let Some(transitions) = spec.get("leaseTransitions").and_then(Value::as_i64)
        && transitions < 0
    {
        errors.push(FieldError::invalid_printed(
            "spec.leaseTransitions",
            transitions.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    errors
}

/// The Go type of a field, for the decoder's type errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GoType {
    String,
    Int32,
    Bool,
    /// `metav1.MicroTime`: a string in RFC 3339 with exactly six fractional digits.
    MicroTime,
}

const RFC3339_MICRO: &str = "2006-01-02T15:04:05.000000Z07:00";

/// `time.Parse(RFC3339Micro, value)`'s complaint, or `None` if it parses.
fn micro_time_error(value: &str) -> Option<String> {
    let complaint = |rest: &str, layout: &str| {
        Some(format!(
            "parsing time {} as {}: cannot parse {} as {}",
            quoted(value),
            quoted(RFC3339_MICRO),
            quoted(rest),
            quoted(layout)
        ))
    };
    let bytes = value.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd";
    let date_fits = bytes.len() >= shape.len()
        && shape.iter().zip(bytes).all(|(want, got)| match want {
            b'd' => got.is_ascii_digit(),
            other => other == got,
        });
    if !date_fits {
        return complaint(value, "2006");
    }
    let rest = &value[shape.len()..];
    let digits = rest
        .strip_prefix('.')
        .map_or(0, |f| f.bytes().take_while(u8::is_ascii_digit).count());
    if rest.len() < 7 || !rest.starts_with('.') || digits < 6 {
        return complaint(rest, ".000000");
    }
    let zone = &rest[7..];
    let zone_fits = zone == "Z"
        || (zone.len() == 6
            && matches!(zone.as_bytes()[0], b'+' | b'-')
            && zone.as_bytes()[3] == b':');
    if !zone_fits {
        return complaint(zone, "Z07:00");
    }
    None
}

impl GoType {
    fn name(self) -> &'static str {
        match self {
            GoType::String | GoType::MicroTime => "string",
            GoType::Int32 => "int32",
            GoType::Bool => "bool",
        }
    }

    /// What `encoding/json` calls a value it cannot store here, or `None` if it fits.
    fn mismatch(self, value: &Value) -> Option<String> {
        match (self, value) {
            (_, Value::Null) => None,
            (GoType::MicroTime, Value::String(_)) => None,
            (GoType::String, Value::String(_)) | (GoType::Bool, Value::Bool(_)) => None,
            (GoType::Int32, Value::Number(number)) => {
                let fits = number.as_i64().is_some_and(|n| i32::try_from(n).is_ok());
                (!fits).then(|| format!("number {number}"))
            }
            (_, Value::Number(_)) => Some("number".to_owned()),
            (_, Value::String(_)) => Some("string".to_owned()),
            (_, Value::Bool(_)) => Some("bool".to_owned()),
            (_, Value::Array(_)) => Some("array".to_owned()),
            (_, Value::Object(_)) => Some("object".to_owned()),
        }
    }
}

/// The first value in `object[field]` whose JSON type does not fit its Go field, as the
/// decoder reports it: `json: cannot unmarshal number into Go struct field
/// LeaseSpec.spec.holderIdentity of type string`.
pub(super) fn type_error(
    object: &Value,
    field: &str,
    go_struct: &str,
    fields: &[(&str, GoType)],
) -> Option<String> {
    let section = object.get(field)?;
    if !section.is_object() && !section.is_null() {
        let kind = GoType::String.mismatch(section).unwrap_or_default();
        return Some(format!(
            "json: cannot unmarshal {kind} into Go struct field {}.{field} of type v1.{go_struct}",
            go_struct.trim_end_matches("Spec"),
        ));
    }
    fields.iter().find_map(|(name, go_type)| {
        let value = section.get(*name)?;
        if *go_type == GoType::MicroTime {
            // Its own UnmarshalJSON: into a string, then `time.Parse`.
            return match value.as_str() {
                Some(text) => micro_time_error(text),
                None => go_type.mismatch(value).map(|found| {
                    format!("json: cannot unmarshal {found} into Go value of type string")
                }),
            };
        }
        let found = go_type.mismatch(value)?;
        Some(format!(
            "json: cannot unmarshal {found} into Go struct field {go_struct}.{field}.{name} of type {}",
            go_type.name()
        ))
    })
}

/// The `LeaseSpec` fields a client writes, with their Go types.
pub(super) const LEASE_SPEC_FIELDS: [(&str, GoType); 7] = [
    ("holderIdentity", GoType::String),
    ("leaseDurationSeconds", GoType::Int32),
    ("acquireTime", GoType::MicroTime),
    ("renewTime", GoType::MicroTime),
    ("leaseTransitions", GoType::Int32),
    ("strategy", GoType::String),
    ("preferredHolder", GoType::String),
];

/// The `NodeSpec` fields a client patches, with their Go types.
pub(super) const NODE_SPEC_FIELDS: [(&str, GoType); 4] = [
    ("unschedulable", GoType::Bool),
    ("providerID", GoType::String),
    ("podCIDR", GoType::String),
    ("externalID", GoType::String),
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn qualified_names_follow_apimachinery() {
        assert!(qualified_name_errors("aws-node-termination-handler/spot-itn").is_empty());
        assert!(qualified_name_errors("example.com/My_Name.1").is_empty());
        assert_eq!(
            qualified_name_errors("bad key"),
            [
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must \
              start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or \
              '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
            ]
        );
        assert_eq!(
            qualified_name_errors("Example.com/x")[0],
            "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
             characters, '-' or '.', and must start and end with an alphanumeric character (e.g. \
             'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        );
        assert_eq!(qualified_name_errors("a/b/c").len(), 1);
    }

    #[test]
    fn label_values_are_at_most_63_characters() {
        assert!(label_value_errors("").is_empty());
        assert!(label_value_errors(&"a".repeat(63)).is_empty());
        assert_eq!(
            label_value_errors(&"a".repeat(64)),
            ["must be no more than 63 characters"]
        );
    }

    #[test]
    fn type_errors_read_as_the_go_decoder_writes_them() {
        let lease = json!({"spec": {"holderIdentity": 5, "leaseDurationSeconds": 1.5}});
        assert_eq!(
            type_error(&lease, "spec", "LeaseSpec", &LEASE_SPEC_FIELDS).as_deref(),
            Some(
                "json: cannot unmarshal number into Go struct field LeaseSpec.spec.holderIdentity of type string"
            )
        );
        let lease = json!({"spec": {"leaseDurationSeconds": 1.5}});
        assert_eq!(
            type_error(&lease, "spec", "LeaseSpec", &LEASE_SPEC_FIELDS).as_deref(),
            Some(
                "json: cannot unmarshal number 1.5 into Go struct field LeaseSpec.spec.leaseDurationSeconds of type int32"
            )
        );
        let lease = json!({"spec": {"renewTime": "2026-01-01T00:00:00Z"}});
        assert_eq!(
            type_error(&lease, "spec", "LeaseSpec", &LEASE_SPEC_FIELDS).as_deref(),
            Some(
                "parsing time \"2026-01-01T00:00:00Z\" as \"2006-01-02T15:04:05.000000Z07:00\": \
                 cannot parse \"Z\" as \".000000\""
            )
        );
        let lease = json!({"spec": {"renewTime": "2026-01-01T00:00:00.123456Z"}});
        assert_eq!(
            type_error(&lease, "spec", "LeaseSpec", &LEASE_SPEC_FIELDS),
            None
        );
        let lease = json!({"spec": {"leaseDurationSeconds": "15"}});
        assert!(
            type_error(&lease, "spec", "LeaseSpec", &LEASE_SPEC_FIELDS)
                .is_some_and(|e| e.contains("cannot unmarshal string"))
        );
    }
}
