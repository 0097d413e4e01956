//! The agent's figures, each path measured in one run against a direct
//! connection: round-trip latency (p50, p99) of a small HTTP request,
//! throughput of a 1 GiB transfer (client to server, `throughput_*`, and
//! server to client, `throughput_download_*`), HTTP keep-alive requests per
//! second, and the agent's RSS idle and with 1,000 open connections.
//!
//! Paths: `direct` (client -> server), `passthrough` (client -> agent ->
//! app, no intercept), `intercepted` (client -> agent -> gRPC tunnel ->
//! runner-side client -> workstation server; http intercept for requests,
//! tcp intercept for the transfer), and `preview_cookie` (the same
//! intercept reached by its preview cookie instead of its header;
//! `latency_p50_added_preview_cookie_vs_header` is the difference).
//!
//! Run: `bench/agent/run.sh` (or `cargo bench -p tpr-agent --bench agent`).
//! Prints `name value unit` lines. Sizes via TPR_BENCH_BYTES (default 1 GiB).
//! `TPR_BENCH_ONLY=direct|passthrough|intercepted` measures only that path's
//! throughput (median of 5 transfers): a steady load to attach `perf` to.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tpr::tunnel::{self, Hello, InterceptSpec, Mechanism, PreviewToken, Session};

const LATENCY_SAMPLES: usize = 5_000;
const RPS_CONNECTIONS: usize = 8;
const RPS_DURATION: Duration = Duration::from_secs(3);
const OPEN_CONNECTIONS: usize = 1_000;
const IO_BUFFER: usize = 256 << 10;
const THROUGHPUT_ROUNDS: usize = 5;
/// Rounds of the header and preview-cookie latencies, alternated.
const PREVIEW_ROUNDS: usize = 6;
/// The bench intercept's preview token.
const PREVIEW_TOKEN: &str = "bench-preview-0123456789abcdef";
/// Rounds of the one-path mode (TPR_BENCH_ONLY), made for profilers.
const PROFILE_ROUNDS: usize = 5;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn figure(name: &str, value: f64, unit: &str) {
    println!("{name} {value:.2} {unit}");
}

/// Small HTTP answers ("ok") on HTTP/1.1.
async fn http_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// Connections the sinks accepted so far.
static SINK_CONNECTIONS: AtomicU64 = AtomicU64::new(0);
/// First byte of a download request, followed by the length (8 bytes, big
/// endian). Uploads send 0x5a bytes.
const DOWNLOAD: u8 = b'd';

/// Reads everything, then answers the byte count (8 bytes, big endian); or,
/// asked with DOWNLOAD, sends that many bytes and closes. Also serves as the
/// 1,000-connection target: a connection that sends nothing just stays open.
/// A thread per connection with blocking calls, as a plain server process:
/// the transfer figures must not depend on where a runtime happens to
/// schedule the client and the sink.
async fn sink_server() -> SocketAddr {
    // Bound by tokio for its backlog of 1,024 (std's 128 would drop SYNs
    // of the 1,000 connections opened at once).
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .into_std()
        .unwrap();
    listener.set_nonblocking(false).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let mut tcp = tcp.unwrap();
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    SINK_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
                    let mut first = [0u8; 1];
                    if tcp.read_exact(&mut first).is_err() {
                        return;
                    }
                    if first[0] == DOWNLOAD {
                        let mut len = [0u8; 8];
                        if tcp.read_exact(&mut len).is_ok() {
                            send_bytes(&mut tcp, u64::from_be_bytes(len));
                        }
                        return;
                    }
                    let mut buf = vec![0u8; IO_BUFFER];
                    let mut total = 1u64;
                    while let Ok(n @ 1..) = tcp.read(&mut buf) {
                        total += n as u64;
                    }
                    let _ = tcp.write_all(&total.to_be_bytes());
                })
                .unwrap();
        }
    });
    addr
}

async fn latency(addr: SocketAddr, headers: &[(&str, &str)]) -> (f64, f64) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_SAMPLES + 500 {
        let mut req = Request::get("/").header("host", "bench");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::<Bytes>::new()).unwrap();
        let start = Instant::now();
        send.ready().await.unwrap();
        let resp = send.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let took = start.elapsed();
        assert_eq!(&body[..], b"ok");
        if i >= 500 {
            samples.push(took.as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99))
}

async fn requests_per_second(addr: SocketAddr, headers: &[(&'static str, String)]) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + RPS_DURATION;
    let mut tasks = Vec::new();
    for _ in 0..RPS_CONNECTIONS {
        let count = count.clone();
        let headers = headers.to_vec();
        tasks.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            while Instant::now() < deadline {
                let mut req = Request::get("/").header("host", "bench");
                for (k, v) in &headers {
                    req = req.header(*k, v.as_str());
                }
                send.ready().await.unwrap();
                let resp = send
                    .send_request(req.body(Empty::<Bytes>::new()).unwrap())
                    .await
                    .unwrap();
                resp.into_body().collect().await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Writes `bytes` bytes (0x5a) in IO_BUFFER pieces.
fn send_bytes(tcp: &mut std::net::TcpStream, bytes: u64) {
    let buf = vec![0x5au8; IO_BUFFER];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        tcp.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
}

/// MiB/s of receiving `bytes` from the sink, from a thread of its own.
async fn download(addr: SocketAddr, bytes: u64) -> f64 {
    tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_nodelay(true).unwrap();
        let start = Instant::now();
        let mut ask = vec![DOWNLOAD];
        ask.extend_from_slice(&bytes.to_be_bytes());
        tcp.write_all(&ask).unwrap();
        let mut buf = vec![0u8; IO_BUFFER];
        let mut total = 0u64;
        while let Ok(n @ 1..) = tcp.read(&mut buf) {
            total += n as u64;
        }
        let took = start.elapsed().as_secs_f64();
        assert_eq!(total, bytes, "every byte arrived");
        bytes as f64 / (1 << 20) as f64 / took
    })
    .await
    .unwrap()
}

/// MiB/s of sending `bytes` and receiving the sink's count, from a thread
/// of its own with blocking calls (see `sink_server`).
async fn throughput(addr: SocketAddr, bytes: u64) -> f64 {
    tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_nodelay(true).unwrap();
        let start = Instant::now();
        send_bytes(&mut tcp, bytes);
        tcp.shutdown(std::net::Shutdown::Write).unwrap();
        let mut count = [0u8; 8];
        tcp.read_exact(&mut count).unwrap();
        let took = start.elapsed().as_secs_f64();
        assert_eq!(u64::from_be_bytes(count), bytes, "the sink got every byte");
        bytes as f64 / (1 << 20) as f64 / took
    })
    .await
    .unwrap()
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// Fields of /proc/<pid>/stat after the command name (field 3 is index 0).
fn stat(pid: u32) -> Vec<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect()
}

/// CPU seconds (user + system) a process used so far (clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let f = stat(pid);
    (f[11] + f[12]) / 100.0
}

/// One direction's MiB/s on the three paths, and each path's % of direct.
fn throughput_figures(name: &str, direct: f64, passthrough: f64, intercepted: f64) {
    figure(&format!("{name}_direct"), direct, "MiB/s");
    figure(&format!("{name}_passthrough"), passthrough, "MiB/s");
    figure(&format!("{name}_intercepted"), intercepted, "MiB/s");
    for (path, value) in [("passthrough", passthrough), ("intercepted", intercepted)] {
        figure(
            &format!("{name}_{path}_of_direct"),
            100.0 * value / direct,
            "%",
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This process plays the runner's side of the tunnel: same allocator as `tpr`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let bytes: u64 = std::env::var("TPR_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let (app_http, ws_http) = (http_server().await, http_server().await);
    let (app_sink, ws_sink) = (sink_server().await, sink_server().await);
    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (front_http, front_sink) = (free_port(), free_port());
    let agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_tpr-agent"))
            .env_clear()
            .env("TPR_AGENT_GRPC_PORT", grpc.port().to_string())
            .env(
                "TPR_AGENT_FORWARDS",
                format!(
                    "{front_http}={},{front_sink}={}",
                    app_http.port(),
                    app_sink.port()
                ),
            )
            .env("TPR_AGENT_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .expect("the agent starts (build it with cargo bench)"),
    );
    let pid = agent.0.id();
    let channel = loop {
        match tunnel::connect(grpc).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    figure("agent_rss_idle", rss_mib(pid), "MiB");

    let front_http = SocketAddr::from(([127, 0, 0, 1], front_http));
    let front_sink = SocketAddr::from(([127, 0, 0, 1], front_sink));
    // RSS with 1,000 open connections through the agent to the app, before
    // any bulk transfer (whose freed buffers the allocator may keep: see
    // agent_rss_after_bench).
    let mut open = Vec::with_capacity(OPEN_CONNECTIONS);
    let relayed = SINK_CONNECTIONS.load(Ordering::Relaxed) + OPEN_CONNECTIONS as u64;
    for _ in 0..OPEN_CONNECTIONS {
        let mut tcp = TcpStream::connect(front_sink).await.unwrap();
        tcp.write_all(b"x").await.unwrap();
        open.push(tcp);
    }
    // Every connection reached the app through the agent, then settle.
    while SINK_CONNECTIONS.load(Ordering::Relaxed) < relayed {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    figure("agent_rss_1000_connections", rss_mib(pid), "MiB");
    drop(open);

    let session = Session::open(
        channel.clone(),
        Hello {
            install_id: "bench".into(),
            label: "bench@localhost".into(),
        },
    )
    .await
    .unwrap();
    // The request figures' intercept: the default match (this session's
    // id), and a preview token, sent as a browser would among other cookies.
    let http_intercept = InterceptSpec {
        name: "http".into(),
        app_port: app_http.port(),
        mechanism: Mechanism::Http {
            headers: vec![],
            path_prefix: None,
        },
        target: ws_http,
        wait: std::time::Duration::ZERO,
        preview: Some(PreviewToken {
            token: PREVIEW_TOKEN.into(),
            secure: false,
        }),
    };
    session
        .create_intercept(http_intercept.clone())
        .await
        .unwrap();
    let id = "bench:http".to_owned();
    let mine = [("x-telepresence-intercept-id", id.as_str())];

    // The transfer's intercept: every connection to the sink's port goes to
    // the workstation's sink.
    let tcp_intercept = InterceptSpec {
        name: "tcp".into(),
        app_port: app_sink.port(),
        mechanism: Mechanism::Tcp,
        target: ws_sink,
        wait: std::time::Duration::ZERO,
        preview: None,
    };
    if let Ok(path) = std::env::var("TPR_BENCH_ONLY") {
        let target = match path.as_str() {
            "direct" => app_sink,
            "passthrough" => front_sink,
            "intercepted" => {
                session
                    .create_intercept(tcp_intercept.clone())
                    .await
                    .unwrap();
                front_sink
            }
            other => panic!("TPR_BENCH_ONLY={other}: direct, passthrough or intercepted"),
        };
        let mut rounds = Vec::new();
        let (own, agent_cpu) = (cpu_seconds(std::process::id()), cpu_seconds(pid));
        for _ in 0..PROFILE_ROUNDS {
            rounds.push(throughput(target, bytes).await);
        }
        let gib = (PROFILE_ROUNDS as u64 * bytes) as f64 / (1u64 << 30) as f64;
        figure(
            "bench_process_cpu_per_gib",
            (cpu_seconds(std::process::id()) - own) / gib,
            "s",
        );
        figure(
            "agent_cpu_per_gib",
            (cpu_seconds(pid) - agent_cpu) / gib,
            "s",
        );
        figure(&format!("throughput_{path}"), median(rounds), "MiB/s");
        return;
    }

    // Latency.
    let direct = latency(app_http, &[]).await;
    // The http port routes per request now; passthrough is measured on a
    // plain relay below, before the tcp intercept.
    let routed_to_app = latency(front_http, &[]).await;
    // The two ways into an intercept, alternated (and which goes first, too)
    // so that other load hits both alike; each figure is the median of its
    // rounds.
    let cookie = format!("_ga=GA1.1.1234567890; tpr_preview={PREVIEW_TOKEN}; theme=dark");
    let by_cookie = [("cookie", cookie.as_str())];
    let (mut by_header_rounds, mut by_cookie_rounds) = (Vec::new(), Vec::new());
    for round in 0..PREVIEW_ROUNDS {
        if round % 2 == 0 {
            by_header_rounds.push(latency(front_http, &mine).await);
            by_cookie_rounds.push(latency(front_http, &by_cookie).await);
        } else {
            by_cookie_rounds.push(latency(front_http, &by_cookie).await);
            by_header_rounds.push(latency(front_http, &mine).await);
        }
    }
    let median_of = |rounds: Vec<(f64, f64)>| {
        let (p50, p99): (Vec<f64>, Vec<f64>) = rounds.into_iter().unzip();
        (median(p50), median(p99))
    };
    let intercepted = median_of(by_header_rounds);
    let preview_cookie = median_of(by_cookie_rounds);

    // Throughput: rounds interleave the three paths so that load from other
    // processes hits them alike; each figure is the median of its rounds.
    let (mut t_direct, mut t_pass, mut t_icpt) = (Vec::new(), Vec::new(), Vec::new());
    let (mut d_direct, mut d_pass, mut d_icpt) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu_pass, mut cpu_icpt) = (0.0, 0.0);
    let (mut own_direct, mut own_icpt) = (0.0, 0.0);
    let me = std::process::id();
    for _ in 0..THROUGHPUT_ROUNDS {
        let own = cpu_seconds(me);
        t_direct.push(throughput(app_sink, bytes).await);
        own_direct += cpu_seconds(me) - own;
        let cpu = cpu_seconds(pid);
        t_pass.push(throughput(front_sink, bytes).await);
        cpu_pass += cpu_seconds(pid) - cpu;
        d_direct.push(download(app_sink, bytes).await);
        d_pass.push(download(front_sink, bytes).await);
        session
            .create_intercept(tcp_intercept.clone())
            .await
            .unwrap();
        let (cpu, own) = (cpu_seconds(pid), cpu_seconds(me));
        t_icpt.push(throughput(front_sink, bytes).await);
        own_icpt += cpu_seconds(me) - own;
        cpu_icpt += cpu_seconds(pid) - cpu;
        d_icpt.push(download(front_sink, bytes).await);
        session.remove_intercept("tcp").await.unwrap();
    }
    let rounds = THROUGHPUT_ROUNDS as f64;
    let (cpu_pass, cpu_icpt) = (cpu_pass / rounds, cpu_icpt / rounds);
    let (t_direct, t_pass, t_icpt) = (median(t_direct), median(t_pass), median(t_icpt));
    let (d_direct, d_pass, d_icpt) = (median(d_direct), median(d_pass), median(d_icpt));
    session.remove_intercept("http").await.unwrap();
    let passthrough = latency(front_http, &[]).await;

    // Requests per second.
    let r_direct = requests_per_second(app_http, &[]).await;
    let r_pass = requests_per_second(front_http, &[]).await;
    session
        .create_intercept(http_intercept.clone())
        .await
        .unwrap();
    let r_routed = requests_per_second(front_http, &[]).await;
    let r_icpt =
        requests_per_second(front_http, &[("x-telepresence-intercept-id", id.clone())]).await;

    for (path, (p50, p99)) in [
        ("direct", direct),
        ("passthrough", passthrough),
        ("http_routed_to_app", routed_to_app),
        ("intercepted", intercepted),
        ("preview_cookie", preview_cookie),
    ] {
        figure(&format!("latency_p50_{path}"), p50, "us");
        figure(&format!("latency_p99_{path}"), p99, "us");
    }
    figure(
        "latency_p50_added_passthrough",
        passthrough.0 - direct.0,
        "us",
    );
    figure(
        "latency_p50_added_http_routed_to_app",
        routed_to_app.0 - direct.0,
        "us",
    );
    figure(
        "latency_p50_added_intercepted",
        intercepted.0 - direct.0,
        "us",
    );
    // What routing by the preview cookie (parse, compare, strip) adds to
    // routing by the intercept header.
    figure(
        "latency_p50_added_preview_cookie_vs_header",
        preview_cookie.0 - intercepted.0,
        "us",
    );
    throughput_figures("throughput", t_direct, t_pass, t_icpt);
    // The other direction: the app (or the workstation) sends.
    throughput_figures("throughput_download", d_direct, d_pass, d_icpt);
    let gib = bytes as f64 / (1u64 << 30) as f64;
    figure("agent_cpu_per_gib_passthrough", cpu_pass / gib, "s");
    figure("agent_cpu_per_gib_intercepted", cpu_icpt / gib, "s");
    // Client, servers and the runner-side tunnel share this process.
    figure(
        "bench_process_cpu_per_gib_direct",
        own_direct / rounds / gib,
        "s",
    );
    figure(
        "bench_process_cpu_per_gib_intercepted",
        own_icpt / rounds / gib,
        "s",
    );
    figure("rps_direct", r_direct, "req/s");
    figure("rps_passthrough", r_pass, "req/s");
    figure("rps_http_routed_to_app", r_routed, "req/s");
    figure("rps_intercepted", r_icpt, "req/s");

    figure("agent_rss_after_bench", rss_mib(pid), "MiB");
    drop(session);
}
