//! What a report is about: the notice being handled (NTH's interruption event) and the
//! node and instance it concerns. Field names follow NTH's webhook template fields.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use crate::instance_metadata::InstanceMetadata;

/// NTH's event kinds (the `.Kind` template field).
pub mod kind {
    pub const REBALANCE_RECOMMENDATION: &str = "REBALANCE_RECOMMENDATION";
    pub const SPOT_ITN: &str = "SPOT_ITN";
    pub const SCHEDULED_EVENT: &str = "SCHEDULED_EVENT";
    pub const ASG_LIFECYCLE: &str = "ASG_LIFECYCLE";
}

/// NTH's monitor names (the `.Monitor` template field).
pub mod monitor_kind {
    pub const REBALANCE_RECOMMENDATION: &str = "REBALANCE_RECOMMENDATION_MONITOR";
    pub const SPOT_ITN: &str = "SPOT_ITN_MONITOR";
    pub const SCHEDULED_EVENT: &str = "SCHEDULED_EVENT_MONITOR";
    pub const ASG_LIFECYCLE: &str = "ASG_LIFECYCLE_MONITOR";
}

/// The node and instance this agent runs on; empty strings where unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMetadata {
    pub node_name: String,
    /// The Node's uid; when unknown, events use the node name, as the kubelet does, so that
    /// `kubectl describe node` still lists them.
    pub node_uid: Option<String>,
    /// Empty until IMDS answers.
    pub instance: InstanceMetadata,
}

impl NodeMetadata {
    pub fn new(node_name: impl Into<String>) -> Self {
        NodeMetadata {
            node_name: node_name.into(),
            ..NodeMetadata::default()
        }
    }

    /// This node on the instance IMDS described.
    pub fn with_instance(self, instance: &InstanceMetadata) -> Self {
        NodeMetadata {
            instance: instance.clone(),
            ..self
        }
    }

    /// The annotations NTH puts on every Kubernetes event in IMDS mode: all ten, empty
    /// where IMDS had nothing, as NTH writes them.
    pub fn event_annotations(&self) -> BTreeMap<String, String> {
        INSTANCE_FIELDS
            .iter()
            .map(|(_, annotation, value)| {
                ((*annotation).to_owned(), value(&self.instance).to_owned())
            })
            .collect()
    }
}

type ReadField = fn(&InstanceMetadata) -> &str;

/// The instance's fields under the two names NTH gives each: (webhook template field,
/// Kubernetes event annotation, value). One table, so templates and events cannot drift.
pub(super) const INSTANCE_FIELDS: [(&str, &str, ReadField); 10] = [
    ("AccountId", "account-id", |i| &i.account_id),
    ("InstanceID", "instance-id", |i| &i.instance_id),
    ("InstanceLifeCycle", "instance-life-cycle", |i| {
        &i.instance_life_cycle
    }),
    ("InstanceType", "instance-type", |i| &i.instance_type),
    ("PublicHostname", "public-hostname", |i| &i.public_hostname),
    ("PublicIP", "public-ipv4", |i| &i.public_ipv4),
    ("LocalHostname", "local-hostname", |i| &i.local_hostname),
    ("LocalIP", "local-ipv4", |i| &i.local_ipv4),
    ("AvailabilityZone", "availability-zone", |i| {
        &i.availability_zone
    }),
    ("Region", "region", |i| &i.region),
];

/// One notice being handled, as NTH describes it to templates and events.
///
/// Descriptions are NTH's words without the " \n" NTH ends them with: that newline, raw
/// inside the JSON string of NTH's default template, makes the body invalid JSON, which
/// strict receivers (Discord, NTH issue #970) refuse.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InterruptionEvent {
    pub event_id: String,
    /// One of [`kind`]; Spot Guard's webhook posts use their own kinds.
    pub kind: String,
    /// One of [`monitor_kind`].
    pub monitor: String,
    pub description: String,
    /// Scheduled events' state (`active`, `canceled`, `completed`); empty otherwise.
    pub state: String,
    pub auto_scaling_group_name: String,
    pub start_time: Option<Timestamp>,
    pub end_time: Option<Timestamp>,
    /// Names of the pods on the node when it was drained, if the caller knows them.
    pub pods: Vec<String>,
    pub node_labels: BTreeMap<String, String>,
}

impl InterruptionEvent {
    /// `notice_time` as IMDS gives it (RFC 3339); kept in the description even if unparsable.
    pub fn rebalance_recommendation(event_id: impl Into<String>, notice_time: &str) -> Self {
        InterruptionEvent {
            event_id: event_id.into(),
            kind: kind::REBALANCE_RECOMMENDATION.to_owned(),
            monitor: monitor_kind::REBALANCE_RECOMMENDATION.to_owned(),
            description: format!(
                "Rebalance recommendation received. Instance will be cordoned at {notice_time}"
            ),
            start_time: notice_time.parse().ok(),
            ..InterruptionEvent::default()
        }
    }

    /// NTH's description names no action: every spot interruption reads "interrupted".
    pub fn spot_interruption(event_id: impl Into<String>, time: &str) -> Self {
        InterruptionEvent {
            event_id: event_id.into(),
            kind: kind::SPOT_ITN.to_owned(),
            monitor: monitor_kind::SPOT_ITN.to_owned(),
            description: format!("Spot ITN received. Instance will be interrupted at {time}"),
            start_time: time.parse().ok(),
            ..InterruptionEvent::default()
        }
    }

    /// `not_before`/`not_after` as IMDS gives them (`21 Jan 2019 09:00:43 GMT`), which
    /// NTH's description quotes; `end_time` is `not_after` parsed. The start time is when
    /// the event was seen, as in NTH.
    pub fn scheduled_event(
        event_id: impl Into<String>,
        code: &str,
        state: &str,
        (not_before, not_after): (&str, &str),
        end_time: Option<Timestamp>,
        description: &str,
    ) -> Self {
        InterruptionEvent {
            event_id: event_id.into(),
            kind: kind::SCHEDULED_EVENT.to_owned(),
            monitor: monitor_kind::SCHEDULED_EVENT.to_owned(),
            description: format!(
                "{code} will occur between {not_before} and {not_after} because {description}"
            ),
            state: state.to_owned(),
            start_time: Some(Timestamp::now()),
            end_time,
            ..InterruptionEvent::default()
        }
    }

    pub fn asg_lifecycle(event_id: impl Into<String>, start_time: Option<Timestamp>) -> Self {
        InterruptionEvent {
            event_id: event_id.into(),
            kind: kind::ASG_LIFECYCLE.to_owned(),
            monitor: monitor_kind::ASG_LIFECYCLE.to_owned(),
            // NTH's words, its "AST" typo included, so filters on the message still match.
            description: "AST target lifecycle state received. Instance will be terminated"
                .to_owned(),
            start_time,
            ..InterruptionEvent::default()
        }
    }
}

/// A time as Go's `time.Time` prints in a template (`2006-01-02 15:04:05.999999999 -0700 MST`),
/// in UTC, so NTH templates render the same text; Go's zero time when absent.
pub(crate) fn go_time(time: Timestamp) -> String {
    let text = time.strftime("%Y-%m-%d %H:%M:%S%.f").to_string();
    format!("{text} +0000 UTC")
}

pub(crate) const GO_ZERO_TIME: &str = "0001-01-01 00:00:00 +0000 UTC";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_go_does() {
        let whole: Timestamp = "2020-10-27T08:22:00Z".parse().unwrap();
        assert_eq!(go_time(whole), "2020-10-27 08:22:00 +0000 UTC");
        let fraction: Timestamp = "2020-10-27T08:22:00.250Z".parse().unwrap();
        assert_eq!(go_time(fraction), "2020-10-27 08:22:00.25 +0000 UTC");
    }

    #[test]
    fn annotations_are_nth_s_ten_even_when_unknown() {
        let node = NodeMetadata::new("node-a").with_instance(&InstanceMetadata {
            instance_id: "i-0abc".into(),
            region: "eu-west-1".into(),
            ..InstanceMetadata::default()
        });
        let annotations = node.event_annotations();
        assert_eq!(annotations.len(), 10);
        assert_eq!(annotations["instance-id"], "i-0abc");
        assert_eq!(annotations["region"], "eu-west-1");
        assert_eq!(annotations["public-ipv4"], "");
    }
}
