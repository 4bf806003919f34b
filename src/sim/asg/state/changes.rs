//! What changes a group: desired capacity set, an instance terminated, capacity back;
//! launches and terminations with their activities.

use super::*;

impl World {
    /// Returns desired capacity before and after.
    pub fn set_desired(
        &mut self,
        name: &str,
        desired: i32,
        now: Now,
    ) -> Result<(i32, i32), ApiError> {
        let group = self.groups.get(name).ok_or_else(|| not_found(name))?;
        let before = group.desired;
        if desired > group.max {
            return Err(ApiError::validation(format!(
                "New SetDesiredCapacity value {desired} is above max value {} for the AutoScalingGroup.",
                group.max
            )));
        }
        if desired < group.min {
            return Err(ApiError::validation(format!(
                "New SetDesiredCapacity value {desired} is below min value {} for the AutoScalingGroup.",
                group.min
            )));
        }
        let cause = format!(
            "At {} a user request explicitly set group desired capacity changing the desired capacity from {before} to {desired}.",
            timestamp(now.wall)
        );
        self.change_desired(name, desired, &cause, now);
        Ok((before, desired))
    }

    /// Removes one instance; returns its group's name and the termination activity.
    pub fn terminate(
        &mut self,
        instance_id: &str,
        decrement: bool,
        now: Now,
    ) -> Result<(String, Activity), ApiError> {
        let (name, group) = self
            .groups
            .iter()
            .find(|(_, g)| {
                g.instances
                    .iter()
                    .any(|i| i.id == instance_id && i.state != LifecycleState::Terminating)
            })
            .ok_or_else(|| {
                ApiError::validation(format!("Instance Id not found - No managed instance found for instance ID: {instance_id}"))
            })?;
        let name = name.clone();
        if decrement && group.desired <= group.min {
            return Err(ApiError::validation(format!(
                "Currently, desiredSize equals minSize ({}). Terminating instance without replacement will violate group's min size constraint. Either set shouldDecrementDesiredCapacity flag to false or lower group's min size.",
                group.min
            )));
        }
        let activity_id = self.activity_id();
        let stamped = Now {
            instant: now.instant,
            wall: self.aws_time(now.wall),
        };
        let group = self.groups.get_mut(&name).ok_or_else(|| not_found(&name))?;
        let gone_at = now.instant + group.terminate_delay;
        for instance in group.instances.iter_mut().filter(|i| i.id == instance_id) {
            instance.state = LifecycleState::Terminating;
            instance.in_service_at = None;
            instance.gone_at = Some(gone_at);
        }
        let cause = if decrement {
            group.desired -= 1;
            format!(
                "At {} instance {instance_id} was taken out of service in response to a user request, shrinking the capacity from {} to {}.",
                timestamp(now.wall),
                group.desired + 1,
                group.desired
            )
        } else {
            format!(
                "At {} instance {instance_id} was taken out of service in response to a user request.",
                timestamp(now.wall)
            )
        };
        let activity = finished_activity(
            activity_id,
            format!("Terminating EC2 instance: {instance_id}"),
            cause.clone(),
            stamped,
        );
        group.activities.push(activity.clone());
        let desired = group.desired;
        self.change_desired(&name, desired, &cause, now);
        Ok((name, activity))
    }

    /// Healthy again, and launching what the group is short of its desired capacity.
    pub fn restore_capacity(&mut self, name: &str, now: Now) -> bool {
        let Some(group) = self.groups.get_mut(name) else {
            return false;
        };
        group.behaviour = Behaviour::Healthy;
        let desired = group.desired;
        let cause = format!(
            "At {} an instance was started in response to a difference between desired and actual capacity.",
            timestamp(now.wall)
        );
        self.change_desired(name, desired, &cause, now);
        true
    }

    /// Launches or terminates instances until their count matches `desired`.
    fn change_desired(&mut self, name: &str, desired: i32, cause: &str, now: Now) {
        let Some(group) = self.groups.get(name) else {
            return;
        };
        let target = usize::try_from(desired).unwrap_or(0);
        let current = group
            .instances
            .iter()
            .filter(|i| i.state != LifecycleState::Terminating)
            .count();
        for _ in current..target {
            self.launch(name, cause, now);
        }
        let stamped = Now {
            instant: now.instant,
            wall: self.aws_time(now.wall),
        };
        for _ in target..current {
            let activity_id = self.activity_id();
            if let Some(group) = self.groups.get_mut(name)
                && let Some(instance) = group
                    .instances
                    .iter_mut()
                    .rev()
                    .find(|i| i.state != LifecycleState::Terminating)
            {
                instance.state = LifecycleState::Terminating;
                instance.in_service_at = None;
                instance.gone_at = Some(now.instant + group.terminate_delay);
                let description = format!("Terminating EC2 instance: {}", instance.id);
                group.activities.push(finished_activity(
                    activity_id,
                    description,
                    cause.to_string(),
                    stamped,
                ));
            }
        }
        if let Some(group) = self.groups.get_mut(name) {
            group.desired = desired;
        }
    }

    fn launch(&mut self, name: &str, cause: &str, now: Now) {
        let instance_id = self.instance_id();
        let activity_id = self.activity_id();
        let aws_now = self.aws_time(now.wall);
        let Some(group) = self.groups.get_mut(name) else {
            return;
        };
        let at = now.instant + group.launch_delay;
        let end_time = aws_now + group.launch_delay;
        let behaviour = group.launch_plan.pop_front().unwrap_or(group.behaviour);
        let (description, outcome) = match behaviour {
            Behaviour::Healthy | Behaviour::NeverInService => {
                let never = behaviour == Behaviour::NeverInService;
                group.instances.push(Instance {
                    id: instance_id.clone(),
                    state: LifecycleState::Pending,
                    in_service_at: (!never).then_some(at),
                    gone_at: None,
                });
                let outcome = (!never).then_some(Outcome {
                    at,
                    end_time,
                    status: "Successful",
                    message: None,
                });
                (
                    format!("Launching a new EC2 instance: {instance_id}"),
                    outcome,
                )
            }
            Behaviour::InsufficientCapacity => (
                format!("Launching a new EC2 instance.  Status Reason: {NO_CAPACITY}"),
                Some(Outcome {
                    at,
                    end_time,
                    status: "Failed",
                    message: Some(NO_CAPACITY.to_string()),
                }),
            ),
            Behaviour::FailedOther => (
                format!("Launching a new EC2 instance.  Status Reason: {INVALID_LAUNCH}"),
                Some(Outcome {
                    at,
                    end_time,
                    status: "Failed",
                    message: Some(INVALID_LAUNCH.to_string()),
                }),
            ),
            Behaviour::Cancelled => (
                "Launching a new EC2 instance.".to_string(),
                Some(Outcome {
                    at,
                    end_time,
                    status: "Cancelled",
                    message: Some("The scaling activity was cancelled.".to_string()),
                }),
            ),
        };
        group.activities.push(Activity {
            id: activity_id,
            description,
            cause: format!(
                "{cause}  At {} an instance was started in response to a difference between desired and actual capacity.",
                timestamp(aws_now)
            ),
            start_time: aws_now,
            end_time: None,
            status: "InProgress".to_string(),
            message: None,
            outcome,
        });
    }
}

fn finished_activity(id: String, description: String, cause: String, now: Now) -> Activity {
    Activity {
        id,
        description,
        cause,
        start_time: now.wall,
        end_time: Some(now.wall),
        status: "Successful".to_string(),
        message: None,
        outcome: None,
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::validation(format!(
        "AutoScalingGroup name not found - AutoScalingGroup {name} not found"
    ))
}
