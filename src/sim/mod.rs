//! In-process simulators of the systems spot-guard talks to, over real HTTP on loopback,
//! and the [`harness`] that starts the agent against them through the same composition
//! point as production. Built only with the `sim` feature: `spot-guard-sim`, the tests
//! and the benchmarks use it; the shipped agent does not contain it.

pub mod asg;
pub mod fleet;
pub mod harness;
pub mod imds;
pub mod kube;
pub mod kubelet;
pub mod scenarios;
