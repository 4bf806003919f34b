//! The adapter against a scripted HTTP/1.1 server that misbehaves the ways networks and
//! AWS do: through the real SDK client where the retries are what a user notices, and
//! at the connector where the SDK's error kinds and timeouts are.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::HttpConnector;
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_types::body::SdkBody;
use http_body_util::BodyExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::Connector;
use crate::asg::{AsgError, AutoScaling};
use crate::aws::{AwsAutoScaling, AwsSettings};

/// Ends a test that would otherwise wait for the SDK's 10 s attempt timeout.
const NO_HANG: Duration = Duration::from_secs(5);

/// What the server does with the n-th request it reads; the last reply repeats.
#[derive(Debug, Clone)]
enum Reply {
    /// Answer these raw bytes and keep the connection open for the next request.
    Answer(String),
    /// Answer, then close the connection (as a server closing an idle connection).
    AnswerAndClose(String),
    /// Close the connection without answering: the request may have been applied.
    Close,
    /// Keep the connection open and never answer.
    Silence,
}

#[derive(Debug, Default)]
struct Seen {
    requests: Vec<String>,
    connections: usize,
}

/// Picks the reply to the n-th request (from 0), given its head and body.
type Route = Arc<dyn Fn(usize, &str) -> Reply + Send + Sync>;

struct Server {
    url: String,
    seen: Arc<Mutex<Seen>>,
}

impl Server {
    /// Replies in order; the last one repeats.
    async fn start(replies: Vec<Reply>) -> Server {
        Server::route(move |n, _| replies[n.min(replies.len() - 1)].clone()).await
    }

    async fn route(route: impl Fn(usize, &str) -> Reply + Send + Sync + 'static) -> Server {
        let route: Route = Arc::new(route);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                shared.lock().expect("seen").connections += 1;
                tokio::spawn(serve(stream, Arc::clone(&route), Arc::clone(&shared)));
            }
        });
        Server { url, seen }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().expect("seen").requests.clone()
    }

    fn connections(&self) -> usize {
        self.seen.lock().expect("seen").connections
    }
}

async fn serve(stream: TcpStream, route: Route, seen: Arc<Mutex<Seen>>) {
    let mut stream = BufReader::new(stream);
    while let Some(request) = read_request(&mut stream).await {
        let reply = {
            let mut seen = seen.lock().expect("seen");
            let reply = route(seen.requests.len(), &request);
            seen.requests.push(request);
            reply
        };
        match reply {
            Reply::Answer(raw) => stream.write_all(raw.as_bytes()).await.expect("answer"),
            Reply::AnswerAndClose(raw) => {
                stream.write_all(raw.as_bytes()).await.expect("answer");
                return;
            }
            Reply::Close => return,
            Reply::Silence => std::future::pending::<()>().await,
        }
    }
}

/// The request's head and body as text; `None` once the client closed the connection.
async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(head + &String::from_utf8_lossy(&body))
}

fn answer(status: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut raw = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n", body.len());
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw + "\r\n" + body
}

/// AWS's answer to a `SetDesiredCapacity` that went through.
fn set_desired_ok() -> Reply {
    Reply::Answer(answer(
        "200 OK",
        &[("content-type", "text/xml")],
        r#"<SetDesiredCapacityResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><ResponseMetadata><RequestId>7a62c49f-347e-4fc4-9331-000000000001</RequestId></ResponseMetadata></SetDesiredCapacityResponse>"#,
    ))
}

fn aws(server: &Server, max_attempts: u32) -> AwsAutoScaling {
    crate::tls::ensure_crypto_provider();
    let settings = AwsSettings {
        endpoint_url: None,
        max_attempts,
    };
    AwsAutoScaling::for_endpoint(&server.url, "us-east-1", &settings)
}

async fn set_desired(aws: &AwsAutoScaling) -> Result<(), AsgError> {
    tokio::time::timeout(NO_HANG, aws.set_desired_capacity("spot", 4))
        .await
        .expect("the SDK answered before its attempt timeout")
}

#[tokio::test]
async fn a_connection_closed_after_the_request_is_retried_and_the_change_goes_through() {
    let server = Server::start(vec![Reply::Close, set_desired_ok()]).await;
    set_desired(&aws(&server, 3))
        .await
        .expect("the retry got AWS's answer");
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests.iter().all(|r| r.contains("DesiredCapacity=4")));
}

#[tokio::test]
async fn without_retries_a_connection_closed_without_answer_is_a_transport_error() {
    let server = Server::start(vec![Reply::Close]).await;
    let error = set_desired(&aws(&server, 1)).await;
    assert!(
        matches!(error, Err(AsgError::Transport { .. })),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_connection_the_server_closed_after_answering_is_not_reused() {
    let server = Server::start(vec![Reply::AnswerAndClose(
        answer(
            "200 OK",
            &[("content-type", "text/xml")],
            r#"<SetDesiredCapacityResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></SetDesiredCapacityResponse>"#,
        ),
    )])
    .await;
    // One attempt: the second call must not need a retry to get past the dead connection.
    let aws = aws(&server, 1);
    set_desired(&aws).await.expect("first call");
    tokio::time::sleep(Duration::from_millis(200)).await;
    set_desired(&aws)
        .await
        .expect("second call, on a new connection");
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn a_malformed_answer_is_an_error_and_not_repeated() {
    let server = Server::start(vec![Reply::Answer("SMTP ready\r\n\r\n".to_string())]).await;
    let error = set_desired(&aws(&server, 3)).await;
    assert!(
        matches!(error, Err(AsgError::Transport { .. })),
        "{error:?}"
    );
    assert_eq!(
        server.requests().len(),
        1,
        "a garbled answer is not retried"
    );
}

#[tokio::test]
async fn a_redirect_is_an_answer_for_the_sdk_and_not_followed() {
    let server = Server::start(vec![
        Reply::Answer(answer("307 Temporary Redirect", &[("location", "/")], "")),
        set_desired_ok(),
    ])
    .await;
    let error = set_desired(&aws(&server, 3)).await;
    assert!(
        matches!(&error, Err(AsgError::Api { code, .. }) if code == "HTTP 307"),
        "{error:?}"
    );
    assert_eq!(
        server.requests().len(),
        1,
        "the signed request went nowhere else"
    );
}

/// IMDS as the instance-profile credentials provider uses it: a token, the role's name,
/// the role's credentials.
fn imds(_: usize, request: &str) -> Reply {
    const ROLE: &str = "/latest/meta-data/iam/security-credentials/";
    let line = request.lines().next().unwrap_or_default();
    let text =
        |body: &str| Reply::Answer(answer("200 OK", &[("content-type", "text/plain")], body));
    if line.starts_with("PUT /latest/api/token ") {
        return Reply::Answer(answer(
            "200 OK",
            &[("x-aws-ec2-metadata-token-ttl-seconds", "21600")],
            "token-a",
        ));
    }
    if !request.contains("x-aws-ec2-metadata-token: token-a\r\n") {
        return Reply::Answer(answer("401 Unauthorized", &[], ""));
    }
    if line.starts_with(&format!("GET {ROLE} ")) {
        text("spot-guard-node")
    } else if line.starts_with(&format!("GET {ROLE}spot-guard-node ")) {
        text(
            r#"{"Code":"Success","LastUpdated":"2026-12-02T08:00:00Z","Type":"AWS-HMAC","AccessKeyId":"ASIAFROMIMDS","SecretAccessKey":"secret","Token":"session","Expiration":"2099-01-01T00:00:00Z"}"#,
        )
    } else {
        Reply::Answer(answer("404 Not Found", &[], ""))
    }
}

#[tokio::test]
async fn instance_profile_credentials_come_over_this_client() {
    use aws_config::imds::credentials::ImdsCredentialsProvider;
    use aws_config::provider_config::ProviderConfig;
    use aws_sdk_autoscaling::config::ProvideCredentials;

    crate::tls::ensure_crypto_provider();
    let server = Server::route(imds).await;
    let config = ProviderConfig::without_region().with_http_client(super::https_client());
    let client = aws_config::imds::Client::builder()
        .endpoint(&server.url)
        .expect("endpoint")
        .configure(&config)
        .build();
    let provider = ImdsCredentialsProvider::builder()
        .imds_client(client)
        .configure(&config)
        .build();
    let credentials = tokio::time::timeout(NO_HANG, provider.provide_credentials())
        .await
        .expect("IMDS answered")
        .expect("credentials");
    assert_eq!(credentials.access_key_id(), "ASIAFROMIMDS");
    assert_eq!(credentials.session_token(), Some("session"));
}

fn connector(read: Option<Duration>) -> Connector {
    crate::tls::ensure_crypto_provider();
    Connector {
        connect: Some(Duration::from_secs(1)),
        read,
        client: Arc::default(),
    }
}

fn post(url: &str, headers: &[(&str, &str)]) -> HttpRequest {
    let mut request = hyper::Request::builder().method("POST").uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    HttpRequest::try_from(request.body(SdkBody::from("Action=Test")).expect("request"))
        .expect("request")
}

async fn call(connector: &Connector, request: HttpRequest) -> Result<HttpResponse, ConnectorError> {
    tokio::time::timeout(NO_HANG, connector.call(request))
        .await
        .expect("the connector answered")
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_timeout_at_the_read_timeout() {
    let server = Server::start(vec![Reply::Silence]).await;
    let error = call(
        &connector(Some(Duration::from_millis(300))),
        post(&server.url, &[]),
    )
    .await
    .expect_err("no answer");
    assert!(error.is_timeout(), "{error:?}");
}

#[tokio::test]
async fn a_refused_connection_is_an_io_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    drop(listener);
    let error = call(&connector(None), post(&url, &[]))
        .await
        .expect_err("nothing listens");
    assert!(error.is_io(), "{error:?}");
}

#[tokio::test]
async fn status_repeated_headers_and_body_pass_through_both_ways() {
    let server = Server::start(vec![Reply::Answer(answer(
        "503 Service Unavailable",
        &[("x-amz-test", "one"), ("x-amz-test", "two")],
        "<Error>busy</Error>",
    ))])
    .await;
    let request = post(&server.url, &[("x-amz-sent", "a"), ("x-amz-sent", "b")]);
    let response = call(&connector(None), request).await.expect("answer");

    assert_eq!(response.status().as_u16(), 503);
    let values: Vec<&str> = response.headers().get_all("x-amz-test").collect();
    assert_eq!(values, ["one", "two"]);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"<Error>busy</Error>");
    let sent = &server.requests()[0];
    assert!(
        sent.contains("x-amz-sent: a\r\n") && sent.contains("x-amz-sent: b\r\n"),
        "{sent}"
    );
    assert!(sent.ends_with("\r\n\r\nAction=Test"), "{sent}");
}
