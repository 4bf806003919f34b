//! spot-guard: a node-local agent for EC2 spot nodes of a Kubernetes cluster.
//!
//! The pipeline: IMDS notices ([`imds`], [`monitor`]) → NTH's node-action plans
//! ([`plan`]) → replacement capacity ([`spot_guard`] over [`asg`], implemented by
//! [`aws`]) → node actions ([`actions`], [`node`], [`drain`]), tied together by
//! [`agent`] and started in one place, [`run`]. Every name written into the cluster is
//! in [`names`]. The simulators (`sim`, feature `sim`) are not part of the shipped
//! agent.

pub mod actions;
pub mod agent;
pub mod asg;
pub mod aws;
pub mod config;
pub mod drain;
pub mod imds;
pub mod instance_metadata;
pub mod lease;
pub mod logging;
pub mod monitor;
pub mod names;
pub mod node;
pub mod paged_list;
pub mod plan;
pub mod record;
pub mod report;
pub mod run;
#[cfg(feature = "sim")]
pub mod sim;
pub mod spot_guard;
pub mod status;
pub mod tls;
