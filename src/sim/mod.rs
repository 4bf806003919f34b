//! In-process simulators of the systems spot-guard talks to, over real HTTP on loopback.
//! `spot-guard simulate` and the integration tests both use them.

pub mod asg;
pub mod fleet;
pub mod imds;
pub mod kube;
pub mod scenarios;
