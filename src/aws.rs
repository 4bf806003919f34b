//! [`AutoScaling`] on aws-sdk-autoscaling: the only module that knows the SDK.
//!
//! Retries are the SDK's standard mode (exponential back-off with jitter, throttling
//! and transient errors only); every call has an attempt and an overall timeout so a
//! silent network cannot stall the flow past a spot interruption.

use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_sdk_autoscaling::Client;
use aws_sdk_autoscaling::config::retry::RetryConfig;
use aws_sdk_autoscaling::config::timeout::TimeoutConfig;
use aws_sdk_autoscaling::config::{Credentials, Region};
use aws_sdk_autoscaling::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_autoscaling::types::{Activity, AutoScalingGroup};

use crate::asg::{AsgError, AsgInstance, AsgState, AutoScaling, ScalingActivity};

mod http_client;
use http_client::https_client;

const LOCAL_BACKOFF: Duration = Duration::from_millis(50);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// The first page is enough: the flow only looks at activities newer than its request.
const ACTIVITY_PAGE: i32 = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    /// Overrides the endpoint (a simulator, a VPC endpoint); `AWS_ENDPOINT_URL` also works.
    pub endpoint_url: Option<String>,
    /// Attempts per call in the SDK's standard retry mode, the first included.
    pub max_attempts: u32,
}

impl Default for AwsSettings {
    fn default() -> Self {
        AwsSettings {
            endpoint_url: None,
            max_attempts: 3,
        }
    }
}

impl AwsSettings {
    fn retry(&self) -> RetryConfig {
        RetryConfig::standard().with_max_attempts(self.max_attempts.max(1))
    }
}

#[derive(Debug, Clone)]
pub struct AwsAutoScaling {
    client: Client,
}

impl AwsAutoScaling {
    /// Credentials and region from the default chain (environment, profile, IRSA web
    /// identity, EKS Pod Identity, IMDS), the way every AWS tool finds them.
    pub async fn from_environment(settings: &AwsSettings) -> AwsAutoScaling {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(https_client())
            .retry_config(settings.retry())
            .timeout_config(timeouts());
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let shared = loader.load().await;
        tracing::debug!(region = ?shared.region(), "AWS configuration loaded");
        AwsAutoScaling {
            client: Client::new(&shared),
        }
    }

    /// A client for a simulator or moto: fixed region, static test credentials, and a
    /// short first back-off, since a local server needs no time to recover.
    pub fn for_endpoint(url: &str, region: &str, settings: &AwsSettings) -> AwsAutoScaling {
        let config = aws_sdk_autoscaling::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(https_client())
            .endpoint_url(url)
            .region(Region::new(region.to_string()))
            .credentials_provider(Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "spot-guard-test",
            ))
            .retry_config(settings.retry().with_initial_backoff(LOCAL_BACKOFF))
            .timeout_config(timeouts());
        AwsAutoScaling {
            client: Client::from_conf(config.build()),
        }
    }

    /// The SDK client, for calls outside the [`AutoScaling`] trait (e.g. test setup).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `TerminateInstanceInAutoScalingGroup`; with `decrement` the group does not
    /// launch a replacement. Needs `autoscaling:TerminateInstanceInAutoScalingGroup`.
    pub async fn terminate_instance(
        &self,
        instance_id: &str,
        decrement: bool,
    ) -> Result<(), AsgError> {
        const OPERATION: &str = "TerminateInstanceInAutoScalingGroup";
        tracing::debug!(instance_id, decrement, "calling {OPERATION}");
        self.client
            .terminate_instance_in_auto_scaling_group()
            .instance_id(instance_id)
            .should_decrement_desired_capacity(decrement)
            .send()
            .await
            .map_err(|error| to_asg_error(OPERATION, instance_id, error))?;
        Ok(())
    }
}

fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

impl AutoScaling for AwsAutoScaling {
    async fn describe(&self, asg: &str) -> Result<AsgState, AsgError> {
        const OPERATION: &str = "DescribeAutoScalingGroups";
        tracing::debug!(asg, "calling {OPERATION}");
        let output = self
            .client
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(asg)
            .send()
            .await
            .map_err(|error| to_asg_error(OPERATION, asg, error))?;
        output
            .auto_scaling_groups()
            .iter()
            .find(|group| group.auto_scaling_group_name() == Some(asg))
            .map(to_asg_state)
            .ok_or_else(|| AsgError::NotFound {
                asg: asg.to_string(),
            })
    }

    async fn set_desired_capacity(&self, asg: &str, desired: i32) -> Result<(), AsgError> {
        const OPERATION: &str = "SetDesiredCapacity";
        tracing::debug!(asg, desired, "calling {OPERATION}");
        self.client
            .set_desired_capacity()
            .auto_scaling_group_name(asg)
            .desired_capacity(desired)
            .honor_cooldown(false)
            .send()
            .await
            .map_err(|error| to_asg_error(OPERATION, asg, error))?;
        Ok(())
    }

    async fn scaling_activities(&self, asg: &str) -> Result<Vec<ScalingActivity>, AsgError> {
        const OPERATION: &str = "DescribeScalingActivities";
        tracing::debug!(asg, "calling {OPERATION}");
        let output = self
            .client
            .describe_scaling_activities()
            .auto_scaling_group_name(asg)
            .max_records(ACTIVITY_PAGE)
            .send()
            .await
            .map_err(|error| to_asg_error(OPERATION, asg, error))?;
        Ok(output
            .activities()
            .iter()
            .map(to_scaling_activity)
            .collect())
    }

    async fn terminate_instance(&self, instance_id: &str, decrement: bool) -> Result<(), AsgError> {
        AwsAutoScaling::terminate_instance(self, instance_id, decrement).await
    }
}

fn to_asg_state(group: &AutoScalingGroup) -> AsgState {
    AsgState {
        name: group
            .auto_scaling_group_name()
            .unwrap_or_default()
            .to_string(),
        min_size: group.min_size().unwrap_or_default(),
        max_size: group.max_size().unwrap_or_default(),
        desired_capacity: group.desired_capacity().unwrap_or_default(),
        instances: group
            .instances()
            .iter()
            .map(|instance| AsgInstance {
                instance_id: instance.instance_id().unwrap_or_default().to_string(),
                lifecycle_state: instance
                    .lifecycle_state()
                    .map(|state| state.as_str().to_string())
                    .unwrap_or_default(),
            })
            .collect(),
        capacity_rebalance: group.capacity_rebalance().unwrap_or(false),
    }
}

fn to_scaling_activity(activity: &Activity) -> ScalingActivity {
    ScalingActivity {
        activity_id: activity.activity_id().unwrap_or_default().to_string(),
        status_code: activity
            .status_code()
            .map(|code| code.as_str().to_string())
            .unwrap_or_default(),
        status_message: activity.status_message().map(str::to_string),
        description: activity.description().map(str::to_string),
        start_time: activity
            .start_time()
            .and_then(|time| SystemTime::try_from(*time).ok()),
    }
}

/// What AWS answered, reduced to what the mapping needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// An HTTP answer from the service; `code` is missing when the body was not an AWS
    /// error document (a proxy's HTML page, moto's 500 for unknown groups).
    Service {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    /// No usable answer: connection, timeout, credentials, unparseable response.
    NoAnswer(String),
}

fn to_asg_error<E>(operation: &'static str, asg: &str, error: SdkError<E>) -> AsgError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let failure = match &error {
        SdkError::ServiceError(service) => Failure::Service {
            status: service.raw().status().as_u16(),
            code: service.err().code().map(str::to_string),
            message: service.err().message().map(str::to_string),
        },
        _ => Failure::NoAnswer(DisplayErrorContext(&error).to_string()),
    };
    classify(operation, asg, failure)
}

fn classify(operation: &'static str, asg: &str, failure: Failure) -> AsgError {
    let asg = asg.to_string();
    match failure {
        Failure::Service {
            code: Some(code),
            message,
            ..
        } if code == "ValidationError" => {
            let message = message.unwrap_or_default();
            // AWS reports an unknown group on writes as a ValidationError, not a 404.
            if message
                .to_ascii_lowercase()
                .contains("autoscalinggroup name not found")
            {
                AsgError::NotFound { asg }
            } else {
                AsgError::Validation {
                    operation,
                    asg,
                    message,
                }
            }
        }
        Failure::Service {
            status,
            code,
            message,
        } => AsgError::Api {
            operation,
            asg,
            code: code.unwrap_or_else(|| format!("HTTP {status}")),
            message: message.unwrap_or_else(|| format!("HTTP {status} without an AWS error code")),
        },
        Failure::NoAnswer(message) => AsgError::Transport {
            operation,
            asg,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_autoscaling::error::ConnectorError;
    use aws_sdk_autoscaling::operation::set_desired_capacity::SetDesiredCapacityError;

    fn service(status: u16, code: &str, message: &str) -> Failure {
        Failure::Service {
            status,
            code: Some(code.to_string()),
            message: Some(message.to_string()),
        }
    }

    #[test]
    fn above_max_size_is_a_validation_error() {
        let error = classify(
            "SetDesiredCapacity",
            "spot",
            service(
                400,
                "ValidationError",
                "New SetDesiredCapacity value 5 is above max value 4 for the AutoScalingGroup.",
            ),
        );
        assert!(matches!(error, AsgError::Validation { .. }), "{error:?}");
        assert!(error.is_above_max_size());
    }

    #[test]
    fn unknown_group_validation_error_is_not_found() {
        let error = classify(
            "SetDesiredCapacity",
            "nope",
            service(
                400,
                "ValidationError",
                "AutoScalingGroup name not found - AutoScalingGroup nope not found",
            ),
        );
        assert_eq!(
            error,
            AsgError::NotFound {
                asg: "nope".to_string()
            }
        );
    }

    #[test]
    fn other_service_codes_are_api_errors() {
        for (status, code) in [
            (400, "Throttling"),
            (403, "AccessDenied"),
            (500, "InternalFailure"),
            (503, "ServiceUnavailable"),
            (400, "ResourceContention"),
        ] {
            let error = classify(
                "DescribeAutoScalingGroups",
                "spot",
                service(status, code, "no"),
            );
            assert_eq!(
                error,
                AsgError::Api {
                    operation: "DescribeAutoScalingGroups",
                    asg: "spot".to_string(),
                    code: code.to_string(),
                    message: "no".to_string(),
                }
            );
        }
    }

    #[test]
    fn an_answer_without_error_code_keeps_the_http_status() {
        let error = classify(
            "SetDesiredCapacity",
            "spot",
            Failure::Service {
                status: 500,
                code: None,
                message: None,
            },
        );
        assert!(
            matches!(&error, AsgError::Api { code, .. } if code == "HTTP 500"),
            "{error:?}"
        );
    }

    #[test]
    fn dispatch_and_timeout_failures_are_transport_errors() {
        let dispatch: SdkError<SetDesiredCapacityError> =
            SdkError::dispatch_failure(ConnectorError::io("connection refused".into()));
        let error = to_asg_error("SetDesiredCapacity", "spot", dispatch);
        assert!(
            matches!(&error, AsgError::Transport { message, .. } if message.contains("connection refused")),
            "{error:?}"
        );

        let timeout: SdkError<SetDesiredCapacityError> =
            SdkError::timeout_error("attempt timed out");
        let error = to_asg_error("SetDesiredCapacity", "spot", timeout);
        assert!(matches!(error, AsgError::Transport { .. }), "{error:?}");
    }
}
