//! NTH's own webhook templates rendered by the whole agent, compared with what NTH's Go
//! text/template engine prints for the same data: the template fields come from IMDS
//! (read at start, or later when IMDS did not answer), from the Node (labels) and its pods
//! (read before acting), and from the notice (NTH's `.Description` and `.StartTime`).
//!
//! The expected texts are written by hand from the templates and the data, following Go's
//! rules: `time.Time` prints as `2006-01-02 15:04:05 -0700 MST`, a `[]string` as `[a b]`,
//! a `map[string]string` as `map[k:v]` with sorted keys. The one deliberate difference:
//! NTH ends `.Description` with " \n", which breaks the JSON of its own default template;
//! the words are NTH's, the trailing whitespace is not.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use spot_guard::aws::AwsAutoScaling;
use spot_guard::instance_metadata::PUBLIC_IPV4_PATH;
use spot_guard::run::RunningAgent;
use spot_guard::sim::harness;
use spot_guard::sim::imds::{ImdsSim, SimInstance};
use spot_guard::sim::kube::{FakeKube, FakePod};
use tokio::net::TcpListener;

const NODE: &str = "ip-10-0-7-7.ec2.internal";
const BOUND: Duration = Duration::from_secs(20);
const NOTICE_TIME: &str = "2030-01-01T00:00:00Z";
/// `printf '&{2030-01-01T00:00:00Z}' | sha256sum`: NTH's id for that recommendation.
const EVENT_ID: &str =
    "rebalance-recommendation-075a55a69e58134554ebb0603cea2257274ff5765f3c77e63e90962ff0c43873";

/// NTH's default WEBHOOK_TEMPLATE (pkg/config/config.go, chart README), the template of
/// NTH's test/e2e/webhook-test, and every other field NTH's template data offers.
const TEMPLATES: &str = r#"{"text":"[NTH][Instance Interruption] EventID: {{ .EventID }} - Kind: {{ .Kind }} - Instance: {{ .InstanceID }} - Node: {{ .NodeName }} - Description: {{ .Description }} - Start Time: {{ .StartTime }}"}
{"Content":"[NTH][Instance Interruption] InstanceId: {{ .InstanceID }} - Node: {{ .NodeName }} - InstanceType: {{ .InstanceType }} -  AvailabilityZone: {{ .AvailabilityZone }} - Kind: {{ .Kind }} - Start Time: {{ .StartTime }}"}
Account={{ .AccountId }} LifeCycle={{ .InstanceLifeCycle }} Public={{ .PublicHostname }}/{{ .PublicIP }} Local={{ .LocalHostname }}/{{ .LocalIP }} Region={{ .Region }} Monitor={{ .Monitor }} End={{ .EndTime }}
Pods={{ .Pods }} Joined={{ join "," .Pods }} Labels={{ .NodeLabels }} Zone={{ index .NodeLabels "topology.kubernetes.io/zone" }}
"#;

const PUBLIC_HOSTNAME: &str = "ec2-54-12-34-56.eu-west-1.compute.amazonaws.com";
const PUBLIC_IP: &str = "54.12.34.56";

/// The instance IMDS describes; `public` is its public host name and address, if any.
fn instance(public: Option<(&str, &str)>) -> SimInstance {
    SimInstance {
        account_id: "210987654321".to_owned(),
        instance_type: "c6i.2xlarge".to_owned(),
        life_cycle: "spot".to_owned(),
        availability_zone: "eu-west-1b".to_owned(),
        local_ipv4: "10.0.7.7".to_owned(),
        local_hostname: NODE.to_owned(),
        public: public.map(|(hostname, ip)| (hostname.to_owned(), ip.to_owned())),
    }
}

struct World {
    imds: ImdsSim,
    kube: FakeKube,
    template: tempfile::NamedTempFile,
    posts: Arc<Mutex<Vec<String>>>,
    receiver_url: String,
}

async fn world() -> World {
    spot_guard::tls::ensure_crypto_provider();
    let imds = ImdsSim::start().await.expect("IMDS simulator");
    imds.set_instance_id("i-0a1b2c3d4e5f60718");
    imds.set_instance(instance(Some((PUBLIC_HOSTNAME, PUBLIC_IP))));
    let kube = FakeKube::start().await.expect("fake Kubernetes API");
    kube.add_node(NODE);
    kube.update_node(NODE, |node| {
        node.metadata.labels = Some(
            [
                ("topology.kubernetes.io/zone", "eu-west-1b"),
                ("node.kubernetes.io/lifecycle", "spot"),
                ("kubernetes.io/hostname", NODE),
            ]
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect(),
        );
    });
    kube.add_pod(FakePod::new("kube-system", "aws-node-x2x9k", NODE).daemon_set());
    kube.add_pod(FakePod::new("default", "web-1", NODE));
    let template = tempfile::NamedTempFile::new().expect("template file");
    std::fs::write(template.path(), TEMPLATES).expect("template written");

    let posts = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("receiver");
    let receiver_url = format!("http://{}/hook", listener.local_addr().expect("address"));
    let app = Router::new()
        .fallback(
            |State(posts): State<Arc<Mutex<Vec<String>>>>, body: Bytes| async move {
                posts
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
            },
        )
        .with_state(Arc::clone(&posts));
    tokio::spawn(async move { axum::serve(listener, app).await });
    World {
        imds,
        kube,
        template,
        posts,
        receiver_url,
    }
}

async fn start(world: &World, extra: &[&str]) -> RunningAgent {
    let url = format!("--webhook-url={}", world.receiver_url);
    let file = format!(
        "--webhook-template-file={}",
        world.template.path().display()
    );
    let mut flags = vec![
        "--enable-rebalance-monitoring=true",
        "--emit-kubernetes-events=true",
        url.as_str(),
        file.as_str(),
    ];
    flags.extend_from_slice(extra);
    let config = harness::config(NODE, &world.imds.url(), &flags).expect("the flags are accepted");
    harness::start::<AwsAutoScaling>(&config, &world.kube.url(), None)
        .await
        .expect("the agent starts")
}

async fn first_post(world: &World, agent: RunningAgent) -> String {
    world.imds.set_rebalance(Some(NOTICE_TIME));
    harness::eventually("the webhook got a post", BOUND, || {
        !world.posts.lock().unwrap().is_empty()
    })
    .await;
    tokio::time::timeout(BOUND, agent.stop())
        .await
        .expect("the agent stops");
    world.posts.lock().unwrap()[0].clone()
}

/// What NTH prints for these templates, this instance and this notice, line by line.
fn expected(public: (&str, &str)) -> Vec<String> {
    let (public_hostname, public_ip) = public;
    vec![
        format!(
            r#"{{"text":"[NTH][Instance Interruption] EventID: {EVENT_ID} - Kind: REBALANCE_RECOMMENDATION - Instance: i-0a1b2c3d4e5f60718 - Node: {NODE} - Description: Rebalance recommendation received. Instance will be cordoned at 2030-01-01T00:00:00Z - Start Time: 2030-01-01 00:00:00 +0000 UTC"}}"#
        ),
        format!(
            r#"{{"Content":"[NTH][Instance Interruption] InstanceId: i-0a1b2c3d4e5f60718 - Node: {NODE} - InstanceType: c6i.2xlarge -  AvailabilityZone: eu-west-1b - Kind: REBALANCE_RECOMMENDATION - Start Time: 2030-01-01 00:00:00 +0000 UTC"}}"#
        ),
        format!(
            "Account=210987654321 LifeCycle=spot Public={public_hostname}/{public_ip} Local={NODE}/10.0.7.7 Region=eu-west-1 Monitor=REBALANCE_RECOMMENDATION_MONITOR End=0001-01-01 00:00:00 +0000 UTC"
        ),
        format!(
            "Pods=[web-1 aws-node-x2x9k] Joined=web-1,aws-node-x2x9k Labels=map[kubernetes.io/hostname:{NODE} node.kubernetes.io/lifecycle:spot topology.kubernetes.io/zone:eu-west-1b] Zone=eu-west-1b"
        ),
    ]
}

fn lines(body: &str) -> Vec<String> {
    body.lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn nth_templates_print_what_nth_prints_for_a_rebalance_recommendation() {
    let world = world().await;
    let agent = start(&world, &[]).await;
    let body = first_post(&world, agent).await;
    assert_eq!(lines(&body), expected((PUBLIC_HOSTNAME, PUBLIC_IP)));
    let first_line: serde_json::Value =
        serde_json::from_str(body.lines().next().unwrap()).expect("NTH's default body is JSON");
    assert!(first_line["text"].is_string());

    // The same instance metadata annotates every Kubernetes event, under NTH's names.
    let events = world.kube.events();
    assert!(!events.is_empty(), "events were written");
    for event in &events {
        let annotations = event.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(annotations["account-id"], "210987654321");
        assert_eq!(annotations["instance-id"], "i-0a1b2c3d4e5f60718");
        assert_eq!(annotations["instance-life-cycle"], "spot");
        assert_eq!(annotations["instance-type"], "c6i.2xlarge");
        assert_eq!(annotations["availability-zone"], "eu-west-1b");
        assert_eq!(annotations["region"], "eu-west-1");
        assert_eq!(annotations["local-ipv4"], "10.0.7.7");
        assert_eq!(annotations["local-hostname"], NODE);
        assert_eq!(annotations["public-ipv4"], PUBLIC_IP);
        assert_eq!(annotations["public-hostname"], PUBLIC_HOSTNAME);
    }
}

#[tokio::test]
async fn metadata_is_read_again_until_imds_answers() {
    let world = world().await;
    // An instance without a public address: IMDS answers 404 there, NTH prints nothing.
    world.imds.set_instance(instance(None));
    world.imds.set_down(true);
    let agent = start(&world, &["--metadata-tries=1"]).await;
    world.imds.set_down(false);
    // The last path a complete read asks for: the metadata is in hand right after.
    harness::eventually("the agent read the metadata again", BOUND, || {
        world.imds.gets(PUBLIC_IPV4_PATH) >= 1
    })
    .await;
    let body = first_post(&world, agent).await;
    assert_eq!(lines(&body), expected(("", "")));
}
