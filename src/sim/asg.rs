//! `AsgSim`: an EC2 Auto Scaling API simulator that answers like AWS, over real HTTP.
//!
//! It speaks the AWS Query protocol as aws-sdk-autoscaling sends it (form-encoded POST,
//! XML answers, `ErrorResponse` errors with AWS's codes and HTTP statuses), so the real
//! SDK client in [`crate::aws`] can be pointed at it with an endpoint URL.
//!
//! Modelled: `DescribeAutoScalingGroups`, `SetDesiredCapacity` (MinSize/MaxSize checks
//! with AWS's wording), `DescribeScalingActivities`, `TerminateInstanceInAutoScalingGroup`;
//! instances that launch `Pending` and turn `InService` after a per-group delay, or never
//! start for lack of capacity ([`Behaviour`]); scaling activities per launch and
//! termination; injected API faults ([`Fault`]); a log of every call ([`Call`]).
//!
//! Not modelled: real EC2 (no instance types, AMIs, subnets, spot markets), more than
//! one region and zone, launch templates and configurations, lifecycle hooks, warm pools,
//! cooldowns (HonorCooldown is only recorded), health checks, instance protection,
//! paging (`NextToken`), request signing checks, and any other action (answered with
//! `InvalidAction`). Activities are simplified: one per launched or terminated instance,
//! `InProgress` until the launch delay passes. Time is the tokio clock.
//!
//! AWS's real rules, on by default where they hold in AWS: Describe calls lag a change
//! ([`AsgSim::set_describe_lag`], 1 s unless set: AWS promises no read-after-write for
//! them); terminated instances stay `Terminating` for a while ([`AsgSim::set_terminate_delay`]);
//! each launch has its own outcome ([`AsgSim::set_launch_plan`]); activities carry AWS's
//! clock, which may be skewed from ours ([`AsgSim::set_activity_clock_skew`]); a change
//! can be applied and its answer lost ([`Fault::AnswerLost`]); answers can be slow
//! ([`AsgSim::set_call_delay`]).

mod state;
mod xml;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Router};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::asg::ScalingActivity;
use state::{ApiError, Now, World};
pub use state::{Behaviour, GroupSnapshot, GroupSpec};

#[derive(Debug, thiserror::Error)]
pub enum AsgSimError {
    #[error("binding the ASG simulator to 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
    #[error("Auto Scaling group {0} is not in the ASG simulator")]
    UnknownGroup(String),
}

/// An error the simulator answers instead of running the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 400 `Throttling`: the SDK's standard retry mode retries it.
    Throttling,
    /// 403 `AccessDenied`: not retried.
    AccessDenied,
    /// 500 `InternalFailure`: retried as transient.
    InternalFailure,
    /// 503 `ServiceUnavailable`: retried as transient.
    ServiceUnavailable,
    /// The action is applied, then answered 500 `InternalFailure`: a change the caller
    /// cannot know went through (a retry applies it again).
    AnswerLost,
}

impl Fault {
    fn api_error(self, action: &str) -> ApiError {
        let (status, code, message) = match self {
            Fault::Throttling => (400, "Throttling", "Rate exceeded".to_string()),
            Fault::AccessDenied => (
                403,
                "AccessDenied",
                format!(
                    "User: arn:aws:sts::123456789012:assumed-role/spot-guard/node is not authorized to perform: autoscaling:{action} because no identity-based policy allows the autoscaling:{action} action"
                ),
            ),
            Fault::InternalFailure | Fault::AnswerLost => (
                500,
                "InternalFailure",
                "The request processing has failed because of an unknown error, exception or failure.".to_string(),
            ),
            Fault::ServiceUnavailable => (
                503,
                "ServiceUnavailable",
                "The request has failed due to a temporary failure of the server.".to_string(),
            ),
        };
        ApiError {
            status,
            code: code.to_string(),
            message,
        }
    }
}

/// One request the simulator answered, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub action: String,
    /// `AutoScalingGroupName`, or the first of `AutoScalingGroupNames`.
    pub group: Option<String>,
    /// Every form parameter except `Action` and `Version`.
    pub params: BTreeMap<String, String>,
    /// For `SetDesiredCapacity` and `TerminateInstanceInAutoScalingGroup` on a known group.
    pub desired_before: Option<i32>,
    pub desired_after: Option<i32>,
    /// The error code answered, `None` on success.
    pub error_code: Option<String>,
    /// The caller's User-Agent, which carries the SDK's `app/<name>` when one is set.
    pub user_agent: Option<String>,
    pub at: SystemTime,
}

impl Call {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// AWS answers Describe calls from state that can be this old after a change.
pub const DEFAULT_DESCRIBE_LAG: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Shared {
    world: World,
    faults: HashMap<String, (u32, Fault)>,
    calls: Vec<Call>,
    requests: u64,
    describe_lag: Duration,
    /// The world just before each change within the lag, oldest first.
    before_changes: VecDeque<(Instant, World)>,
    delays: HashMap<String, Duration>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            world: World::default(),
            faults: HashMap::new(),
            calls: Vec::new(),
            requests: 0,
            describe_lag: DEFAULT_DESCRIBE_LAG,
            before_changes: VecDeque::new(),
            delays: HashMap::new(),
        }
    }
}

impl Shared {
    /// The world a Describe call sees at `now`: as it was `describe_lag` ago when it
    /// changed since; `None` means the current one.
    fn lagging_view(&mut self, now: Instant) -> Option<World> {
        let cutoff = now.checked_sub(self.describe_lag)?;
        while self
            .before_changes
            .front()
            .is_some_and(|(at, _)| *at <= cutoff)
        {
            self.before_changes.pop_front();
        }
        let (_, before) = self.before_changes.front()?;
        let mut view = before.clone();
        view.settle(cutoff);
        Some(view)
    }
}

type SharedState = Arc<Mutex<Shared>>;

fn lock(shared: &SharedState) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running simulator; dropping it (or [`AsgSim::shutdown`]) stops the server.
#[derive(Debug)]
pub struct AsgSim {
    url: String,
    shared: SharedState,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl AsgSim {
    /// Serves on 127.0.0.1 on an ephemeral port.
    pub async fn start() -> Result<AsgSim, AsgSimError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(AsgSimError::Bind)?;
        let address = listener.local_addr().map_err(AsgSimError::Bind)?;
        let shared = SharedState::default();
        let app = Router::new()
            .route("/", post(answer))
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let serving = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(error) = serving.await {
                tracing::warn!(%error, "ASG simulator stopped");
            }
        });
        tracing::debug!(%address, "ASG simulator listening");
        Ok(AsgSim {
            url: format!("http://{address}"),
            shared,
            stop: Some(stop),
            server: Some(server),
        })
    }

    /// "http://127.0.0.1:PORT", the endpoint URL for the SDK.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Creates (or replaces) a group with `spec.desired` InService instances.
    pub fn add_group(&self, name: &str, spec: GroupSpec) {
        lock(&self.shared).world.add_group(name, spec, Now::read());
    }

    /// Adds a finished or running activity, e.g. a failure from before the flow's request.
    /// A missing `start_time` means now.
    pub fn add_activity(&self, group: &str, activity: ScalingActivity) -> Result<(), AsgSimError> {
        let mut shared = lock(&self.shared);
        if shared.world.add_activity(group, activity, Now::read()) {
            Ok(())
        } else {
            Err(AsgSimError::UnknownGroup(group.to_string()))
        }
    }

    pub fn group(&self, name: &str) -> Option<GroupSnapshot> {
        let mut shared = lock(&self.shared);
        shared.world.settle(Now::read().instant);
        shared.world.snapshot(name)
    }

    /// Applies to launches from now on.
    pub fn set_behaviour(&self, name: &str, behaviour: Behaviour) -> Result<(), AsgSimError> {
        self.change_group(name, |group| group.behaviour = behaviour)
    }

    /// Spot capacity is back: launches go through again, and the group launches what it
    /// is short of its desired capacity, as AWS keeps retrying a failed launch.
    pub fn restore_capacity(&self, name: &str) -> Result<(), AsgSimError> {
        let mut shared = lock(&self.shared);
        let now = Now::read();
        shared.world.settle(now.instant);
        if shared.world.restore_capacity(name, now) {
            Ok(())
        } else {
            Err(AsgSimError::UnknownGroup(name.to_string()))
        }
    }

    pub fn set_max_size(&self, name: &str, max: i32) -> Result<(), AsgSimError> {
        self.change_group(name, |group| group.max = max)
    }

    fn change_group(
        &self,
        name: &str,
        change: impl FnOnce(&mut state::Group),
    ) -> Result<(), AsgSimError> {
        let mut shared = lock(&self.shared);
        let group = shared
            .world
            .group_mut(name)
            .ok_or_else(|| AsgSimError::UnknownGroup(name.to_string()))?;
        change(group);
        Ok(())
    }

    /// How long Describe calls go on answering the state from before a change; zero
    /// makes reads consistent.
    pub fn set_describe_lag(&self, lag: Duration) {
        lock(&self.shared).describe_lag = lag;
    }

    /// How long instances of `name` terminated from now on stay listed as `Terminating`.
    pub fn set_terminate_delay(&self, name: &str, delay: Duration) -> Result<(), AsgSimError> {
        self.change_group(name, |group| group.terminate_delay = delay)
    }

    /// The next launches of `name` end as listed, one each; then its behaviour applies.
    pub fn set_launch_plan(&self, name: &str, plan: &[Behaviour]) -> Result<(), AsgSimError> {
        self.change_group(name, |group| {
            group.launch_plan = plan.iter().copied().collect()
        })
    }

    /// AWS's clock, which stamps activities, runs `millis` ahead of ours (behind if negative).
    pub fn set_activity_clock_skew(&self, millis: i64) {
        lock(&self.shared).world.clock_skew_ms = millis;
    }

    /// Every answer to `action` comes `delay` late (the change, if any, applies on arrival).
    pub fn set_call_delay(&self, action: &str, delay: Duration) {
        lock(&self.shared).delays.insert(action.to_string(), delay);
    }

    /// The next `times` calls of `action` (e.g. "SetDesiredCapacity") answer `fault`.
    pub fn fail_next(&self, action: &str, times: u32, fault: Fault) {
        lock(&self.shared)
            .faults
            .insert(action.to_string(), (times, fault));
    }

    /// Every call so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.shared).calls.clone()
    }

    pub fn calls_of(&self, action: &str) -> Vec<Call> {
        lock(&self.shared)
            .calls
            .iter()
            .filter(|call| call.action == action)
            .cloned()
            .collect()
    }

    /// Stops the server and waits until it has stopped.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for AsgSim {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn answer(
    State(shared): State<SharedState>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let mut params: BTreeMap<String, String> = form.into_iter().collect();
    let action = params.remove("Action").unwrap_or_default();
    params.remove("Version");
    let delay = lock(&shared).delays.get(&action).copied();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let now = Now::read();

    let mut shared = lock(&shared);
    shared.requests += 1;
    let request_id = format!("7a62c49f-347e-4fc4-9331-{:012x}", shared.requests);
    shared.world.settle(now.instant);

    let mut call = Call {
        group: params
            .get("AutoScalingGroupName")
            .or_else(|| params.get("AutoScalingGroupNames.member.1"))
            .cloned(),
        action: action.clone(),
        params,
        desired_before: None,
        desired_after: None,
        error_code: None,
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string),
        at: now.wall,
    };
    let changes = matches!(
        action.as_str(),
        "SetDesiredCapacity" | "TerminateInstanceInAutoScalingGroup"
    );
    let before = (changes && !shared.describe_lag.is_zero()).then(|| shared.world.clone());
    let lagging = if changes {
        None
    } else {
        shared.lagging_view(now.instant)
    };
    let result = match (take_fault(&mut shared.faults, &action), lagging) {
        (Some(Fault::AnswerLost), _) => {
            let applied = run(&mut shared.world, &mut call, now);
            if let (Ok(_), Some(before)) = (&applied, before.clone()) {
                shared.before_changes.push_back((now.instant, before));
            }
            Err(Fault::AnswerLost.api_error(&action))
        }
        (Some(fault), _) => Err(fault.api_error(&action)),
        (None, Some(mut view)) => run(&mut view, &mut call, now),
        (None, None) => {
            let result = run(&mut shared.world, &mut call, now);
            if let (Ok(_), Some(before)) = (&result, before) {
                shared.before_changes.push_back((now.instant, before));
            }
            result
        }
    };
    tracing::debug!(action, group = ?call.group, ok = result.is_ok(), "ASG simulator answered");
    let (status, body) = match result {
        Ok(inner) => (200, xml::response(&action, inner.as_deref(), &request_id)),
        Err(error) => {
            call.error_code = Some(error.code.clone());
            (
                error.status,
                xml::error(error.status, &error.code, &error.message, &request_id),
            )
        }
    };
    shared.calls.push(call);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [
            (header::CONTENT_TYPE, "text/xml".to_string()),
            (
                header::HeaderName::from_static("x-amzn-requestid"),
                request_id,
            ),
        ],
        body,
    )
        .into_response()
}

fn take_fault(faults: &mut HashMap<String, (u32, Fault)>, action: &str) -> Option<Fault> {
    let (remaining, fault) = faults.get_mut(action)?;
    let fault = *fault;
    *remaining = remaining.saturating_sub(1);
    if *remaining == 0 {
        faults.remove(action);
    }
    Some(fault)
}

/// Runs one action; `Ok(Some(xml))` is the inner XML of its Result element.
fn run(world: &mut World, call: &mut Call, now: Now) -> Result<Option<String>, ApiError> {
    match call.action.as_str() {
        "DescribeAutoScalingGroups" => {
            let names: Vec<String> = (1..)
                .map_while(|n| {
                    call.params
                        .get(&format!("AutoScalingGroupNames.member.{n}"))
                        .cloned()
                })
                .collect();
            Ok(Some(xml::groups(&world.describe(&names))))
        }
        "SetDesiredCapacity" => {
            let name = required(call, "AutoScalingGroupName")?;
            let desired = integer(call, "DesiredCapacity")?;
            call.desired_before = world.group(&name).map(|group| group.desired);
            let result = world.set_desired(&name, desired, now);
            call.desired_after = world.group(&name).map(|group| group.desired);
            result.map(|_| None)
        }
        "DescribeScalingActivities" => {
            let max = match call.param("MaxRecords") {
                Some(_) => usize::try_from(integer(call, "MaxRecords")?).unwrap_or(0),
                None => 100,
            };
            let name = call.group.clone().unwrap_or_default();
            Ok(Some(xml::activities(&name, &world.activities(&name, max))))
        }
        "TerminateInstanceInAutoScalingGroup" => {
            let instance_id = required(call, "InstanceId")?;
            let decrement = required(call, "ShouldDecrementDesiredCapacity")? == "true";
            let (group, activity) = world.terminate(&instance_id, decrement, now)?;
            call.desired_after = world.group(&group).map(|g| g.desired);
            call.desired_before = call.desired_after.map(|after| after + i32::from(decrement));
            call.group = Some(group.clone());
            Ok(Some(xml::activity(&group, &activity)))
        }
        other => Err(ApiError {
            status: 400,
            code: "InvalidAction".to_string(),
            message: format!("The action {other} is not valid for this web service."),
        }),
    }
}

fn required(call: &Call, name: &str) -> Result<String, ApiError> {
    call.param(name).map(str::to_string).ok_or_else(|| {
        ApiError::validation(format!(
            "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null",
            lower_first(name)
        ))
    })
}

fn integer(call: &Call, name: &str) -> Result<i32, ApiError> {
    let text = required(call, name)?;
    text.parse().map_err(|_| {
        ApiError::validation(format!(
            "Invalid value '{text}' for {name}: must be an integer"
        ))
    })
}

fn lower_first(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|first| first.to_ascii_lowercase().to_string() + chars.as_str())
        .unwrap_or_default()
}
