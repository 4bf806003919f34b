//! `spot-guard-sim --scale-back`: an on-demand fallback gives itself back once spot
//! capacity returns.

use std::process::ExitCode;
use std::time::Duration;

use tokio::runtime::Handle;

use super::{
    FleetError, FleetSpec, FleetWorld, ON_DEMAND_ASG, SPOT_ASG, WORKLOAD_NAMESPACE, node_name,
};
use crate::config::ScaleBackSettings;
use crate::sim::kube::FakePod;

/// `spot-guard simulate --scale-back`: three spot nodes, a spot shortage, one on-demand
/// fallback; spot capacity returns and the fallback's agent gives it back. Fails unless
/// the fallback drained and terminated exactly once and the on-demand ASG shrank back.
pub async fn run_scale_back() -> ExitCode {
    match simulate_scale_back().await {
        Ok(()) => {
            println!(
                "PASS: the fallback was given back exactly once, after spot capacity returned"
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("FAIL: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn simulate_scale_back() -> Result<(), FleetError> {
    let mut spec = FleetSpec::new(3);
    spec.new_node_protection = Duration::from_secs(60);
    spec.scale_back = Some(ScaleBackSettings {
        min_wait: Duration::from_secs(1),
        stability_period: Duration::from_secs(1),
        utilization_ceiling: 75,
        check_interval: Duration::from_millis(200),
    });
    let world = FleetWorld::start(spec).await?;
    let (node, instance) = world.buy_fallback().await?;
    let desired = |name: &str| world.asg.group(name).map_or(0, |group| group.desired);
    println!(
        "spot capacity ran out: node {} was drained and on-demand instance {instance} (node {node}) bought; spot ASG desired {}, on-demand ASG desired {}",
        node_name(0),
        desired(SPOT_ASG),
        desired(ON_DEMAND_ASG)
    );
    world.kube.add_pod(
        FakePod::new(WORKLOAD_NAMESPACE, "landed-app", &node).with_requests("500m", "1Gi"),
    );
    let agent = world
        .start_agent_on(
            &node,
            Some(instance.clone()),
            world.aws(),
            &Handle::current(),
        )
        .await?;
    let terminations = || {
        world
            .asg
            .calls_of("TerminateInstanceInAutoScalingGroup")
            .iter()
            .filter(|call| call.param("InstanceId") == Some(instance.as_str()))
            .count()
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    if terminations() > 0 {
        return Err(FleetError::Unexpected(
            "the fallback was given back while spot capacity was still short".to_owned(),
        ));
    }
    println!("3 s later, spot still short: the fallback stays (no termination)");
    world.asg.restore_capacity(SPOT_ASG)?;
    println!("spot capacity returns: the spot ASG launches what it was short of");
    let started = tokio::time::Instant::now();
    while terminations() == 0 {
        if started.elapsed() > Duration::from_secs(60) {
            return Err(FleetError::Unexpected(
                "the fallback was not given back within 60 s of spot capacity returning".to_owned(),
            ));
        }
        for (new_node, new_instance) in world.run_kubelets() {
            println!("node {new_node} registered for spot instance {new_instance}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let a restarted check see the record: no second termination.
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent.stop().await;
    let evicted = world
        .kube
        .evictions()
        .iter()
        .any(|eviction| eviction.name == "landed-app");
    println!(
        "given back {:.1} s after spot capacity returned: TerminateInstanceInAutoScalingGroup({instance}, ShouldDecrementDesiredCapacity=true) x{}; on-demand ASG desired {}, spot ASG desired {}; its pod evicted: {evicted}",
        started.elapsed().as_secs_f64(),
        terminations(),
        desired(ON_DEMAND_ASG),
        desired(SPOT_ASG)
    );
    if terminations() == 1 && desired(ON_DEMAND_ASG) == 0 && evicted {
        Ok(())
    } else {
        Err(FleetError::Unexpected(
            "expected one termination, the on-demand ASG back at 0 and the pod evicted".to_owned(),
        ))
    }
}
