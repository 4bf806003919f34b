//! What runs on a node Spot Guard bought, for as long as the agent runs: Cluster
//! Autoscaler protection for its first minutes and, for an on-demand fallback,
//! scale-back once spot capacity returns.

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use super::SpotGuard;
use super::ca_protection::CaProtection;
use super::scale_back::ScaleBack;
use crate::actions::NodeActions;
use crate::asg::AutoScaling;
use crate::drain::DrainSettings;
use crate::names;
use crate::node::NodeClient;

impl<A: AutoScaling + Clone + 'static> SpotGuard<A> {
    /// The tasks that look after this agent's own node when it is a replacement Spot
    /// Guard bought: Cluster Autoscaler protection and, for an on-demand fallback,
    /// scale-back. None without this instance's id (read from IMDS).
    pub fn own_node_tasks(
        &self,
        kube: kube::Client,
        drain: DrainSettings,
        shutdown: &CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let dry_run = self.dry_run;
        let config = &self.settings;
        let Some(instance_id) = self.instance_id.clone() else {
            if self.settings.scale_back.is_some() {
                warn!(
                    "SPOT_GUARD_SCALE_BACK is on but this instance's id could not be read from IMDS; this node is never given back"
                );
            }
            return Vec::new();
        };
        let node_name = self.node.name();
        let mut tasks = Vec::new();
        if !self.settings.new_node_protection.is_zero() {
            let protection = CaProtection {
                node: NodeClient::new(kube.clone(), node_name, dry_run),
                leases: self.leases.clone(),
                lease_names: vec![
                    names::asg_lease(&config.spot_asg_name),
                    names::asg_lease(&config.on_demand_asg_name),
                ],
                instance_id: instance_id.clone(),
                window: self.settings.new_node_protection,
                // The entry is usually there before the agent starts; this only
                // covers a buyer slower than the kubelet.
                lookup_interval: config.check_interval * 3,
            };
            let span = info_span!("ca_protection", node = %node_name, instance = %instance_id);
            tasks.push(tokio::spawn(
                protection.run(shutdown.clone()).instrument(span),
            ));
        }
        if let Some(settings) = &self.settings.scale_back {
            let mut actions = NodeActions::new(
                NodeClient::new(kube.clone(), node_name, dry_run),
                kube.clone(),
                drain.clone(),
                dry_run,
                String::new(),
            );
            actions.set_reporter(self.reporter.clone());
            let scale_back = ScaleBack {
                asg: self.asg.clone(),
                spot_asg: config.spot_asg_name.clone(),
                on_demand_asg: config.on_demand_asg_name.clone(),
                settings: settings.clone(),
                pre_scale: config.pre_scale.clone(),
                kube: kube.clone(),
                node: NodeClient::new(kube, node_name, dry_run),
                leases: self.leases.clone(),
                actions,
                drain,
                instance_id,
                dry_run,
                reporter: self.reporter.clone(),
            };
            let span = info_span!(
                "scale_back",
                node = %node_name,
                on_demand_asg = %config.on_demand_asg_name
            );
            tasks.push(tokio::spawn(
                scale_back.run(shutdown.clone()).instrument(span),
            ));
        }
        tasks
    }
}
