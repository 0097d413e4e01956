//! The agent on loopback: the real `tpr-agent` binary, real app servers, the
//! real runner-side client (`tpr::tunnel`) and real workstation servers.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tpr::tunnel::{self, HeaderMatch, InterceptSpec, Mechanism, Notice, PreviewToken, TunnelError};

use support::*;

const REVERT: Duration = Duration::from_secs(3);

fn tcp_spec(name: &str, app_port: u16, target: u16) -> InterceptSpec {
    InterceptSpec {
        name: name.into(),
        app_port,
        mechanism: Mechanism::Tcp,
        target: ([127, 0, 0, 1], target).into(),
        wait: std::time::Duration::ZERO,
        preview: None,
    }
}

fn http_spec(name: &str, app_port: u16, target: u16) -> InterceptSpec {
    InterceptSpec {
        name: name.into(),
        app_port,
        mechanism: Mechanism::Http {
            headers: vec![],
            path_prefix: None,
        },
        target: ([127, 0, 0, 1], target).into(),
        wait: std::time::Duration::ZERO,
        preview: None,
    }
}

/// An app and a workstation HTTP server, the agent in front of the app, and
/// alice's http intercept `orders` (the default match) sending to the
/// workstation.
async fn alice_intercepts_orders() -> (Server, Server, Agent, tunnel::Session) {
    let app = http_server("app").await;
    let workstation = http_server("workstation").await;
    let agent = Agent::start(&[app.port()], &[]).await;
    let session = agent.session("alice").await;
    session
        .create_intercept(http_spec("orders", app.port(), workstation.port()))
        .await
        .unwrap();
    (app, workstation, agent, session)
}

#[tokio::test]
async fn without_intercepts_connections_pass_through_to_the_app() {
    let app = tcp_server("app").await;
    let agent = Agent::start(&[app.port()], &[]).await;
    let (mut tcp, line) = first_line(agent.port_for(app.port())).await;
    assert_eq!(line, "app");
    tcp.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    within("read", tcp.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn a_tcp_intercept_takes_new_connections_until_its_session_is_lost() {
    let app = tcp_server("app").await;
    let workstation = tcp_server("workstation").await;
    let agent = Agent::start(&[app.port()], &[]).await;
    let front = agent.port_for(app.port());

    let session = agent.session("alice").await;
    session
        .create_intercept(tcp_spec("orders", app.port(), workstation.port()))
        .await
        .unwrap();
    let (mut held, line) = first_line(front).await;
    assert_eq!(line, "workstation");
    held.write_all(b"through the tunnel").await.unwrap();
    let mut buf = [0u8; 18];
    within("read", held.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"through the tunnel");

    // The runner goes away: traffic reverts, the handed-off connection closes.
    drop(session);
    eventually(REVERT, "new connections reach the app again", || async {
        first_line(front).await.1 == "app"
    })
    .await;
    let closed = tokio::time::timeout(Duration::from_secs(3), held.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "held connection closed: {closed:?}"
    );
}

#[tokio::test]
async fn a_second_tcp_intercept_on_a_port_is_refused_naming_the_holder() {
    let app = tcp_server("app").await;
    let agent = Agent::start(&[app.port()], &[]).await;
    let alice = agent.session("alice").await;
    let bob = agent.session("bob").await;
    alice
        .create_intercept(tcp_spec("orders", app.port(), 1))
        .await
        .unwrap();

    let err = bob
        .create_intercept(tcp_spec("orders", app.port(), 2))
        .await
        .unwrap_err();
    let TunnelError::Refused { reason, .. } = &err else {
        panic!("expected a refusal, got {err}")
    };
    assert!(
        reason.contains("alice@test") && reason.contains("orders"),
        "{reason}"
    );
    let err = bob
        .create_intercept(http_spec("orders", app.port(), 2))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("alice@test"), "{err}");

    // Once alice removes hers, bob gets the port.
    alice.remove_intercept("orders").await.unwrap();
    bob.create_intercept(tcp_spec("orders", app.port(), 2))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_intercept_on_a_port_the_agent_does_not_forward_is_refused() {
    let app = tcp_server("app").await;
    let agent = Agent::start(&[app.port()], &[]).await;
    let session = agent.session("alice").await;
    let err = session
        .create_intercept(tcp_spec("x", 1, 2))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not forwarded"), "{err}");
}

#[tokio::test]
async fn http_requests_are_routed_one_by_one_on_one_keep_alive_connection() {
    let (app, _workstation, agent, session) = alice_intercepts_orders().await;

    let id = intercept_id("alice", "orders");
    let mine = [("x-telepresence-intercept-id", id.as_str())];
    let mut client = H1::connect(agent.port_for(app.port())).await;
    for round in 0..3 {
        assert_eq!(client.get("/a", &[]).await.1, "app GET /a", "round {round}");
        assert_eq!(
            client.get("/b", &mine).await.1,
            "workstation GET /b",
            "round {round}"
        );
    }
    let other = [("x-telepresence-intercept-id", "id-bob:orders")];
    assert_eq!(client.get("/c", &other).await.1, "app GET /c");

    // A large body streams through the tunnel and back.
    let body = Bytes::from(vec![7u8; 8 << 20]);
    let resp = client
        .send(request("POST", "/echo", &mine, body.clone()))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed.len(), body.len());
    assert_eq!(client.get("/d", &[]).await.1, "app GET /d");

    // The session ends: on the same connection, matching requests go to
    // the app again.
    drop(session);
    let start = std::time::Instant::now();
    while client.get("/e", &mine).await.1 != "app GET /e" {
        assert!(
            start.elapsed() < REVERT,
            "intercepted requests reach the app again"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A pooled keep-alive connection (an ingress, a mesh sidecar) is usually
/// opened before anyone starts a personal intercept. On a port made for http
/// intercepts it is routed request by request all the same; on a plain port
/// it stays a byte relay to the app.
#[tokio::test]
async fn a_connection_opened_before_a_personal_intercept_is_routed_by_it() {
    let app = http_server("app").await;
    let workstation = http_server("workstation").await;
    let id = intercept_id("alice", "orders");
    let mine = [("x-telepresence-intercept-id", id.as_str())];
    for (agent, routed) in [
        (Agent::start_http(&[app.port()]).await, true),
        (Agent::start(&[app.port()], &[]).await, false),
    ] {
        let mut client = H1::connect(agent.port_for(app.port())).await;
        assert_eq!(client.get("/a", &mine).await.1, "app GET /a");
        let session = agent.session("alice").await;
        session
            .create_intercept(http_spec("orders", app.port(), workstation.port()))
            .await
            .unwrap();
        let want = if routed { "workstation" } else { "app" };
        assert_eq!(client.get("/b", &mine).await.1, format!("{want} GET /b"));
        assert_eq!(client.get("/c", &[]).await.1, "app GET /c");
        // A new connection is routed either way.
        let mut fresh = H1::connect(agent.port_for(app.port())).await;
        assert_eq!(fresh.get("/d", &mine).await.1, "workstation GET /d");
    }
}

/// Apps close idle keep-alive connections (Node after 5 s, Go on its idle
/// timeout); on an http port the agent holds the client's connection and
/// dials the app again, so a close that races the next request never
/// becomes a 502. Here the app closes every connection after one answer,
/// without saying so.
#[tokio::test]
async fn an_app_closing_its_keep_alive_connections_costs_no_request() {
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = app.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = app.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tcp.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let agent = Agent::start_http(&[app_port]).await;
    let mut client = H1::connect(agent.port_for(app_port)).await;
    for round in 0..300 {
        let (status, body) = client.get("/", &[]).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "ok"),
            "round {round}"
        );
    }
}

/// Through a port made for http intercepts the app's exchange stays as it
/// was: header names keep their case both ways and no header is added.
#[tokio::test]
async fn an_http_port_passes_requests_and_answers_unchanged() {
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = app.local_addr().unwrap().port();
    // Answers each request with its head as received.
    tokio::spawn(async move {
        let (mut tcp, _) = app.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            within("read", tcp.read_exact(&mut byte)).await.unwrap();
            head.push(byte[0]);
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\nX-App-Header: Yes\r\nContent-Length: {}\r\n\r\n",
            head.len()
        );
        tcp.write_all(answer.as_bytes()).await.unwrap();
        tcp.write_all(&head).await.unwrap();
    });
    let agent = Agent::start_http(&[app_port]).await;
    let mut tcp = TcpStream::connect(agent.port_for(app_port)).await.unwrap();
    tcp.write_all(b"GET /x HTTP/1.1\r\nHost: app\r\nX-Request-Case: Kept\r\n\r\n")
        .await
        .unwrap();
    // Reads the head, then as many bytes as its Content-Length says.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let (head, length) = loop {
        let n = within("read", tcp.read(&mut buf)).await.unwrap();
        assert!(n > 0, "answer cut: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, _)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .expect("a Content-Length")
                .parse::<usize>()
                .unwrap();
            break (head.to_owned(), length);
        }
    };
    while answer.len() < head.len() + 4 + length {
        let n = within("read", tcp.read(&mut buf)).await.unwrap();
        assert!(n > 0, "body cut");
        answer.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&answer[head.len() + 4..]).into_owned();
    assert!(head.contains("\r\nX-App-Header: Yes"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("date:"), "{head}");
    assert!(body.contains("\r\nHost: app\r\n"), "{body}");
    assert!(body.contains("\r\nX-Request-Case: Kept\r\n"), "{body}");
}

#[tokio::test]
async fn http2_requests_are_routed_one_by_one_on_one_connection() {
    let (app, _workstation, agent, _session) = alice_intercepts_orders().await;
    let id = intercept_id("alice", "orders");
    let client = H2::connect(agent.port_for(app.port())).await;
    let mut calls = Vec::new();
    for i in 0..10 {
        let mut client = client.clone();
        let id = id.clone();
        calls.push(tokio::spawn(async move {
            let path = format!("/r{i}");
            if i % 2 == 0 {
                client
                    .get(&path, &[("x-telepresence-intercept-id", &id)])
                    .await
            } else {
                client.get(&path, &[]).await
            }
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let who = if i % 2 == 0 { "workstation" } else { "app" };
        assert_eq!(body, format!("{who} GET /r{i}"));
    }
}

#[tokio::test]
async fn two_personal_intercepts_share_a_port() {
    let app = http_server("app").await;
    let alice_ws = http_server("alice").await;
    let bob_ws = http_server("bob").await;
    let agent = Agent::start(&[app.port()], &[]).await;
    let alice = agent.session("alice").await;
    let bob = agent.session("bob").await;
    alice
        .create_intercept(http_spec("orders", app.port(), alice_ws.port()))
        .await
        .unwrap();
    bob.create_intercept(http_spec("orders", app.port(), bob_ws.port()))
        .await
        .unwrap();

    let mut client = H1::connect(agent.port_for(app.port())).await;
    let a = intercept_id("alice", "orders");
    let b = intercept_id("bob", "orders");
    assert_eq!(
        client
            .get("/", &[("x-telepresence-intercept-id", &a)])
            .await
            .1,
        "alice GET /"
    );
    assert_eq!(
        client
            .get("/", &[("x-telepresence-intercept-id", &b)])
            .await
            .1,
        "bob GET /"
    );
    assert_eq!(client.get("/", &[]).await.1, "app GET /");

    // Bob leaves; alice keeps hers, bob's requests fall back to the app.
    drop(bob);
    eventually(REVERT, "bob's requests reach the app", || async {
        let mut c = H1::connect(agent.port_for(app.port())).await;
        c.get("/", &[("x-telepresence-intercept-id", &b)]).await.1 == "app GET /"
    })
    .await;
    assert_eq!(
        client
            .get("/", &[("x-telepresence-intercept-id", &a)])
            .await
            .1,
        "alice GET /"
    );
}

#[tokio::test]
async fn header_regex_and_path_prefix_select_requests() {
    let app = http_server("app").await;
    let workstation = http_server("workstation").await;
    let agent = Agent::start(&[app.port()], &[]).await;
    let session = agent.session("alice").await;
    let spec = InterceptSpec {
        mechanism: Mechanism::Http {
            headers: vec![HeaderMatch::Regex {
                name: "X-Dev".into(),
                pattern: "al(ice|ex)".into(),
            }],
            path_prefix: Some("/api/".into()),
        },
        ..http_spec("orders", app.port(), workstation.port())
    };
    session.create_intercept(spec).await.unwrap();
    let mut client = H1::connect(agent.port_for(app.port())).await;
    assert_eq!(
        client.get("/api/x", &[("x-dev", "alex")]).await.1,
        "workstation GET /api/x"
    );
    assert_eq!(
        client.get("/api/x", &[("x-dev", "alexander")]).await.1,
        "app GET /api/x"
    );
    assert_eq!(
        client.get("/web", &[("x-dev", "alice")]).await.1,
        "app GET /web"
    );
    assert_eq!(client.get("/api/x", &[]).await.1, "app GET /api/x");
}

#[tokio::test]
async fn a_refused_workstation_gets_503_naming_the_intercept_reported_once() {
    let app = http_server("app").await;
    let agent = Agent::start(&[app.port()], &[]).await;
    let mut session = agent.session("alice").await;
    let down = closed_port();
    session
        .create_intercept(http_spec("orders", app.port(), down))
        .await
        .unwrap();

    let id = intercept_id("alice", "orders");
    let mut client = H1::connect(agent.port_for(app.port())).await;
    for _ in 0..5 {
        let (status, body) = client
            .get("/", &[("x-telepresence-intercept-id", &id)])
            .await;
        // 503: the process may be (re)starting; sending again may succeed.
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("\"orders\"") && body.contains(&down.to_string()),
            "{body}"
        );
    }
    assert_eq!(client.get("/", &[]).await.1, "app GET /");
    let first = session.try_notice();
    assert!(
        matches!(&first, Some(Notice::WorkstationUnreachable { intercept, target, .. })
            if intercept == "orders" && target.port() == down),
        "{first:?}"
    );
    assert_eq!(session.try_notice(), None, "reported once, not per request");

    // tcp: the connection is closed.
    let tcp_app = tcp_server("app").await;
    let tcp_agent = Agent::start(&[tcp_app.port()], &[]).await;
    let tcp_session = tcp_agent.session("alice").await;
    tcp_session
        .create_intercept(tcp_spec("raw", tcp_app.port(), down))
        .await
        .unwrap();
    let (_, line) = first_line(tcp_agent.port_for(tcp_app.port())).await;
    assert_eq!(line, "", "closed without data");
}

#[tokio::test]
async fn websocket_upgrades_are_routed_by_headers_then_relayed() {
    let (app, _workstation, agent, _session) = alice_intercepts_orders().await;
    let id = intercept_id("alice", "orders");
    for (headers, who) in [
        (
            vec![("x-telepresence-intercept-id", id.as_str())],
            "workstation",
        ),
        (vec![], "app"),
    ] {
        let mut client = H1::connect(agent.port_for(app.port())).await;
        let mut h = headers.clone();
        h.extend([("connection", "upgrade"), ("upgrade", "websocket")]);
        let resp = client.send(request("GET", "/ws", &h, Bytes::new())).await;
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        let upgraded = hyper::upgrade::on(resp).await.unwrap();
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        let mut line = vec![0u8; format!("{who} upgraded\n").len()];
        within("read", io.read_exact(&mut line)).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&line), format!("{who} upgraded\n"));
        io.write_all(b"frame").await.unwrap();
        let mut echo = [0u8; 5];
        within("read", io.read_exact(&mut echo)).await.unwrap();
        assert_eq!(&echo, b"frame");
    }
}

#[tokio::test]
async fn tls_on_an_http_intercepted_port_goes_to_the_app_and_is_reported() {
    let app = tcp_server("app").await;
    let agent = Agent::start(&[app.port()], &[]).await;
    let mut session = agent.session("alice").await;
    session
        .create_intercept(http_spec("orders", app.port(), 1))
        .await
        .unwrap();

    let mut tcp = TcpStream::connect(agent.port_for(app.port()))
        .await
        .unwrap();
    let hello = b"\x16\x03\x01\x00\x05hello";
    tcp.write_all(hello).await.unwrap();
    let mut got = vec![0u8; 4 + hello.len()];
    within("read", tcp.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got[..4], b"app\n");
    assert_eq!(&got[4..], hello, "bytes reach the app untouched");
    let notice = tokio::time::timeout(Duration::from_secs(3), session.next_notice())
        .await
        .unwrap();
    assert!(
        matches!(notice, Some(Notice::TlsPassthrough { ref intercept, .. }) if intercept == "orders"),
        "{notice:?}"
    );
}

#[tokio::test]
async fn to_pod_relays_a_local_port_to_the_pod() {
    let app = tcp_server("app").await;
    let sidecar = tcp_server("sidecar").await;
    let agent = Agent::start(&[app.port()], &[]).await;
    let relay = tunnel::ToPod::start(
        agent.channel().await,
        ([127, 0, 0, 1], 0).into(),
        sidecar.port(),
    )
    .await
    .unwrap();
    let (mut tcp, line) = first_line(relay.local_addr()).await;
    assert_eq!(line, "sidecar");
    tcp.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    within("read", tcp.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"hi");

    // Nothing there: the local connection closes.
    let nothing = tunnel::ToPod::start(
        agent.channel().await,
        ([127, 0, 0, 1], 0).into(),
        closed_port(),
    )
    .await
    .unwrap();
    assert_eq!(first_line(nothing.local_addr()).await.1, "");
}

/// The byte-stream calls skip tonic's codec on both ends, yet they are plain
/// gRPC on the wire: the generated client, with tonic's own encoder and
/// decoder, speaks to the agent's handler.
#[tokio::test]
async fn the_byte_stream_calls_are_plain_grpc_on_the_wire() {
    use tpr_schema::proto::{Chunk, PORT_METADATA, agent_client::AgentClient};

    let app = tcp_server("app").await;
    let sidecar = tcp_server("sidecar").await;
    let agent = Agent::start(&[app.port()], &[]).await;
    let sent = ["hel", "lo ", "world"].map(|s| Chunk {
        data: Bytes::from_static(s.as_bytes()),
    });
    let mut request = tonic::Request::new(tokio_stream::iter(sent));
    request
        .metadata_mut()
        .insert(PORT_METADATA, sidecar.port().to_string().parse().unwrap());
    let mut replies = AgentClient::new(agent.channel().await)
        .dial_pod(request)
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(chunk) = replies.message().await.unwrap() {
        got.extend_from_slice(&chunk.data);
    }
    // The sidecar greets, echoes, and closes at our half-close.
    assert_eq!(String::from_utf8(got).unwrap(), "sidecar\nhello world");

    // A refusal arrives as a gRPC status.
    let mut request = tonic::Request::new(tokio_stream::iter(Vec::<Chunk>::new()));
    request
        .metadata_mut()
        .insert(PORT_METADATA, closed_port().to_string().parse().unwrap());
    let status = AgentClient::new(agent.channel().await)
        .dial_pod(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("nothing answers"), "{status:?}");
}

#[tokio::test]
async fn the_env_report_is_the_apps_environment() {
    let app = tcp_server("app").await;
    let agent = Agent::start(
        &[app.port()],
        &[
            ("TPR_APP_DATABASE_URL", "postgres://db/orders"),
            ("TPR_APP_MODE", "dev"),
            ("TPR_AGENT_ENV_PREFIX", "TPR_APP_"),
            ("TPR_AGENT_POD_NAME", "orders-1"),
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("REDIS_PORT_6379_TCP_ADDR", "10.96.0.7"),
            ("PATH", "/nowhere"),
            ("HOME", "/home/agent"),
        ],
    )
    .await;
    let env = tunnel::get_env(agent.channel().await).await.unwrap();
    let got: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        got,
        [
            ("DATABASE_URL", "postgres://db/orders"),
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("MODE", "dev"),
            ("REDIS_PORT_6379_TCP_ADDR", "10.96.0.7"),
        ]
    );
}

#[tokio::test]
async fn a_silent_session_ends_within_three_seconds() {
    // A network cut: the runner's connection stays open but nothing flows.
    let app = tcp_server("app").await;
    let workstation = tcp_server("workstation").await;
    let agent = Agent::start(&[app.port()], &[]).await;
    let cut = Freezer::start(agent.grpc).await;
    let channel = tunnel::connect(cut.addr).await.unwrap();
    let session = tunnel::Session::open(channel, hello("alice"))
        .await
        .unwrap();
    session
        .create_intercept(tcp_spec("orders", app.port(), workstation.port()))
        .await
        .unwrap();
    let front = agent.port_for(app.port());
    assert_eq!(first_line(front).await.1, "workstation");
    cut.freeze();
    let took = eventually(REVERT, "the app answers again after the cut", || async {
        first_line(front).await.1 == "app"
    })
    .await;
    eprintln!("reverted {took:?} after the cut");
    drop(session);
}

#[test]
fn the_ready_probe_reports_the_agent_state() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(tcp_server("app"));
    let agent = rt.block_on(Agent::start(&[app.port()], &[]));
    let probe = |port: u16| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tpr-agent"))
            .arg("ready")
            .env_clear()
            .env("TPR_AGENT_GRPC_PORT", port.to_string())
            .output()
            .unwrap()
    };
    let ok = probe(agent.grpc.port());
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ready"));
    let down = probe(closed_port());
    assert_eq!(down.status.code(), Some(1), "{down:?}");
}

#[test]
fn bad_settings_exit_64_naming_the_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tpr-agent"))
        .env_clear()
        .env("TPR_AGENT_FORWARDS", "9901:8080")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TPR_AGENT_FORWARDS"),
        "{out:?}"
    );
}

#[tokio::test]
async fn killing_the_runner_process_reverts_within_three_seconds() {
    use tokio::io::AsyncBufReadExt;
    let app = tcp_server("app").await;
    let workstation = tcp_server("workstation").await;
    let agent = Agent::start(&[app.port()], &[]).await;
    let spec = format!("{},{},{}", agent.grpc, app.port(), workstation.port());
    let mut runner = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "helper_runner", "--nocapture"])
        .env("TPR_TEST_RUNNER", spec)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(runner.stdout.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.contains("INTERCEPTING") {
            break;
        }
    }
    let front = agent.port_for(app.port());
    let (mut held, line) = first_line(front).await;
    assert_eq!(line, "workstation");

    runner.start_kill().unwrap(); // SIGKILL: no goodbye
    runner.wait().await.unwrap();
    let took = eventually(
        REVERT,
        "the app answers again after the runner died",
        || async { first_line(front).await.1 == "app" },
    )
    .await;
    eprintln!("reverted {took:?} after the runner died");
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(3), held.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "handed-off connection closed: {closed:?}"
    );
}

/// The runner process of the test above: holds a tcp intercept until killed.
#[test]
#[ignore = "helper: run as a process by killing_the_runner_process_reverts_within_three_seconds"]
fn helper_runner() {
    let Ok(spec) = std::env::var("TPR_TEST_RUNNER") else {
        return;
    };
    let parts: Vec<&str> = spec.split(',').collect();
    let grpc: std::net::SocketAddr = parts[0].parse().unwrap();
    let (app_port, target): (u16, u16) = (parts[1].parse().unwrap(), parts[2].parse().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let channel = tunnel::connect(grpc).await.unwrap();
        let session = tunnel::Session::open(channel, hello("doomed"))
            .await
            .unwrap();
        session
            .create_intercept(tcp_spec("orders", app_port, target))
            .await
            .unwrap();
        println!("\nINTERCEPTING");
        std::future::pending::<()>().await;
    });
}

// Preview links: a token in the query parameter or cookie `tpr_preview`
// routes to its intercept's workstation whatever the headers.

const ALICE_TOKEN: &str = "alice-preview-0123456789abcdef";
const BOB_TOKEN: &str = "bob-preview-0123456789abcdefgh";

/// An http intercept (the default header match) with a preview token.
fn previewed(name: &str, app_port: u16, target: u16, token: &str, secure: bool) -> InterceptSpec {
    InterceptSpec {
        preview: Some(PreviewToken {
            token: token.into(),
            secure,
        }),
        ..http_spec(name, app_port, target)
    }
}

/// An app, a workstation, the agent, and alice's http intercept `orders`
/// with a preview token.
async fn alice_previews_orders(secure: bool) -> (Server, Server, Agent, tunnel::Session) {
    let app = http_server("app").await;
    let workstation = http_server("workstation").await;
    let agent = Agent::start(&[app.port()], &[]).await;
    let session = agent.session("alice").await;
    let spec = previewed(
        "orders",
        app.port(),
        workstation.port(),
        ALICE_TOKEN,
        secure,
    );
    session.create_intercept(spec).await.unwrap();
    (app, workstation, agent, session)
}

/// GET `path` with headers: the body and the Set-Cookie headers.
async fn get_cookies(
    client: &mut H1,
    path: &str,
    headers: &[(&str, &str)],
) -> (String, Vec<String>) {
    let resp = client
        .send(request("GET", path, headers, Bytes::new()))
        .await;
    let set: Vec<String> = resp
        .headers()
        .get_all(http::header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let (status, body) = text(resp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (body, set)
}

#[tokio::test]
async fn a_preview_link_reaches_the_workstation_without_its_token_and_sets_the_cookie() {
    for (secure, attributes) in [
        (false, "Path=/; HttpOnly; SameSite=Lax"),
        (true, "Path=/; HttpOnly; SameSite=Lax; Secure"),
    ] {
        let (app, _workstation, agent, _session) = alice_previews_orders(secure).await;
        let mut client = H1::connect(agent.port_for(app.port())).await;
        let link = format!("/show?a=1&tpr_preview={ALICE_TOKEN}&b=2");
        let (body, set) = get_cookies(&mut client, &link, &[]).await;
        assert_eq!(body, "workstation GET /show?a=1&b=2 cookie=");
        assert_eq!(set, [format!("tpr_preview={ALICE_TOKEN}; {attributes}")]);

        let (body, _) = get_cookies(
            &mut client,
            &format!("/show?tpr_preview={ALICE_TOKEN}"),
            &[],
        )
        .await;
        assert_eq!(body, "workstation GET /show cookie=", "no `?` left");

        // Without the token: the app, and no cookie.
        let (body, set) = get_cookies(&mut client, "/show?a=1", &[]).await;
        assert_eq!((body.as_str(), set.len()), ("app GET /show?a=1 cookie=", 0));
    }
}

#[tokio::test]
async fn the_preview_cookie_routes_to_the_workstation_which_never_sees_it() {
    let (app, _workstation, agent, _session) = alice_previews_orders(false).await;
    let cookie = format!("x=1; tpr_preview={ALICE_TOKEN}; y=2");
    let mut client = H1::connect(agent.port_for(app.port())).await;
    let (body, set) = get_cookies(&mut client, "/show", &[("cookie", &cookie)]).await;
    assert_eq!(body, "workstation GET /show cookie=x=1; y=2");
    assert!(
        set.is_empty(),
        "the cookie is set by the link only: {set:?}"
    );

    // h2c, with the cookie split over several headers as HTTP/2 allows.
    let mut h2 = H2::connect(agent.port_for(app.port())).await;
    let only = format!("tpr_preview={ALICE_TOKEN}");
    let split = [
        ("cookie", "x=1"),
        ("cookie", only.as_str()),
        ("cookie", "y=2"),
    ];
    assert_eq!(
        h2.get("/show/h2", &split).await.1,
        "workstation GET /show/h2 cookie=x=1 | y=2"
    );
    assert_eq!(h2.get("/show/h2", &[]).await.1, "app GET /show/h2 cookie=");
    let link = format!("/show/h2?tpr_preview={ALICE_TOKEN}&z=1");
    assert_eq!(
        h2.get(&link, &[]).await.1,
        "workstation GET /show/h2?z=1 cookie="
    );

    // An unknown token is an ordinary request: the app gets it as sent, and
    // no cookie is set or cleared.
    let unknown = "x=1; tpr_preview=unknown-0123456789abcdef";
    let (body, set) = get_cookies(&mut client, "/show", &[("cookie", unknown)]).await;
    assert_eq!(body, format!("app GET /show cookie={unknown}"));
    assert!(set.is_empty(), "{set:?}");
    let (body, set) = get_cookies(
        &mut client,
        "/show?tpr_preview=unknown-0123456789abcdef",
        &[],
    )
    .await;
    assert_eq!(
        body,
        "app GET /show?tpr_preview=unknown-0123456789abcdef cookie="
    );
    assert!(set.is_empty(), "{set:?}");
}

#[tokio::test]
async fn two_previews_never_cross_and_an_ended_ones_token_reaches_the_app() {
    let app = http_server("app").await;
    let alice_ws = http_server("alice").await;
    let bob_ws = http_server("bob").await;
    let agent = Agent::start(&[app.port()], &[]).await;
    let alice = agent.session("alice").await;
    let bob = agent.session("bob").await;
    let (a, b) = (alice_ws.port(), bob_ws.port());
    alice
        .create_intercept(previewed("orders", app.port(), a, ALICE_TOKEN, false))
        .await
        .unwrap();
    bob.create_intercept(previewed("orders", app.port(), b, BOB_TOKEN, false))
        .await
        .unwrap();
    // A token names one intercept: another may not take it.
    let err = bob
        .create_intercept(previewed("cart", app.port(), b, ALICE_TOKEN, false))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("alice@test") && !err.contains(ALICE_TOKEN),
        "{err}"
    );

    let front = agent.port_for(app.port());
    let mut client = H1::connect(front).await;
    let with = |token: &str| format!("tpr_preview={token}");
    for _ in 0..3 {
        let (a, _) = get_cookies(&mut client, "/", &[("cookie", &with(ALICE_TOKEN))]).await;
        let (b, _) = get_cookies(&mut client, "/", &[("cookie", &with(BOB_TOKEN))]).await;
        assert_eq!((a.as_str(), b.as_str()), ("alice GET /", "bob GET /"));
        let (b, _) = get_cookies(&mut client, &format!("/?{}", with(BOB_TOKEN)), &[]).await;
        assert_eq!(b, "bob GET /");
    }

    // Bob's intercept is removed: his token is unknown at once.
    bob.remove_intercept("orders").await.unwrap();
    let (b, set) = get_cookies(&mut client, &format!("/?{}", with(BOB_TOKEN)), &[]).await;
    assert_eq!((b.as_str(), set.len()), ("app GET /", 0));
    let (b, _) = get_cookies(&mut client, "/", &[("cookie", &with(BOB_TOKEN))]).await;
    assert_eq!(b, "app GET /");
    let (a, _) = get_cookies(&mut client, "/", &[("cookie", &with(ALICE_TOKEN))]).await;
    assert_eq!(a, "alice GET /");

    // Alice's session is lost: her token reaches the app. A request routed
    // to her just as the session ends is answered 502 (the intercept
    // ended), which counts as not yet.
    drop(alice);
    eventually(REVERT, "alice's preview reaches the app", || async {
        let mut c = H1::connect(front).await;
        let resp = c
            .send(request(
                "GET",
                "/",
                &[("cookie", &with(ALICE_TOKEN))],
                Bytes::new(),
            ))
            .await;
        text(resp).await == (StatusCode::OK, "app GET /".to_owned())
    })
    .await;
}

#[tokio::test]
async fn a_websocket_upgrade_with_the_preview_cookie_reaches_the_workstation() {
    let (app, _workstation, agent, _session) = alice_previews_orders(true).await;
    let cookie = format!("tpr_preview={ALICE_TOKEN}");
    for (headers, who) in [
        (vec![("cookie", cookie.as_str())], "workstation"),
        (vec![], "app"),
    ] {
        let mut client = H1::connect(agent.port_for(app.port())).await;
        let mut h = headers.clone();
        h.extend([("connection", "upgrade"), ("upgrade", "websocket")]);
        let resp = client.send(request("GET", "/ws", &h, Bytes::new())).await;
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        let upgraded = within("upgrade", hyper::upgrade::on(resp)).await.unwrap();
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        let mut line = vec![0u8; format!("{who} upgraded\n").len()];
        within("read", io.read_exact(&mut line)).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&line), format!("{who} upgraded\n"));
        io.write_all(b"frame").await.unwrap();
        let mut echo = [0u8; 5];
        within("read", io.read_exact(&mut echo)).await.unwrap();
        assert_eq!(&echo, b"frame");
    }
}
