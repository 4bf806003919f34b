//! The AWS Query protocol's XML answers, in the shape aws-sdk-autoscaling parses.

use std::fmt::Write as _;

use super::state::{Activity, Group, INSTANCE_TYPE, ZONE, group_arn, timestamp};

const NAMESPACE: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";

/// A successful answer; `result` is the inner XML of `<{action}Result>`, if the action has one.
pub(super) fn response(action: &str, result: Option<&str>, request_id: &str) -> String {
    let result = result
        .map(|inner| format!("<{action}Result>{inner}</{action}Result>"))
        .unwrap_or_default();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><{action}Response xmlns="{NAMESPACE}">{result}<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></{action}Response>"#
    )
}

pub(super) fn error(status: u16, code: &str, message: &str, request_id: &str) -> String {
    let kind = if status >= 500 { "Receiver" } else { "Sender" };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><ErrorResponse xmlns="{NAMESPACE}"><Error><Type>{kind}</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"#,
        escape(code),
        escape(message)
    )
}

pub(super) fn groups(groups: &[&Group]) -> String {
    let mut out = String::from("<AutoScalingGroups>");
    for group in groups {
        out.push_str("<member>");
        element(&mut out, "AutoScalingGroupName", &group.name);
        element(&mut out, "AutoScalingGroupARN", group_arn(&group.name));
        element(&mut out, "MinSize", group.min);
        element(&mut out, "MaxSize", group.max);
        element(&mut out, "DesiredCapacity", group.desired);
        element(&mut out, "DefaultCooldown", 300);
        out.push_str("<AvailabilityZones>");
        element(&mut out, "member", ZONE);
        out.push_str("</AvailabilityZones>");
        element(&mut out, "HealthCheckType", "EC2");
        element(&mut out, "HealthCheckGracePeriod", 300);
        out.push_str("<Instances>");
        for instance in &group.instances {
            out.push_str("<member>");
            element(&mut out, "InstanceId", &instance.id);
            element(&mut out, "InstanceType", INSTANCE_TYPE);
            element(&mut out, "AvailabilityZone", ZONE);
            element(&mut out, "LifecycleState", instance.state.as_str());
            element(&mut out, "HealthStatus", "Healthy");
            element(&mut out, "ProtectedFromScaleIn", false);
            out.push_str("</member>");
        }
        out.push_str("</Instances>");
        element(&mut out, "CreatedTime", timestamp(group.created));
        out.push_str("<TerminationPolicies>");
        element(&mut out, "member", "Default");
        out.push_str("</TerminationPolicies>");
        element(&mut out, "NewInstancesProtectedFromScaleIn", false);
        element(&mut out, "CapacityRebalance", group.capacity_rebalance);
        out.push_str("</member>");
    }
    out.push_str("</AutoScalingGroups>");
    out
}

pub(super) fn activities(group: &str, activities: &[&Activity]) -> String {
    let mut out = String::from("<Activities>");
    for item in activities {
        out.push_str("<member>");
        activity_fields(&mut out, group, item);
        out.push_str("</member>");
    }
    out.push_str("</Activities>");
    out
}

pub(super) fn activity(group: &str, item: &Activity) -> String {
    let mut out = String::from("<Activity>");
    activity_fields(&mut out, group, item);
    out.push_str("</Activity>");
    out
}

fn activity_fields(out: &mut String, group: &str, item: &Activity) {
    element(out, "ActivityId", &item.id);
    element(out, "AutoScalingGroupName", group);
    element(out, "AutoScalingGroupARN", group_arn(group));
    element(out, "Description", &item.description);
    element(out, "Cause", &item.cause);
    element(out, "StartTime", timestamp(item.start_time));
    if let Some(end) = item.end_time {
        element(out, "EndTime", timestamp(end));
    }
    element(out, "StatusCode", &item.status);
    if let Some(message) = &item.message {
        element(out, "StatusMessage", message);
    }
    element(out, "Progress", item.progress());
    element(
        out,
        "Details",
        format!(r#"{{"Availability Zone":"{ZONE}"}}"#),
    );
}

fn element(out: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = write!(out, "<{name}>{}</{name}>", escape(&value.to_string()));
}

pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_iso_8601_utc() {
        let time = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(timestamp(time), "2024-02-29T12:34:56.789Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert!(
            error(400, "ValidationError", "x < y", "r").contains("<Message>x &lt; y</Message>")
        );
    }
}
