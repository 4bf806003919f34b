//! The transport against scripted servers: framing, kept and replaced connections, timeouts.

use super::*;

#[test]
fn base_url_is_checked_and_trailing_slash_dropped() {
    let base = |url: &str| parse_base_url(url).map(|(base, _)| base);
    assert_eq!(
        base("http://169.254.169.254/").ok().as_deref(),
        Some("http://169.254.169.254")
    );
    assert!(matches!(
        base("169.254.169.254"),
        Err(ImdsError::InvalidUrl { .. })
    ));
    assert!(matches!(
        base("ftp://169.254.169.254"),
        Err(ImdsError::InvalidUrl { .. })
    ));
}

/// The head as it goes on the wire.
fn head(transport: &Transport, method: Method, path: &str) -> String {
    check_request(path, None).expect("valid request");
    let mut output = Vec::new();
    let target = (transport.prefix.as_str(), path);
    write_head(&mut output, method, &transport.host, target, None);
    String::from_utf8_lossy(&output).into_owned()
}

#[test]
fn requests_carry_the_host_and_origin_form_paths() {
    let (_, url) = parse_base_url("http://127.0.0.1:1338/proxy/").expect("valid");
    let transport = Transport::new(&url, Duration::from_secs(1));
    assert_eq!(transport.address, "127.0.0.1:1338");
    for path in ["/latest/api/token", "/latest/meta-data/instance-id"] {
        let head = head(&transport, Method::Get, path);
        assert!(
            head.starts_with(&format!("GET /proxy{path} HTTP/1.1\r\n")),
            "{head}"
        );
        assert!(head.contains("\r\nhost: 127.0.0.1:1338\r\n"), "{head}");
        assert_eq!(head.matches("host:").count(), 1, "{head}");
    }
    let (_, url) = parse_base_url("http://169.254.169.254").expect("valid");
    let transport = Transport::new(&url, Duration::from_secs(1));
    assert_eq!(transport.address, "169.254.169.254:80");
    let head = head(&transport, Method::Get, "/x");
    assert!(head.starts_with("GET /x HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nhost: 169.254.169.254\r\n"), "{head}");
}

#[test]
fn the_token_request_says_its_body_is_empty() {
    let (_, url) = parse_base_url("http://169.254.169.254").expect("valid");
    let transport = Transport::new(&url, Duration::from_secs(1));
    let head = head(&transport, Method::Put, "/latest/api/token");
    assert!(head.contains("\r\ncontent-length: 0\r\n"), "{head}");
    assert!(!head.contains("chunked"), "{head}");
}

/// A server on a thread of its own that answers each connection's requests with the
/// next of `answers` (raw bytes) and closes the connection after those marked `true`.
fn scripted_server(
    answers: Vec<(&'static str, bool)>,
) -> (Transport, std::thread::JoinHandle<u32>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let server = std::thread::spawn(move || {
        let mut answers = answers.into_iter();
        let mut connections = 0;
        'connections: while answers.len() > 0 {
            let Ok((mut stream, _)) = listener.accept() else {
                break;
            };
            connections += 1;
            let mut buffer = [0u8; 4096];
            loop {
                let mut read = 0;
                while !buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer[read..]) {
                        Ok(0) | Err(_) => continue 'connections,
                        Ok(n) => read += n,
                    }
                }
                let Some((answer, close)) = answers.next() else {
                    break 'connections;
                };
                stream.write_all(answer.as_bytes()).expect("answer");
                if close {
                    continue 'connections;
                }
            }
        }
        connections
    });
    let (_, url) = parse_base_url(&url).expect("valid");
    let transport = Transport::new(&url, Duration::from_secs(2));
    (transport, server)
}

fn body(transport: &Transport) -> Result<String, String> {
    let answer = transport.send(Method::Get, "/x", None, None)?;
    Ok(String::from_utf8_lossy(answer.body()).into_owned())
}

/// One GET per scripted answer: the bodies read, and how many connections they took.
fn bodies(answers: Vec<(&'static str, bool)>) -> (Vec<Result<String, String>>, u32) {
    let reads = answers.len();
    let (transport, server) = scripted_server(answers);
    let bodies = (0..reads).map(|_| body(&transport)).collect();
    drop(transport);
    (bodies, server.join().expect("server"))
}

#[test]
fn a_connection_that_cannot_carry_another_answer_is_replaced_without_a_failed_read() {
    for (ended_by, first) in [
        // Closed after its answer, as IMDS may close an idle connection.
        (
            "a close",
            ("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst", true),
        ),
        // HTTP/1.0 without keep-alive: the server may close it at any time.
        (
            "HTTP/1.0",
            ("HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nfirst", false),
        ),
        // Both framings at once: read as chunked, the connection not trusted again.
        (
            "two framings",
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 99\r\n\r\n5\r\nfirst\r\n0\r\n\r\n",
                false,
            ),
        ),
    ] {
        let (bodies, connections) = bodies(vec![
            first,
            ("HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond", false),
        ]);
        let expected = [Ok("first".to_string()), Ok("second".to_string())];
        assert_eq!(bodies, expected, "ended by {ended_by}");
        assert_eq!(connections, 2, "ended by {ended_by}");
    }
}

#[test]
fn bodies_are_framed_as_rfc_9112_says() {
    let (bodies, connections) = bodies(vec![
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            false,
        ),
        // An interim answer is read past.
        (
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            false,
        ),
        // Trailers after the last chunk.
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nwith\r\n0\r\nx-trailer: 1\r\n\r\n",
            false,
        ),
        ("HTTP/1.1 204 No Content\r\n\r\n", false),
        ("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", false),
        (
            "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end",
            true,
        ),
    ]);
    let expected =
        ["abcde", "ok", "with", "", "", "until the end"].map(|body| Ok(body.to_string()));
    assert_eq!(bodies, expected);
    assert_eq!(connections, 1, "kept until the close");
}

#[test]
fn an_answer_cut_short_is_an_error_and_its_connection_is_not_kept() {
    let (transport, server) = scripted_server(vec![
        ("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", true),
        ("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext", false),
    ]);
    let error = body(&transport).expect_err("cut short");
    assert!(
        error.contains("closed before the answer was complete"),
        "{error}"
    );
    assert_eq!(body(&transport).as_deref(), Ok("next"));
    drop(transport);
    assert_eq!(server.join().expect("server"), 2);
}

#[test]
fn socket_timeouts_follow_the_deadline_within_the_slack() {
    let mut current = Duration::ZERO;
    let mut sets = Vec::new();
    let mut bound_to = |deadline: Instant, current: &mut Duration| {
        bound(deadline, current, |left| {
            sets.push(left);
            Ok(())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    bound_to(deadline, &mut current).expect("in time");
    bound_to(deadline, &mut current).expect("in time");
    // The next request's deadline is within the slack of the timeout already set.
    bound_to(deadline + TIMEOUT_SLACK / 2, &mut current).expect("in time");
    // A later read of a request with less time left sets a shorter timeout.
    bound_to(deadline - Duration::from_secs(1), &mut current).expect("in time");
    assert_eq!(sets.len(), 2, "{sets:?}");
    assert!(sets[0] > Duration::from_millis(1990), "{sets:?}");
    assert!(sets[1] <= Duration::from_secs(1), "{sets:?}");
    let passed = Instant::now() - Duration::from_millis(1);
    let error = bound(passed, &mut current, |_| Ok(())).expect_err("past the deadline");
    assert_eq!(io_message(&error), "timed out");
}

#[test]
fn malformed_answers_are_errors() {
    let (transport, server) = scripted_server(vec![
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
            true,
        ),
        ("HTTP/1.1 200 OK\r\ncontent-length: two\r\n\r\nab", true),
        ("not HTTP at all\r\n\r\n", true),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
            true,
        ),
    ]);
    for expected in [
        "conflicting content-length",
        "malformed content-length",
        "malformed answer",
        "malformed chunk size",
    ] {
        let error = body(&transport).expect_err(expected);
        assert!(error.contains(expected), "{error}");
    }
    drop(transport);
    assert_eq!(server.join().expect("server"), 4, "none kept");
}

#[test]
fn the_answer_gives_the_header_asked_for_by_name_in_any_case() {
    let (transport, server) = scripted_server(vec![
        (
            "HTTP/1.1 200 OK\r\nX-Aws-Ec2-Metadata-Token-Ttl-Seconds: 21600\r\ncontent-length: 5\r\n\r\ntoken",
            false,
        ),
        ("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", false),
    ]);
    let wanted = Some("x-aws-ec2-metadata-token-ttl-seconds");
    let answer = transport
        .send(Method::Put, "/t", None, wanted)
        .expect("answer");
    assert_eq!(answer.header(), Some("21600"));
    assert_eq!(answer.text(), "token");
    let answer = transport.send(Method::Get, "/t", None, Some("missing"));
    assert_eq!(answer.expect("answer").header(), None);
    drop(transport);
    server.join().expect("server");
}

#[test]
fn a_path_or_header_that_would_break_the_head_is_refused_before_sending() {
    let (_, url) = parse_base_url("http://127.0.0.1:1").expect("valid");
    let transport = Transport::new(&url, Duration::from_secs(1));
    for (path, header) in [
        ("/a b", None),
        ("relative", None),
        ("/x", Some(("x-token", &b"a\r\nx-evil: 1"[..]))),
        ("/x", Some(("bad name", &b"v"[..]))),
    ] {
        let error = transport
            .send(Method::Get, path, header, None)
            .expect_err("refused");
        assert!(error.starts_with("invalid"), "{error}");
    }
}
