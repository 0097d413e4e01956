//! Test fixtures: the real agent binary, real HTTP and TCP servers on
//! loopback, real HTTP clients, and `eventually` for conditions that take
//! time (instead of fixed sleeps).
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tpr::tunnel::{self, Hello, Session};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port where nothing listens.
pub fn closed_port() -> u16 {
    free_port()
}

/// How long a test waits on the network before it fails.
pub const NET_TIMEOUT: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing the test with `what` if the network does not
/// answer within [`NET_TIMEOUT`] (a hang becomes a message, not a stuck CI).
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(NET_TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("no answer within {NET_TIMEOUT:?}: {what}"),
    }
}

/// Retries `check` until it holds or `within` passed; returns the time it took.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The real `tpr-agent` binary with its own ports.
pub struct Agent {
    child: Child,
    pub grpc: SocketAddr,
    /// (agent port, app port) pairs.
    pub forwards: Vec<(u16, u16)>,
}

impl Agent {
    /// Starts the agent forwarding a fresh agent port to each app port.
    pub async fn start(app_ports: &[u16], extra_env: &[(&str, &str)]) -> Agent {
        Self::spawn(app_ports, "", extra_env).await
    }

    /// Starts the agent with ports made for http intercepts (`/http`).
    pub async fn start_http(app_ports: &[u16]) -> Agent {
        Self::spawn(app_ports, "/http", &[]).await
    }

    async fn spawn(app_ports: &[u16], options: &str, extra_env: &[(&str, &str)]) -> Agent {
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let forwards: Vec<(u16, u16)> = app_ports.iter().map(|p| (free_port(), *p)).collect();
        let list = forwards
            .iter()
            .map(|(a, p)| format!("{a}={p}{options}"))
            .collect::<Vec<_>>()
            .join(",");
        let log = std::env::var("TPR_TEST_AGENT_LOG").unwrap_or_else(|_| "error".into());
        let child = Command::new(env!("CARGO_BIN_EXE_tpr-agent"))
            .env_clear()
            .env("TPR_AGENT_GRPC_PORT", grpc.port().to_string())
            .env("TPR_AGENT_FORWARDS", list)
            .env("TPR_AGENT_LOG", log)
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .expect("tpr-agent starts");
        let agent = Agent {
            child,
            grpc,
            forwards,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tunnel::connect(agent.grpc).await.is_err() {
            assert!(Instant::now() < deadline, "the agent did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        agent
    }

    /// The agent port in front of `app_port`.
    pub fn port_for(&self, app_port: u16) -> SocketAddr {
        let (agent, _) = self
            .forwards
            .iter()
            .find(|(_, p)| *p == app_port)
            .expect("forwarded");
        SocketAddr::from(([127, 0, 0, 1], *agent))
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        within("agent gRPC connect", tunnel::connect(self.grpc))
            .await
            .expect("agent reachable")
    }

    pub async fn session(&self, user: &str) -> Session {
        within(
            "session open",
            Session::open(self.channel().await, hello(user)),
        )
        .await
        .expect("session opens")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hello whose install id and label derive from `user`.
pub fn hello(user: &str) -> Hello {
    Hello {
        install_id: format!("id-{user}"),
        label: format!("{user}@test"),
    }
}

/// A server task, stopped on drop.
pub struct Server {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A raw TCP server: writes "<label>\n", then echoes.
pub async fn tcp_server(label: &'static str) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = tcp.write_all(format!("{label}\n").as_bytes()).await;
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Server { addr, task }
}

type Body = BoxBody<Bytes, hyper::Error>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|n| match n {}).boxed()
}

/// An HTTP server (HTTP/1.1 and h2c): `/echo*` streams the request body
/// back; `/show*` answers "<label> <METHOD> <path and query> cookie=<the
/// Cookie headers, joined by ` | `>"; an Upgrade request switches to a raw stream that writes
/// "<label> upgraded\n" and echoes; anything else answers
/// "<label> <METHOD> <path>".
pub async fn http_server(label: &'static str) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc =
                    service_fn(move |req| async move { Ok::<_, Infallible>(answer(label, req)) });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Server { addr, task }
}

fn answer(label: &'static str, mut req: Request<Incoming>) -> Response<Body> {
    if req.headers().contains_key(http::header::UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                let mut io = TokioIo::new(up);
                let _ = io.write_all(format!("{label} upgraded\n").as_bytes()).await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(full(""))
            .unwrap();
    }
    if req.uri().path().starts_with("/echo") {
        return Response::new(req.into_body().boxed());
    }
    if req.uri().path().starts_with("/show") {
        let cookies: Vec<_> = req
            .headers()
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let target = req.uri().path_and_query().map_or("", |p| p.as_str());
        return Response::new(full(format!(
            "{label} {} {target} cookie={}",
            req.method(),
            cookies.join(" | ")
        )));
    }
    Response::new(full(format!(
        "{label} {} {}",
        req.method(),
        req.uri().path()
    )))
}

/// An HTTP/1.1 client on one keep-alive connection.
pub struct H1 {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> H1 {
        let tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        H1 { send }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        within("HTTP/1.1 connection ready", self.send.ready())
            .await
            .expect("connection still open");
        within("HTTP/1.1 response", self.send.send_request(req))
            .await
            .expect("response")
    }

    /// GET `path` with headers; returns status and body text.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
        let resp = self.send(request("GET", path, headers, Bytes::new())).await;
        text(resp).await
    }
}

/// An HTTP/2 client with prior knowledge (like gRPC) on one connection.
#[derive(Clone)]
pub struct H2 {
    send: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2 {
    pub async fn connect(addr: SocketAddr) -> H2 {
        let tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        H2 { send }
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
        let uri = format!("http://test.local{path}");
        let resp = within(
            "HTTP/2 response",
            self.send
                .send_request(request("GET", &uri, headers, Bytes::new())),
        )
        .await
        .expect("response");
        text(resp).await
    }
}

pub fn request(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "test.local");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body)).unwrap()
}

pub async fn text(resp: Response<Incoming>) -> (StatusCode, String) {
    let status = resp.status();
    let body = within("response body", resp.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Connects and reads the first line a server writes ("" when the
/// connection closes first).
pub async fn first_line(addr: SocketAddr) -> (TcpStream, String) {
    let mut tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(Ok(1)) = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut byte)).await {
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    (tcp, String::from_utf8_lossy(&line).into_owned())
}

/// The default http match header of `user`'s intercept `name`.
pub fn intercept_id(user: &str, name: &str) -> String {
    format!("id-{user}:{name}")
}

/// A TCP relay that can freeze: it stops moving bytes but keeps the
/// connections open, like a cut network.
pub struct Freezer {
    pub addr: SocketAddr,
    frozen: std::sync::Arc<tokio::sync::Notify>,
    is_frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl Freezer {
    pub async fn start(to: SocketAddr) -> Freezer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = std::sync::Arc::new(tokio::sync::Notify::new());
        let is_frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (f, flag) = (frozen.clone(), is_frozen.clone());
        let task = tokio::spawn(async move {
            loop {
                let (mut down, _) = listener.accept().await.unwrap();
                let mut up = TcpStream::connect(to).await.unwrap();
                let (f, flag) = (f.clone(), flag.clone());
                tokio::spawn(async move {
                    let relay = tokio::io::copy_bidirectional(&mut down, &mut up);
                    tokio::select! {
                        _ = relay => {}
                        () = async { if !flag.load(std::sync::atomic::Ordering::SeqCst) { f.notified().await } } => {
                            // Keep both sockets open, move nothing.
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        Freezer {
            addr,
            frozen,
            is_frozen,
            task,
        }
    }

    pub fn freeze(&self) {
        self.is_frozen
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.frozen.notify_waiters();
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
