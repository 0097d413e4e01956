//! Outbound: the workstation's process reaching the cluster as this pod
//! does. `DialOut` dials a destination from the pod (the peer sees the
//! pod's IP; the pod's NetworkPolicies apply), `DialUdp` does the same for
//! a UDP flow, `Resolve` relays one raw DNS
//! query to the pod's nameserver, `NetworkInfo` tells the pod's resolver
//! settings and addresses. The agent parses no DNS: the workstation's
//! resolver applies the pod's search list, as the pod's libc would.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use tpr_schema::proto::{Chunk, NetworkInfoResponse};

/// How long a dial from the pod may take: a silent destination (dropped by
/// a NetworkPolicy) fails the workstation's connection instead of hanging.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one DNS query may take: the pod's libc default (`timeout:5`).
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest DNS message over UDP we accept (EDNS0 sizes fit), and the
/// largest datagram relayed.
const UDP_MAX: usize = 65_535;

/// A UDP flow with no datagram either way for this long ends (the
/// workstation ends idle flows sooner).
const UDP_IDLE: Duration = Duration::from_secs(60);
/// Datagrams from the destination waiting for the stream; more are dropped
/// (by the socket buffer), as UDP may drop them.
pub const UDP_QUEUE: usize = 64;

/// The pod's resolver settings, read once at start: resolv.conf does not
/// change during a pod's life.
#[derive(Debug, Clone, Default)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub ndots: u32,
}

impl ResolvConf {
    /// The pod's resolv.conf, read on first use.
    pub fn pod() -> &'static ResolvConf {
        static CONF: std::sync::OnceLock<ResolvConf> = std::sync::OnceLock::new();
        CONF.get_or_init(|| {
            std::fs::read_to_string("/etc/resolv.conf")
                .map(|text| Self::parse(&text))
                .unwrap_or_default()
        })
    }

    pub fn parse(text: &str) -> Self {
        let mut conf = ResolvConf {
            ndots: 1,
            ..Default::default()
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                        conf.nameservers.push(ip);
                    }
                }
                // The last search line wins, as in libc.
                Some("search") => conf.search = words.map(str::to_owned).collect(),
                Some("options") => {
                    for option in words {
                        if let Some(n) = option.strip_prefix("ndots:").and_then(|n| n.parse().ok())
                        {
                            conf.ndots = n;
                        }
                    }
                }
                _ => {}
            }
        }
        conf
    }
}

/// Dials `dest` from the pod.
pub async fn dial(dest: SocketAddr) -> Result<TcpStream, Status> {
    match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(dest)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        Ok(Err(e)) => Err(Status::unavailable(format!(
            "cannot connect to {dest} from the pod: {e}"
        ))),
        Err(_) => Err(Status::unavailable(format!(
            "no answer from {dest} within {DIAL_TIMEOUT:?} from the pod"
        ))),
    }
}

/// A UDP socket of the pod connected to `dest`.
pub async fn dial_udp(dest: SocketAddr) -> Result<UdpSocket, Status> {
    let bind = SocketAddr::new(
        if dest.is_ipv4() {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u16; 8])
        },
        0,
    );
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| Status::unavailable(format!("no UDP socket in the pod: {e}")))?;
    socket
        .connect(dest)
        .await
        .map_err(|e| Status::unavailable(format!("cannot send to {dest} from the pod: {e}")))?;
    Ok(socket)
}

/// Relays a UDP flow: each message of `inbound` is one datagram to the
/// destination, each datagram from it one message on `outbound`. Ends with
/// the workstation's stream, or when idle for [`UDP_IDLE`].
pub async fn relay_udp(
    socket: UdpSocket,
    mut inbound: impl Stream<Item = Result<Chunk, Status>> + Unpin,
    outbound: mpsc::Sender<Result<Chunk, Status>>,
) {
    let mut buf = vec![0u8; UDP_MAX];
    let idle = tokio::time::sleep(UDP_IDLE);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            message = inbound.next() => match message {
                Some(Ok(chunk)) => {
                    // A datagram the kernel refuses is lost, as UDP may be.
                    let _ = socket.send(&chunk.data).await;
                }
                _ => return,
            },
            received = socket.recv(&mut buf) => match received {
                Ok(n) => {
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    if outbound.send(Ok(Chunk { data })).await.is_err() {
                        return;
                    }
                }
                // An ICMP error of an earlier datagram (port unreachable):
                // the flow goes on, as a connected UDP socket's does.
                Err(_) => continue,
            },
            () = &mut idle => return,
        }
        idle.as_mut().reset(tokio::time::Instant::now() + UDP_IDLE);
    }
}

/// Asks the pod's first nameserver; a truncated UDP answer is asked again
/// over TCP, as a resolver does.
pub async fn resolve(conf: &ResolvConf, query: &[u8]) -> Result<Vec<u8>, Status> {
    let server = conf
        .nameservers
        .first()
        .map(|ip| SocketAddr::new(*ip, 53))
        .ok_or_else(|| Status::failed_precondition("the pod's resolv.conf names no nameserver"))?;
    if query.len() < 12 {
        return Err(Status::invalid_argument("not a DNS message"));
    }
    let asked = async {
        let answer = udp_query(server, query).await?;
        // TC: the third byte's bit 1.
        if answer.get(2).is_some_and(|flags| flags & 0x02 != 0) {
            return tcp_query(server, query).await;
        }
        Ok(answer)
    };
    tokio::time::timeout(DNS_TIMEOUT, asked)
        .await
        .map_err(|_| Status::deadline_exceeded(format!("nameserver {server} did not answer")))?
        .map_err(|e: std::io::Error| Status::unavailable(format!("nameserver {server}: {e}")))
}

async fn udp_query(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0; UDP_MAX];
    loop {
        let n = socket.recv(&mut buf).await?;
        // The answer carries the query's id; anything else is stray.
        if n >= 12 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp_query(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long"))?;
    let mut message = len.to_be_bytes().to_vec();
    message.extend_from_slice(query);
    tcp.write_all(&message).await?;
    let len = tcp.read_u16().await?;
    let mut answer = vec![0; usize::from(len)];
    tcp.read_exact(&mut answer).await?;
    Ok(answer)
}

/// The pod's view: resolver settings, its IP (the source address of a
/// route to its nameserver) and the Service IPs of its environment.
pub fn network_info<'a>(
    conf: &ResolvConf,
    env: impl Iterator<Item = (&'a String, &'a String)>,
) -> NetworkInfoResponse {
    let mut pod_ip = String::new();
    if let Some(server) = conf.nameservers.first()
        && let Ok(socket) = std::net::UdpSocket::bind((IpAddr::from([0u8; 4]), 0))
        && socket.connect((*server, 53)).is_ok()
        && let Ok(local) = socket.local_addr()
    {
        pod_ip = local.ip().to_string();
    }
    let mut service_ips: Vec<String> = env
        .filter(|(k, _)| k.ends_with("_SERVICE_HOST"))
        .filter(|(_, v)| v.parse::<IpAddr>().is_ok())
        .map(|(_, v)| v.clone())
        .collect();
    service_ips.sort();
    service_ips.dedup();
    NetworkInfoResponse {
        search: conf.search.clone(),
        nameservers: conf.nameservers.iter().map(ToString::to_string).collect(),
        ndots: conf.ndots,
        pod_ip,
        service_ips,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_resolv_conf_parses() {
        let conf = ResolvConf::parse(
            "search ns.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n",
        );
        assert_eq!(
            conf.nameservers,
            vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(conf.search.len(), 3);
        assert_eq!(conf.ndots, 5);
    }

    /// A UDP flow: datagrams go to the destination one by one and its
    /// answers come back as messages; the flow ends with the workstation's
    /// stream.
    #[tokio::test]
    async fn a_udp_flow_is_relayed_datagram_by_datagram() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dest = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let mut answer = b"echo ".to_vec();
                answer.extend_from_slice(&buf[..n]);
                let _ = echo.send_to(&answer, from).await;
            }
        });
        let (to_dest, inbound) = mpsc::channel(4);
        let (outbound, mut answers) = mpsc::channel(4);
        let socket = dial_udp(dest).await.unwrap();
        let relay = tokio::spawn(relay_udp(
            socket,
            tokio_stream::wrappers::ReceiverStream::new(inbound),
            outbound,
        ));
        for word in ["one", "two"] {
            let data = Bytes::from_static(word.as_bytes());
            to_dest.send(Ok(Chunk { data })).await.unwrap();
            let answer = tokio::time::timeout(Duration::from_secs(10), answers.recv())
                .await
                .expect("an answer")
                .unwrap()
                .unwrap();
            assert_eq!(answer.data, format!("echo {word}").as_bytes());
        }
        drop(to_dest);
        tokio::time::timeout(Duration::from_secs(10), relay)
            .await
            .expect("the relay ends with the stream")
            .unwrap();
    }

    /// A query is relayed to the nameserver and its answer returned whole.
    #[tokio::test]
    async fn a_query_is_relayed_over_udp() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            let mut answer = buf[..n].to_vec();
            answer[2] |= 0x80;
            server.send_to(&answer, from).await.unwrap();
        });
        // Port 53 is hard-wired: ask the relay's helpers directly.
        let query = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1];
        let answer = udp_query(addr, &query).await.unwrap();
        assert_eq!(answer[..2], query[..2]);
        assert_eq!(answer[2] & 0x80, 0x80);
    }
}
