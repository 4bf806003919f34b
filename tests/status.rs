//! `spot-guard status`, the real binary with a kubeconfig like kubectl's, against the
//! Kubernetes simulator after a simulated fleet run with mixed outcomes: the printed
//! table says what the scenario did to each node, each ASG's Lease and the ledger.

#[path = "support/observed_fleet.rs"]
mod observed_fleet;
#[path = "support/process.rs"]
mod process;

use std::path::Path;
use std::process::Command;

use observed_fleet::{GIVEN_BACK, ObservedFleet};
use serde_json::Value;
use spot_guard::sim::fleet::{NAMESPACE, ON_DEMAND_ASG, SPOT_ASG, node_name};

/// Runs `spot-guard status ARGS` with `kubeconfig`; its stdout, failing on a non-zero exit.
async fn status(kubeconfig: &Path, args: &[&str]) -> String {
    let kubeconfig = kubeconfig.to_owned();
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_spot-guard"))
            .arg("status")
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("run spot-guard status")
    })
    .await
    .expect("status ran");
    assert!(
        output.status.success(),
        "spot-guard status failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// The printed table's rows whose first cell is `first`, as cells (columns are set apart
/// by three spaces or more; a cell never holds three).
fn row(printed: &str, first: &str) -> Vec<String> {
    let rows: Vec<Vec<String>> = printed
        .lines()
        .map(|line| {
            line.split("   ")
                .map(str::trim)
                .filter(|cell| !cell.is_empty())
                .map(str::to_owned)
                .collect::<Vec<String>>()
        })
        .filter(|cells| cells.first().is_some_and(|cell| cell == first))
        .collect();
    assert_eq!(rows.len(), 1, "one row for {first} in\n{printed}");
    rows[0].clone()
}

/// Every cell but the age (column `age_column`), which depends on the clock.
fn without(mut cells: Vec<String>, age_column: usize) -> Vec<String> {
    cells.remove(age_column);
    cells
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_what_the_fleet_run_did() {
    spot_guard::tls::ensure_crypto_provider();
    let fleet = ObservedFleet::run().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = process::write_kubeconfig(dir.path(), &fleet.world.kube.url());
    let on_demand = fleet
        .world
        .asg
        .group(ON_DEMAND_ASG)
        .map(|group| group.in_service_ids)
        .unwrap_or_default();
    // Nodes 1 and 2 fell back; node 2's fallback was given back since.
    let given_back = fleet.given_back_instance.clone();
    let given_back_node = fleet.nodes[GIVEN_BACK].clone();
    assert_eq!(
        on_demand.len(),
        1,
        "node 1's fallback is left: {on_demand:?}"
    );
    assert!(!on_demand.contains(&given_back), "{on_demand:?}");
    let instance = |i: usize| fleet.world.instance_id(i).unwrap_or_default().to_owned();

    let printed = status(&kubeconfig, &["--namespace", NAMESPACE]).await;
    // Shown with --nocapture: the example in docs/OBSERVABILITY.md.
    println!("{printed}");

    let header = row(&printed, "NODE");
    assert_eq!(header[5], "AGE", "{printed}");
    assert_eq!(
        without(row(&printed, &node_name(0)), 5),
        [
            node_name(0),
            instance(0),
            "drain finished".into(),
            SPOT_ASG.into(),
            "ready".into(),
            "-".into()
        ],
        "spot replacement, Ready, drained:\n{printed}"
    );
    assert_eq!(
        without(row(&printed, &node_name(1)), 5),
        [
            node_name(1),
            instance(1),
            "drain finished".into(),
            ON_DEMAND_ASG.into(),
            "timed-out".into(),
            "insufficient-capacity".into()
        ],
        "spot had no capacity: on-demand fallback, never Ready:\n{printed}"
    );
    assert_eq!(
        without(row(&printed, &node_name(2)), 5),
        [
            node_name(2),
            instance(2),
            // Its actions are over: a recommendation's drain is not retried.
            "drain finished".into(),
            ON_DEMAND_ASG.into(),
            "timed-out".into(),
            "insufficient-capacity".into()
        ],
        "spot in cool-off: on-demand, drain left a pod behind its PDB:\n{printed}"
    );
    assert_eq!(
        without(row(&printed, &given_back_node), 5),
        [
            given_back_node.clone(),
            given_back.clone(),
            "given back".into(),
            "-".into(),
            "-".into(),
            "-".into()
        ],
        "node 2's fallback, given back once spot capacity returned:\n{printed}"
    );
    // Other replacement Nodes and nodes no agent touched carry no state.
    let node_rows = printed.lines().take_while(|line| !line.is_empty()).count();
    assert_eq!(
        node_rows, 5,
        "header, three nodes, the fallback:\n{printed}"
    );

    let spot_lease = row(&printed, &format!("spot-guard-{SPOT_ASG}"));
    assert!(
        spot_lease.last().is_some_and(
            |cell| cell.ends_with(&format!("(insufficient-capacity on {})", node_name(1)))
        ),
        "the spot ASG's cool-off after node 1's failure:\n{printed}"
    );
    let on_demand_lease = row(&printed, &format!("spot-guard-{ON_DEMAND_ASG}"));
    assert!(
        on_demand_lease
            .iter()
            .any(|cell| cell.starts_with(&format!("1 by {given_back_node},"))),
        "the scale-back set the on-demand ASG's last target, 0 → 1 → 2 → 1:\n{printed}"
    );
    let mut give_back: Vec<(String, String)> = printed
        .lines()
        .skip_while(|line| !line.starts_with("ON-DEMAND TO GIVE BACK"))
        .skip(1)
        .map(|line| {
            let cells = row(&printed, line.split(' ').next().unwrap_or_default());
            assert_eq!(cells[1], ON_DEMAND_ASG, "{printed}");
            assert!(on_demand.contains(&cells[0]), "{printed}");
            (cells[2].clone(), cells[0].clone())
        })
        .collect();
    give_back.sort();
    let ledger = fleet
        .world
        .kube
        .lease(NAMESPACE, &format!("spot-guard-{ON_DEMAND_ASG}"))
        .and_then(|lease| lease.metadata.annotations);
    assert_eq!(
        give_back
            .iter()
            .map(|(node, _)| node.clone())
            .collect::<Vec<_>>(),
        [node_name(1)],
        "the ledger still holds node 1's fallback, not the one given back:\n{printed}\n{ledger:#?}"
    );

    let json: Value =
        serde_json::from_str(&status(&kubeconfig, &["--namespace", NAMESPACE, "-o", "json"]).await)
            .expect("-o json prints JSON");
    let steps: Vec<&str> = json["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|node| node["step"].as_str())
        .collect();
    // Sorted by node name: the fallback's node (on-demand-…) first.
    assert_eq!(
        steps,
        ["given-back", "drained", "drained", "drained"],
        "{json}"
    );
    assert_eq!(json["giveBack"].as_array().map(Vec::len), Some(1), "{json}");
    fleet.stop().await;
}
