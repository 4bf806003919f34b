//! When a replacement reads the ASG's scaling activities (DescribeScalingActivities): only
//! when the group's counts cannot answer "did a launch fail". DescribeAutoScalingGroups
//! gives the counts; an activity is only worth a call while a launch may be failing.

use tracing::warn;

use super::SpotGuard;
use super::decide::{self, Scaled};
use crate::asg::{AsgState, AutoScaling, ScalingActivity};

impl<A: AutoScaling> SpotGuard<A> {
    /// Before a scale-up: the activities already listed, whose failures belong to someone
    /// else. A settled group (as many live instances as desired) has no launch in flight,
    /// so there is nothing to read: a failure older than that was followed by a launch
    /// that worked. The price of skipping the read: a launch of someone else's that
    /// failed just before ours (within the 30 s the activities look back) and was then
    /// replaced is not known as theirs, and can read as our failure, sending us to
    /// on-demand one check early.
    pub(super) async fn activities_before(
        &self,
        name: &str,
        before: &AsgState,
    ) -> Vec<ScalingActivity> {
        if decide::is_settled(before) {
            return Vec::new();
        }
        self.asg.scaling_activities(name).await.unwrap_or_else(|error| {
            warn!("Reading scaling activities of ASG {name} failed; only activities started after the scale-up will count: {error}");
            Vec::new()
        })
    }

    /// During a wait: read only while the new instances have not appeared (a failed
    /// launch leaves none); a failed read counts as none, and the next check reads again.
    pub(super) async fn activities_while_waiting(
        &self,
        name: &str,
        scaled: &Scaled,
        state: &AsgState,
    ) -> Vec<ScalingActivity> {
        if decide::launches_started(scaled, state) {
            return Vec::new();
        }
        self.asg
            .scaling_activities(name)
            .await
            .unwrap_or_else(|error| {
                warn!("Reading scaling activities of ASG {name} failed, will check again: {error}");
                Vec::new()
            })
    }
}
