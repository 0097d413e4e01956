//! The stack against the real kernel: a namespace with its TUN device, the
//! process's side a socket made in it, the far side a server on this host's
//! localhost reached as `host.tpr.internal` (the same stack and relay as a
//! cluster address, without a cluster). Needs root (namespaces,
//! /dev/net/tun); each test says so and passes otherwise.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

fn space() -> Option<Arc<Space>> {
    if let Err(e) = netns::probe() {
        eprintln!("skipped: no namespaces here ({e})");
        return None;
    }
    let space = Space::create(
        "test",
        Arc::new(Channels::default()),
        &Settings::default(),
        Events::Human,
        Vec::new(),
        None,
    )
    .expect("a namespace");
    Some(space)
}

/// Bounds a step, so a regression fails instead of hanging.
async fn step<T>(what: &str, secs: u64, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no progress in {secs} s"))
}

/// A byte stream anyone can check: byte i is a function of i.
fn pattern(from: usize, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let n = from + i;
        *b = (n ^ (n >> 8) ^ (n >> 16)) as u8;
    }
}

/// A host server sending `n` pattern bytes to each connection, then FIN.
async fn sender(n: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                let mut sent = 0;
                while sent < n {
                    let m = buf.len().min(n - sent);
                    pattern(sent, &mut buf[..m]);
                    if tcp.write_all(&buf[..m]).await.is_err() {
                        return;
                    }
                    sent += m;
                }
            });
        }
    });
    port
}

/// Reads to the end, checking the pattern; at most `rate` bytes a second
/// when given. Returns the count.
async fn read_pattern(tcp: &mut TcpStream, rate: Option<usize>) -> usize {
    let started = Instant::now();
    let mut buf = vec![0u8; 16 << 10];
    let mut want = vec![0u8; 16 << 10];
    let mut got = 0;
    loop {
        let n = tcp.read(&mut buf).await.expect("read");
        if n == 0 {
            return got;
        }
        pattern(got, &mut want[..n]);
        assert!(buf[..n] == want[..n], "bytes {got}..{} differ", got + n);
        got += n;
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(got as f64 / rate as f64);
            tokio::time::sleep_until((started + due).into()).await;
        }
    }
}

async fn connect(space: &Space, port: u16, rcvbuf: Option<u32>) -> std::io::Result<TcpStream> {
    let socket = space.netns.tcp_socket(false)?;
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size)?;
    }
    socket.connect(SocketAddr::from((HOST_ADDR, port))).await
}

/// A process reading slower than the data comes: its window shuts and
/// reopens again and again. Every byte arrives, at the reader's pace (the
/// stack resumes as soon as the window reopens, not after a timer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_byte_at_its_own_pace() {
    let Some(space) = space() else { return };
    const N: usize = 1 << 20;
    const RATE: usize = 256 << 10;
    let port = sender(N).await;
    // A small receive buffer: the window is shut most of the time.
    let mut tcp = step("connect", 10, connect(&space, port, Some(32 << 10)))
        .await
        .unwrap();
    let started = Instant::now();
    let got = step("read", 60, read_pattern(&mut tcp, Some(RATE))).await;
    let took = started.elapsed();
    assert_eq!(got, N);
    let ideal = Duration::from_secs_f64(N as f64 / RATE as f64);
    eprintln!("{N} bytes at {RATE} B/s: {took:?} (ideal {ideal:?})");
    assert!(took < ideal * 2, "{took:?} for an ideal {ideal:?}");
}

/// Bulk data both ways, intact, with the figures printed for comparison.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_data_passes_intact_both_ways() {
    let Some(space) = space() else { return };
    const N: usize = 64 << 20;
    let port = sender(N).await;
    let mut tcp = step("connect", 10, connect(&space, port, None))
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(step("download", 60, read_pattern(&mut tcp, None)).await, N);
    let down = N as f64 / started.elapsed().as_secs_f64() / f64::from(1 << 20);

    // Upload: the host server reads and checks the pattern, then answers
    // with the count.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let got = read_pattern(&mut tcp, None).await;
        tcp.write_all(&(got as u64).to_be_bytes()).await.unwrap();
    });
    let mut tcp = step("connect", 10, connect(&space, port, None))
        .await
        .unwrap();
    let started = Instant::now();
    let upload = async {
        let mut buf = vec![0u8; 256 << 10];
        let mut sent = 0;
        while sent < N {
            let m = buf.len().min(N - sent);
            pattern(sent, &mut buf[..m]);
            tcp.write_all(&buf[..m]).await.unwrap();
            sent += m;
        }
        tcp.shutdown().await.unwrap();
        tcp.read_u64().await.unwrap()
    };
    assert_eq!(step("upload", 60, upload).await, N as u64);
    let up = N as f64 / started.elapsed().as_secs_f64() / f64::from(1 << 20);
    eprintln!("through the stack: download {down:.0} MiB/s, upload {up:.0} MiB/s");
    server.await.unwrap();
}

/// A destination that refuses: the process's connect() is refused, at
/// once, as it would be by the destination itself; and it is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dial_refuses_the_connect() {
    let Some(space) = space() else { return };
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let err = step("connect", 10, connect(&space, closed, None))
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(space.shared.stats.failures.load(Ordering::Relaxed), 1);
}

/// The far end resets: so does the process's connection (ECONNRESET, not
/// a clean end of stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_reaches_the_process_as_a_reset() {
    let Some(space) = space() else { return };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        // Once the connection is through: a reset at once could come
        // before the dial completed, and refuse it instead.
        let _ = tcp.read_u8().await;
        // SO_LINGER 0: close() sends a reset (it never blocks then).
        rustix::net::sockopt::set_socket_linger(&tcp, Some(Duration::ZERO)).unwrap();
        drop(tcp);
    });
    let mut tcp = step("connect", 10, connect(&space, port, None))
        .await
        .unwrap();
    tcp.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 16];
    let err = step("read", 10, tcp.read(&mut buf))
        .await
        .expect_err("a reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

/// Connections held open are in the stack's table; once closed, their
/// state is freed: the table is empty again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_connections_leave_nothing_behind() {
    let Some(space) = space() else { return };
    let port = sender(1000).await;
    let flows = || space.shared.stats.flows.load(Ordering::Relaxed);
    let mut open = Vec::new();
    for _ in 0..200 {
        let mut tcp = step("connect", 10, connect(&space, port, None))
            .await
            .unwrap();
        let mut buf = [0u8; 10];
        step("read", 10, tcp.read_exact(&mut buf)).await.unwrap();
        open.push(tcp);
    }
    assert!(flows() >= 200, "{} flows", flows());
    drop(open);
    let emptied = step("the table empties", 10, async {
        while flows() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    emptied.await;
    assert_eq!(space.shared.stats.open.load(Ordering::Relaxed), 0);
    // The namespace's loopback is its own: not the host's.
    let refused = space
        .netns
        .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await;
    assert!(refused.is_err());
}

/// UDP other than DNS: datagrams to `host.tpr.internal` reach the host's
/// localhost and the answers come back to the process, as from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_go_out_and_answers_come_back() {
    let Some(space) = space() else { return };
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let mut answer = b"echo ".to_vec();
            answer.extend_from_slice(&buf[..n]);
            let _ = echo.send_to(&answer, from).await;
        }
    });
    let udp = space
        .netns
        .bind_udp(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
        .unwrap();
    udp.connect(SocketAddr::from((HOST_ADDR, port)))
        .await
        .unwrap();
    let mut buf = [0u8; 2048];
    for word in ["one", "two", &"x".repeat(1400)] {
        udp.send(word.as_bytes()).await.unwrap();
        let n = step("echo", 10, udp.recv(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], format!("echo {word}").as_bytes());
    }
    assert_eq!(space.shared.stats.failures.load(Ordering::Relaxed), 0);
}
