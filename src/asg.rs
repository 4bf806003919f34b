//! What Spot Guard needs from an EC2 Auto Scaling group, as a small trait.
//!
//! [`crate::aws::AwsAutoScaling`] implements it with aws-sdk-autoscaling; the flow in
//! [`crate::spot_guard`] only sees this trait, so it can be driven by any implementation.

use std::future::Future;
use std::time::SystemTime;

/// An Auto Scaling group as read by `DescribeAutoScalingGroups`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsgState {
    pub name: String,
    pub min_size: i32,
    pub max_size: i32,
    pub desired_capacity: i32,
    pub instances: Vec<AsgInstance>,
    /// Capacity Rebalancing makes the ASG itself launch a replacement on a rebalance
    /// recommendation; together with Spot Guard every recommendation would buy two.
    pub capacity_rebalance: bool,
}

impl AsgState {
    /// Instances whose lifecycle state is `InService`.
    pub fn in_service(&self) -> i32 {
        let count = self
            .instances
            .iter()
            .filter(|instance| instance.lifecycle_state == "InService")
            .count();
        i32::try_from(count).unwrap_or(i32::MAX)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsgInstance {
    pub instance_id: String,
    /// AWS lifecycle state as a string: `Pending`, `InService`, `Terminating`, …
    pub lifecycle_state: String,
}

/// One entry of `DescribeScalingActivities`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalingActivity {
    pub activity_id: String,
    /// `Successful`, `Failed`, `Cancelled`, `InProgress`, `PreInService`, …
    pub status_code: String,
    pub status_message: Option<String>,
    pub description: Option<String>,
    pub start_time: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsgError {
    #[error("Auto Scaling group {asg} not found")]
    NotFound { asg: String },
    /// AWS answers a SetDesiredCapacity above MaxSize (and other bad requests) with a
    /// ValidationError; the message says which.
    #[error("{operation} on {asg} was refused: ValidationError: {message}")]
    Validation {
        operation: &'static str,
        asg: String,
        message: String,
    },
    /// Any other error AWS answered with (AccessDenied, Throttling after the SDK's
    /// retries, ServiceUnavailable, …).
    #[error("{operation} on {asg} failed: {code}: {message}")]
    Api {
        operation: &'static str,
        asg: String,
        code: String,
        message: String,
    },
    /// No answer from AWS at all (connection, timeout, credentials).
    #[error("{operation} on {asg} failed: {message}")]
    Transport {
        operation: &'static str,
        asg: String,
        message: String,
    },
}

impl AsgError {
    /// Whether the call may have taken effect although it failed: no answer came
    /// (timeout, connection lost) or AWS answered a server error after receiving it.
    /// A refusal (4xx: validation, access, throttling) never applied.
    pub fn may_have_applied(&self) -> bool {
        match self {
            AsgError::Transport { .. } => true,
            AsgError::Api { code, .. } => matches!(
                code.as_str(),
                "InternalFailure" | "InternalError" | "ServiceUnavailable" | "RequestTimeout"
            ),
            AsgError::NotFound { .. } | AsgError::Validation { .. } => false,
        }
    }

    /// AWS refuses a desired capacity above MaxSize with a ValidationError that
    /// says "above max value"; treat it as a capacity failure, like a full ASG.
    pub fn is_above_max_size(&self) -> bool {
        matches!(self, AsgError::Validation { message, .. } if message.to_ascii_lowercase().contains("above max"))
    }
}

/// The calls Spot Guard makes; each is one IAM permission.
pub trait AutoScaling: Send + Sync {
    /// `DescribeAutoScalingGroups` for one group; [`AsgError::NotFound`] if AWS lists none.
    fn describe(&self, asg: &str) -> impl Future<Output = Result<AsgState, AsgError>> + Send;

    /// `SetDesiredCapacity` with `HonorCooldown=false`: a replacement must not wait
    /// for a cooldown that another scaling action started.
    fn set_desired_capacity(
        &self,
        asg: &str,
        desired: i32,
    ) -> impl Future<Output = Result<(), AsgError>> + Send;

    /// `DescribeScalingActivities` for one group, newest first as AWS returns them.
    fn scaling_activities(
        &self,
        asg: &str,
    ) -> impl Future<Output = Result<Vec<ScalingActivity>, AsgError>> + Send;

    /// `TerminateInstanceInAutoScalingGroup` for this exact instance; with `decrement`
    /// the group shrinks instead of launching a replacement. Only called when
    /// SPOT_GUARD_TERMINATE_AFTER_DRAIN is on, and so its own IAM permission.
    fn terminate_instance(
        &self,
        instance_id: &str,
        decrement: bool,
    ) -> impl Future<Output = Result<(), AsgError>> + Send;
}
