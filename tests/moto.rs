//! `AwsAutoScaling` against moto, a second, independent implementation of the ASG API:
//! proves the requests the SDK sends are the real ones, not just what our simulator
//! accepts. Moto has no scaling activities and no failure paths; those are in
//! tests/asg_sim.rs.

#[path = "support/moto.rs"]
mod moto;

use spot_guard::asg::{AsgError, AutoScaling};
use spot_guard::aws::{AwsAutoScaling, AwsSettings};

use moto::Moto;

const REGION: &str = "us-east-1";

/// A raw SDK client, for the setup calls spot-guard itself never makes; built as the
/// agent's (its HTTP client, TLS stack and crypto provider), so no second stack is tested.
fn setup_client(moto: &Moto) -> aws_sdk_autoscaling::Client {
    AwsAutoScaling::for_endpoint(moto.url(), REGION, &AwsSettings::default())
        .client()
        .clone()
}

async fn create_group(moto: &Moto, name: &str, min: i32, max: i32, desired: i32) {
    let client = setup_client(moto);
    let launch_configuration = format!("{name}-lc");
    client
        .create_launch_configuration()
        .launch_configuration_name(&launch_configuration)
        .image_id("ami-12c6146b")
        .instance_type("m5.large")
        .send()
        .await
        .expect("CreateLaunchConfiguration");
    client
        .create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_configuration_name(&launch_configuration)
        .min_size(min)
        .max_size(max)
        .desired_capacity(desired)
        .availability_zones("us-east-1a")
        .send()
        .await
        .expect("CreateAutoScalingGroup");
}

#[tokio::test]
async fn aws_auto_scaling_works_against_moto() {
    spot_guard::tls::ensure_crypto_provider();
    let moto = Moto::start().await;
    create_group(&moto, "spot-asg", 1, 5, 2).await;
    let aws = AwsAutoScaling::for_endpoint(moto.url(), REGION, &AwsSettings::default());

    let before = aws.describe("spot-asg").await.expect("describe");
    assert_eq!(before.name, "spot-asg");
    assert_eq!(
        (before.min_size, before.max_size, before.desired_capacity),
        (1, 5, 2)
    );
    assert_eq!(before.instances.len(), 2);
    assert!(
        before
            .instances
            .iter()
            .all(|i| i.instance_id.starts_with("i-"))
    );

    aws.set_desired_capacity("spot-asg", before.desired_capacity + 1)
        .await
        .expect("set desired");
    let after = aws
        .describe("spot-asg")
        .await
        .expect("describe after scaling");
    assert_eq!(after.desired_capacity, before.desired_capacity + 1);
    assert_eq!(after.instances.len(), 3);

    let activities = aws
        .scaling_activities("spot-asg")
        .await
        .expect("activities parse");
    assert!(
        activities.is_empty(),
        "moto records no activities: {activities:?}"
    );

    let missing = aws
        .describe("no-such-asg")
        .await
        .expect_err("unknown group");
    assert_eq!(
        missing,
        AsgError::NotFound {
            asg: "no-such-asg".to_string()
        }
    );

    let victim = after.instances[0].instance_id.clone();
    aws.terminate_instance(&victim, true)
        .await
        .expect("terminate with decrement");
    let shrunk = aws
        .describe("spot-asg")
        .await
        .expect("describe after terminate");
    assert_eq!(shrunk.desired_capacity, after.desired_capacity - 1);
    assert!(shrunk.instances.iter().all(|i| i.instance_id != victim));

    moto.reset().await;
    let gone = aws
        .describe("spot-asg")
        .await
        .expect_err("reset forgets groups");
    assert_eq!(
        gone,
        AsgError::NotFound {
            asg: "spot-asg".to_string()
        }
    );
}
