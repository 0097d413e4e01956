//! The stack against the real kernel: a namespace with its TUN device, the
//! process's side a socket made in it, the far side a server on this host's
//! localhost reached as `host.tpr.internal` (the same stack and relay as a
//! cluster address, without a cluster), over IPv4 and IPv6. Needs root
//! (namespaces, /dev/net/tun); each test says so and passes otherwise.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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

/// Answers each datagram on `echo` with "echo " and it; returns its port.
fn udp_echo(echo: tokio::net::UdpSocket) -> u16 {
    let port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let mut answer = b"echo ".to_vec();
            answer.extend_from_slice(&buf[..n]);
            let _ = echo.send_to(&answer, from).await;
        }
    });
    port
}

/// UDP other than DNS: datagrams to `host.tpr.internal` reach the host's
/// localhost and the answers come back to the process, as from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_go_out_and_answers_come_back() {
    let Some(space) = space() else { return };
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = udp_echo(echo);
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

/// A listener on this host's ::1, for the IPv6 tests; `None` (the test
/// says why and passes) where the host has no ::1.
async fn host_v6_listener() -> Option<TcpListener> {
    match TcpListener::bind("[::1]:0").await {
        Ok(listener) => Some(listener),
        Err(e) => {
            eprintln!("skipped: this host has no ::1 ({e})");
            None
        }
    }
}

/// Reads `n` pattern bytes, checking each.
async fn read_pattern_exact(rx: &mut (impl AsyncReadExt + Unpin), n: usize) {
    let mut buf = vec![0u8; 64 << 10];
    let mut want = vec![0u8; 64 << 10];
    let mut got = 0;
    while got < n {
        let m = buf.len().min(n - got);
        let k = rx.read(&mut buf[..m]).await.expect("read");
        assert!(k > 0, "the end of the stream after {got} of {n} bytes");
        pattern(got, &mut want[..k]);
        assert!(buf[..k] == want[..k], "bytes {got}..{} differ", got + k);
        got += k;
    }
}

/// IPv6: `host.tpr.internal`'s IPv6 address reaches the host's ::1, from
/// the TUN device's IPv6 address; bytes cross both ways intact, and after
/// the process's FIN (a half-close) the server still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_reaches_the_hosts_loopback_and_half_closes() {
    let Some(space) = space() else { return };
    let Some(listener) = host_v6_listener().await else {
        return;
    };
    let port = listener.local_addr().unwrap().port();
    // Echoes up to the process's FIN, then sends the count and closes.
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut rx, mut tx) = tcp.into_split();
        let n = tokio::io::copy(&mut rx, &mut tx).await.unwrap();
        tx.write_u64(n).await.unwrap();
    });
    const N: usize = 4 << 20;
    let dest = SocketAddr::from((HOST_ADDR6, port));
    let tcp = step("connect", 10, space.netns.connect(dest))
        .await
        .unwrap();
    assert_eq!(tcp.local_addr().unwrap().ip(), TUN_ADDR6);
    let (mut rx, mut tx) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 << 10];
        let mut sent = 0;
        while sent < N {
            let m = buf.len().min(N - sent);
            pattern(sent, &mut buf[..m]);
            tx.write_all(&buf[..m]).await.unwrap();
            sent += m;
        }
        tx.shutdown().await.unwrap();
    });
    let echoed = async {
        read_pattern_exact(&mut rx, N).await;
        let count = rx.read_u64().await.unwrap();
        let end = rx.read(&mut [0u8; 16]).await.unwrap();
        (count, end)
    };
    let (count, end) = step("echo", 60, echoed).await;
    assert_eq!(count, N as u64, "the server's count, after the FIN");
    assert_eq!(end, 0, "then the server's FIN");
    step("writer", 10, writer).await.unwrap();
    assert_eq!(space.shared.stats.failures.load(Ordering::Relaxed), 0);
}

/// The namespace's ::1 is its own loopback: the host's listener on ::1 is
/// not reached from inside, one in the namespace is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespaces_ipv6_loopback_is_its_own() {
    let Some(space) = space() else { return };
    let Some(host) = host_v6_listener().await else {
        return;
    };
    let loopback = SocketAddr::from((Ipv6Addr::LOCALHOST, host.local_addr().unwrap().port()));
    let refused = step("connect", 10, space.netns.connect(loopback)).await;
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    let inside = space
        .netns
        .listen_tcp(loopback)
        .expect("::1 in the namespace");
    let mut tcp = step("connect", 10, space.netns.connect(loopback))
        .await
        .unwrap();
    let (mut peer, _) = step("accept", 10, inside.accept()).await.unwrap();
    tcp.write_all(b"inside").await.unwrap();
    let mut buf = [0u8; 6];
    step("read", 10, peer.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"inside");
    let host_got = tokio::time::timeout(Duration::from_millis(100), host.accept()).await;
    assert!(host_got.is_err(), "the host's listener was reached");
}

/// UDP over IPv6: datagrams to `host.tpr.internal`'s IPv6 address reach
/// a socket on the host's ::1, and its answers come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_over_ipv6_reaches_the_hosts_loopback() {
    let Some(space) = space() else { return };
    let echo = match tokio::net::UdpSocket::bind("[::1]:0").await {
        Ok(echo) => echo,
        Err(e) => {
            eprintln!("skipped: this host has no ::1 ({e})");
            return;
        }
    };
    let port = udp_echo(echo);
    let udp = space
        .netns
        .bind_udp(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))
        .unwrap();
    udp.connect(SocketAddr::from((HOST_ADDR6, port)))
        .await
        .unwrap();
    let mut buf = [0u8; 2048];
    for word in ["one", &"x".repeat(1400)] {
        udp.send(word.as_bytes()).await.unwrap();
        let n = step("echo", 10, udp.recv(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], format!("echo {word}").as_bytes());
    }
    assert_eq!(space.shared.stats.failures.load(Ordering::Relaxed), 0);
}

/// tpr's resolver answers AAAA for `host.tpr.internal` with its IPv6
/// address (and A with its IPv4 one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resolver_answers_aaaa_for_the_host_alias() {
    let Some(space) = space() else { return };
    let udp = space
        .netns
        .bind_udp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .unwrap();
    udp.connect(SocketAddr::from((DNS_ADDR, 53))).await.unwrap();
    let mut buf = [0u8; 512];
    for (id, qtype, ip) in [
        (1, dns_wire::TYPE_AAAA, IpAddr::V6(HOST_ADDR6)),
        (2, dns_wire::TYPE_A, IpAddr::V4(HOST_ADDR)),
    ] {
        udp.send(&dns_wire::query(id, HOST_ALIAS, qtype))
            .await
            .unwrap();
        let n = step("dns", 10, udp.recv(&mut buf)).await.unwrap();
        assert_eq!(dns_wire::answers(&buf[..n]).0, vec![ip], "{qtype}");
    }
}

/// IPv6 destinations go the ways IPv4 ones do, and a failure is the
/// process's refusal, not a hang: one nobody routes (the documentation
/// range, dialled from the host), and a cluster one with no agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_destination_that_fails_refuses_the_connect() {
    let Some(space) = space() else { return };
    if host_v6_listener().await.is_none() {
        return;
    }
    *lock(&space.shared.routes.subnets) = vec![parse_subnet("fd00:10:96::/64").unwrap()];
    let nowhere = SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9));
    let cluster = SocketAddr::from((Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 1), 80));
    for (n, dest) in [cluster, nowhere].into_iter().enumerate() {
        let started = Instant::now();
        // At most the host's dial timeout (10 s) where nothing answers.
        let err = step("connect", 20, space.netns.connect(dest))
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        eprintln!("{dest}: refused after {:?}", started.elapsed());
        assert_eq!(
            space.shared.stats.failures.load(Ordering::Relaxed),
            n as u64 + 1
        );
    }
}
