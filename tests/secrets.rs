//! Nothing secret reaches the logs. The real binary, configured by env vars as in a pod,
//! handles a spot interruption and posts NTH's webhook with a credential in the URL's path,
//! one in a header value and one in the proxy's userinfo, at LOG_LEVEL=debug in text and in
//! JSON; the post succeeds, is refused by the proxy (HTTP 502) or cannot connect, and
//! start-up refuses a broken URL and proxy. None of the credentials is in any output, nor
//! the IMDSv2 token, even at RUST_LOG=trace.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use tokio::net::TcpListener;

#[path = "support/process.rs"]
mod process;

use process::{sigterm, wait_exit, wait_until, write_kubeconfig};
use spot_guard::sim::imds::ImdsSim;
use spot_guard::sim::kube::{FakeKube, FakePod};

const NODE: &str = "ip-10-0-7-7.ec2.internal";
const PATH_SECRET: &str = "URLPATHSECRET9d1e";
const HEADER_SECRET: &str = "HEADERSECRET7c2a";
const PROXY_SECRET: &str = "PROXYSECRET5b3f";
const SECRETS: [&str; 3] = [PATH_SECRET, HEADER_SECRET, PROXY_SECRET];

/// An HTTP server answering `status` to every request (a webhook receiver or, for
/// absolute-form requests, a proxy); counts the requests that carried the header secret.
async fn answering(status: StatusCode) -> (String, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&seen);
    let app = Router::new().fallback(move |headers: HeaderMap| {
        let counter = Arc::clone(&counter);
        async move {
            let carried = headers
                .get("authorization")
                .is_some_and(|v| v.to_str().unwrap_or("").contains(HEADER_SECRET));
            if carried {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            status
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("127.0.0.1:{}", address.port()), seen)
}

/// A loopback port nothing listens on.
async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    address.to_string()
}

fn agent(dir: &Path, env: &[(&str, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_spot-guard"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("NODE_NAME", NODE)
        .env("LOG_LEVEL", "debug")
        .env(
            "WEBHOOK_HEADERS",
            format!(
                r#"{{"Content-type":"application/json","Authorization":"Bearer {HEADER_SECRET}"}}"#
            ),
        )
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

fn assert_no_secret(output: &str) {
    for secret in SECRETS {
        assert!(
            !output.contains(secret),
            "{secret} appears in the output:\n{output}"
        );
    }
}

/// Runs the interruption flow with the webhook at `webhook_host` (through `proxy` when
/// given) until the agent logs the webhook's outcome, then stops it; returns the output.
async fn flow(json: bool, webhook_host: &str, proxy: Option<&str>) -> String {
    let imds = ImdsSim::start().await.expect("IMDS simulator");
    let kube = FakeKube::start().await.expect("fake Kubernetes API");
    kube.add_node(NODE);
    kube.add_pod(FakePod::new("default", "web-1", NODE));
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut env = vec![
        ("INSTANCE_METADATA_URL", imds.url()),
        (
            "KUBECONFIG",
            write_kubeconfig(dir.path(), &kube.url())
                .display()
                .to_string(),
        ),
        ("JSON_LOGGING", json.to_string()),
        (
            "WEBHOOK_URL",
            format!("http://{webhook_host}/services/T0001/B0001/{PATH_SECRET}"),
        ),
        ("NODE_TERMINATION_GRACE_PERIOD", "10".to_owned()),
    ];
    if let Some(proxy) = proxy {
        env.push((
            "WEBHOOK_PROXY",
            format!("http://hookuser:{PROXY_SECRET}@{proxy}"),
        ));
    }
    let mut child = agent(dir.path(), &env)
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("agent starts");
    imds.set_spot_action(Some(("terminate", "2026-11-24T10:02:00Z")));
    let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until(
        "the agent logs the webhook's outcome",
        Duration::from_secs(40),
        || read().contains("Webhook notification"),
    )
    .await;
    sigterm(&child);
    wait_exit(&mut child, Duration::from_secs(15)).await;
    read()
}

/// At RUST_LOG=trace every crate logs all it can (an HTTP library may dump each request's
/// bytes, 16 to a line): no 16-character run of the IMDSv2 token is in the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_imds_token_is_not_logged_even_at_trace() {
    let imds = ImdsSim::start().await.expect("IMDS simulator");
    let kube = FakeKube::start().await.expect("fake Kubernetes API");
    kube.add_node(NODE);
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let env = [
        ("INSTANCE_METADATA_URL", imds.url()),
        (
            "KUBECONFIG",
            write_kubeconfig(dir.path(), &kube.url())
                .display()
                .to_string(),
        ),
        ("WEBHOOK_URL", "http://127.0.0.1:1/unused".to_owned()),
        ("RUST_LOG", "trace".to_owned()),
    ];
    let mut child = agent(dir.path(), &env)
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("agent starts");
    // Start-up reads and polls: six requests carried the token.
    wait_until("six GETs with the token", Duration::from_secs(40), || {
        imds.gets_with_token() >= 6
    })
    .await;
    sigterm(&child);
    wait_exit(&mut child, Duration::from_secs(15)).await;
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();

    assert!(
        output.contains("TRACE"),
        "trace lines are written: {output}"
    );
    let tokens = imds.valid_tokens();
    assert!(!tokens.is_empty(), "the agent asked for a token");
    for token in &tokens {
        for run in token.as_bytes().windows(16) {
            let run = String::from_utf8_lossy(run);
            assert!(
                !output.contains(&*run),
                "the token's {run} is in the output"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_post_logs_the_webhook_host_only() {
    let (receiver, seen) = answering(StatusCode::OK).await;
    let output = flow(false, &receiver, None).await;
    assert!(output.contains("Webhook notification sent"), "{output}");
    assert!(
        output.contains(&format!("http://{receiver}")),
        "the host is named: {output}"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the header was sent");
    assert_no_secret(&output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_refused_by_the_proxy_logs_no_secret_in_json() {
    let (proxy, seen) = answering(StatusCode::BAD_GATEWAY).await;
    let output = flow(true, "hooks.example.invalid", Some(&proxy)).await;
    assert!(output.contains("Webhook notification not sent"), "{output}");
    assert!(output.contains("answered HTTP 502"), "{output}");
    assert!(output.lines().any(|line| line.starts_with('{')), "{output}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "the post went through the proxy"
    );
    assert_no_secret(&output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_cannot_connect_logs_no_secret() {
    let proxy = closed_port().await;
    let output = flow(false, "hooks.example.invalid", Some(&proxy)).await;
    assert!(output.contains("Webhook notification not sent"), "{output}");
    assert_no_secret(&output);
}

#[test]
fn start_up_refusals_name_the_setting_but_not_its_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, value) in [
        (
            "WEBHOOK_URL",
            format!("ftp://hooks.example.com/{PATH_SECRET}"),
        ),
        (
            "WEBHOOK_PROXY",
            format!("http://user:{PROXY_SECRET}@[proxy.example.com]:3128"),
        ),
    ] {
        let mut env = vec![("WEBHOOK_URL", "http://hooks.example.com/x".to_owned())];
        env.push((name, value));
        let output = agent(dir.path(), &env).output().expect("agent runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(output.status.code(), Some(2), "{text}");
        assert!(text.contains(name), "{text}");
        assert_no_secret(&text);
    }
    let help = agent(
        dir.path(),
        &[("WEBHOOK_URL", format!("http://h/{PATH_SECRET}"))],
    )
    .env("WEBHOOK_PROXY", format!("http://u:{PROXY_SECRET}@p:1"))
    .arg("--help")
    .output()
    .expect("agent runs");
    assert!(help.status.success());
    assert_no_secret(&String::from_utf8_lossy(&help.stdout));
}
