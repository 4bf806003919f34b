//! spot-guard: a node-local agent for EC2 spot nodes of a Kubernetes cluster.
//!
//! The pipeline: IMDS notices ([`imds`], [`monitor`]) → decisions ([`flow`]) →
//! replacement capacity ([`spot_guard`] over [`asg`], implemented by [`aws`]) →
//! node actions ([`node`], [`drain`]), tied together by [`agent`].
//! [`sim`] holds the in-process simulators used by `spot-guard simulate` and the tests.

pub mod actions;
pub mod agent;
pub mod asg;
pub mod aws;
pub mod ca_protection;
pub mod config;
pub mod drain;
pub mod fleet_flow;
pub mod flow;
pub mod imds;
pub mod lease;
pub mod ledger;
pub mod logging;
pub mod monitor;
pub mod node;
pub mod record;
pub mod report;
pub mod run;
pub mod scale_back;
pub mod scale_back_flow;
pub mod sim;
pub mod spot_guard;
