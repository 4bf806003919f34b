//! Drain throughput: `drain::drain` against the fake API, concurrent against a serial
//! evict-and-wait baseline (throughput).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, EvictParams};
use spot_guard::drain::{self, DrainSettings};
use spot_guard::sim::kube::{FakeKube, Termination};

use crate::inflight::{InFlight, counting_client};
use crate::table::{Table, secs};
use crate::world::{NODE, add_pods};
use crate::{Mode, Result};

struct DrainCase {
    pods: usize,
    latency: Duration,
    pdb: bool,
}

const PDB_TERMINATION: Duration = Duration::from_millis(200);
const PDB_RETRY: Duration = Duration::from_secs(1);

async fn drain_fixture(case: &DrainCase, pods: usize) -> Result<FakeKube> {
    let kube = FakeKube::start().await?;
    kube.add_node(NODE);
    add_pods(&kube, pods);
    if case.pdb {
        // Budget of a fifth of the pods; each evicted pod takes 200 ms to terminate.
        kube.add_pdb(
            "default",
            "web",
            &[("app", "web")],
            (case.pods / 5).max(1) as u32,
        );
        kube.set_termination(Termination::After(PDB_TERMINATION));
    }
    kube.set_latency(case.latency);
    Ok(kube)
}

async fn concurrent_drain(
    case: &DrainCase,
    concurrency: usize,
) -> Result<(Duration, usize, usize)> {
    let kube = drain_fixture(case, case.pods).await?;
    let counter = InFlight::default();
    let client = counting_client(&kube.url(), &counter)?;
    let settings = DrainSettings {
        timeout: Duration::from_secs(600),
        max_concurrent_evictions: concurrency,
        eviction_retry_interval: if case.pdb {
            PDB_RETRY
        } else {
            DrainSettings::default().eviction_retry_interval
        },
        ..DrainSettings::default()
    };
    let started = Instant::now();
    let report = drain::drain(&client, NODE, &settings, false).await?;
    let took = started.elapsed();
    if !report.is_complete() || report.evicted.len() != case.pods {
        return Err(format!("drain incomplete: {report:?}").into());
    }
    Ok((took, counter.max(), kube.requests().len()))
}

/// What a naive agent does: evict one pod, wait until it is gone, then the next.
async fn serial_drain(case: &DrainCase, pods: usize) -> Result<Duration> {
    let kube = drain_fixture(case, pods).await?;
    let client = spot_guard::node::client_for_url(&kube.url())?;
    let api: Api<Pod> = Api::namespaced(client, "default");
    let started = Instant::now();
    for i in 0..pods {
        let name = format!("web-{i:04}");
        loop {
            match api.evict(&name, &EvictParams::default()).await {
                Ok(_) => break,
                Err(kube::Error::Api(status)) if status.code == 429 => {
                    tokio::time::sleep(PDB_RETRY).await
                }
                Err(error) => return Err(error.into()),
            }
        }
        while api.get_opt(&name).await?.is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(started.elapsed())
}

pub async fn throughput(mode: &Mode) -> Result<Table> {
    let sizes: &[usize] = if mode.full { &[10, 100, 1000] } else { &[10] };
    let latencies: &[u64] = if mode.full { &[5, 50] } else { &[5] };
    let serial_cap = if mode.full { 50 } else { 10 };
    let mut table = Table::new(
        "Drain throughput: time to drained, concurrent (16 in flight) vs serial evict-and-wait",
        &[
            "pods",
            "API latency",
            "PDB",
            "concurrent",
            "max in flight",
            "requests",
            "serial",
            "speed-up",
            "goal",
        ],
    );
    for &latency in latencies {
        for pdb in [false, true] {
            // Per-pod cost of the serial baseline, measured once on `serial_cap` pods.
            let probe = DrainCase {
                pods: serial_cap,
                latency: Duration::from_millis(latency),
                pdb,
            };
            let serial_probe = serial_drain(&probe, serial_cap).await?;
            for &pods in sizes {
                let case = DrainCase {
                    pods,
                    latency: Duration::from_millis(latency),
                    pdb,
                };
                let (took, max_in_flight, requests) = concurrent_drain(&case, 16).await?;
                let (serial, extrapolated) = if pods <= serial_cap {
                    (serial_drain(&case, pods).await?, false)
                } else {
                    (serial_probe.mul_f64(pods as f64 / serial_cap as f64), true)
                };
                table.row(vec![
                    pods.to_string(),
                    format!("{latency} ms"),
                    if pdb {
                        format!("maxUnavailable {}, 200 ms termination", (pods / 5).max(1))
                    } else {
                        "none".into()
                    },
                    secs(took),
                    max_in_flight.to_string(),
                    requests.to_string(),
                    format!(
                        "{}{}",
                        secs(serial),
                        if extrapolated {
                            format!(" (extrapolated from {serial_cap} pods)")
                        } else {
                            String::new()
                        }
                    ),
                    format!("{:.1}×", serial.as_secs_f64() / took.as_secs_f64()),
                    if pods == 1000 {
                        "≥ 10×".into()
                    } else {
                        String::new()
                    },
                ]);
            }
        }
    }
    // The bound is the setting: show it holds for another value.
    let case = DrainCase {
        pods: if mode.full { 200 } else { 10 },
        latency: Duration::from_millis(5),
        pdb: false,
    };
    for concurrency in [1, 4, 64] {
        let (took, max_in_flight, requests) = concurrent_drain(&case, concurrency).await?;
        table.row(vec![
            case.pods.to_string(),
            "5 ms".into(),
            format!("none; DRAIN_CONCURRENCY={concurrency}"),
            secs(took),
            max_in_flight.to_string(),
            requests.to_string(),
            String::new(),
            String::new(),
            "in flight ≤ setting".into(),
        ]);
    }
    Ok(table)
}
