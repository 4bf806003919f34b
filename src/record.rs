//! What the agent writes on its own Node so that a restarted agent knows what was
//! already done: NTH's labels (kept for compatibility) and spot-guard's annotations.
//! Parsing is pure; [`crate::node::NodeClient`] writes them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;

use crate::names::{
    ACTION_LABEL, ACTION_TIME_LABEL, CORDONED_BY_ANNOTATION, EVENT_ID_LABEL,
    HANDLED_EVENTS_ANNOTATION, UNCORDON_AFTER_REBOOT,
};

/// Enough to cover every notice one instance can get; older ids cannot come back.
const REMEMBERED_EVENTS: usize = 10;

/// The agent's record, read from the Node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRecord {
    pub handled_events: Vec<String>,
    pub cordoned_by: Option<String>,
    /// Unix seconds at which the node was marked to be uncordoned after a reboot.
    pub uncordon_after_reboot_marked_at: Option<i64>,
    pub scheduled_event_id: Option<String>,
}

fn labels(node: &Node) -> Option<&BTreeMap<String, String>> {
    node.metadata.labels.as_ref()
}

pub fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

impl NodeRecord {
    pub fn from_node(node: &Node) -> Self {
        let label = |key: &str| labels(node).and_then(|l| l.get(key)).map(String::as_str);
        NodeRecord {
            handled_events: annotation(node, HANDLED_EVENTS_ANNOTATION)
                .map(|value| {
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|id| !id.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            cordoned_by: annotation(node, CORDONED_BY_ANNOTATION)
                .filter(|v| !v.is_empty())
                .map(str::to_string),
            uncordon_after_reboot_marked_at: (label(ACTION_LABEL) == Some(UNCORDON_AFTER_REBOOT))
                .then(|| label(ACTION_TIME_LABEL).and_then(|t| t.parse().ok()))
                .flatten(),
            scheduled_event_id: label(EVENT_ID_LABEL).map(str::to_string),
        }
    }

    pub fn handled(&self, event_id: &str) -> bool {
        self.handled_events.iter().any(|id| id == event_id)
    }

    /// The annotation value with `event_id` added, oldest dropped beyond the limit.
    pub fn handled_events_with(&self, event_id: &str) -> String {
        let mut ids: Vec<&str> = self
            .handled_events
            .iter()
            .map(String::as_str)
            .filter(|id| *id != event_id)
            .collect();
        ids.push(event_id);
        let skip = ids.len().saturating_sub(REMEMBERED_EVENTS);
        ids[skip..].join(",")
    }
}

/// Whether the node is cordoned, by anyone.
pub fn is_unschedulable(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// The value of one label.
pub fn label_value<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    labels(node).and_then(|l| l.get(key)).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Node {
        let map = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        Node {
            metadata: ObjectMeta {
                labels: map(labels),
                annotations: map(annotations),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }
    }

    #[test]
    fn reads_what_an_earlier_agent_wrote() {
        let record = NodeRecord::from_node(&node(
            &[
                (ACTION_LABEL, UNCORDON_AFTER_REBOOT),
                (ACTION_TIME_LABEL, "1700000000"),
                (EVENT_ID_LABEL, "instance-event-0abc"),
            ],
            &[
                (HANDLED_EVENTS_ANNOTATION, "a, b,,c"),
                (CORDONED_BY_ANNOTATION, "instance-event-0abc"),
            ],
        ));
        assert_eq!(record.handled_events, ["a", "b", "c"]);
        assert!(record.handled("b") && !record.handled("d"));
        assert_eq!(record.cordoned_by.as_deref(), Some("instance-event-0abc"));
        assert_eq!(record.uncordon_after_reboot_marked_at, Some(1_700_000_000));
        assert_eq!(
            record.scheduled_event_id.as_deref(),
            Some("instance-event-0abc")
        );
    }

    #[test]
    fn a_bare_node_has_an_empty_record() {
        assert_eq!(
            NodeRecord::from_node(&node(&[], &[])),
            NodeRecord::default()
        );
    }

    #[test]
    fn remembered_events_are_bounded_and_not_repeated() {
        let mut record = NodeRecord::default();
        for i in 0..15 {
            let value = record.handled_events_with(&format!("e{i}"));
            record.handled_events = value.split(',').map(str::to_string).collect();
        }
        assert_eq!(record.handled_events.len(), 10);
        assert_eq!(
            record.handled_events.first().map(String::as_str),
            Some("e5")
        );
        assert_eq!(record.handled_events_with("e14").matches("e14").count(), 1);
    }
}
