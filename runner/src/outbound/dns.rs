//! tpr's resolver in the namespace (127.0.0.53, UDP and TCP), named by the
//! namespace's resolv.conf with the pod's search list and `ndots`, so the
//! process's libc expands names exactly as the pod's does.
//!
//! A forwarder, not a recursive resolver: answers are relayed as the
//! nameserver wrote them, and only the question (to route) and the answers'
//! addresses and TTLs (to learn cluster addresses, to cache) are read
//! (`dns_wire`, with hickory-proto). Routing by name:
//! - `host.tpr.internal`: the host's localhost, answered here;
//! - a name under one of the pod's search domains (`svc.cluster.local`,
//!   `<ns>.svc.cluster.local`, ...), or the reverse name of a cluster
//!   address: the pod's nameserver, through the agent (`Resolve`);
//! - anything else: the host's nameservers, from the host.
//!
//! An answer must match its query (id and question), as a stub resolver
//! checks. Answers are cached for their TTL (at most 30 s; NXDOMAIN 5 s),
//! so a repeated name costs no round trip to the cluster; a cached answer
//! is sent with its TTLs counted down and the asker's id and letter case.
//! A truncated answer is not cached: the asker asks again over TCP, and a
//! TCP query is asked of the host over TCP (the agent asks the pod's
//! nameserver over TCP itself when its UDP answer is truncated).

use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tpr_schema::proto::{ResolveRequest, agent_client::AgentClient};

use super::dns_wire as wire;
use super::{HOST_ADDR, HOST_ADDR6, HOST_ALIAS, Shared, lock};

/// The longest a query waits for the host's nameservers (each).
const HOST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_TTL: Duration = Duration::from_secs(30);
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// A UDP flow to a cluster nameserver with no query for this long ends.
const FLOW_IDLE: Duration = Duration::from_secs(30);
/// The pause after a failed receive or accept: an error that lasts is not
/// a busy loop.
const ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A cached answer, and what was read of it when it came (so a hit
/// decodes nothing).
struct Entry {
    came: Instant,
    expires: Instant,
    answer: Vec<u8>,
    read: wire::Answer,
}

type Cache = Mutex<HashMap<wire::Key, Entry>>;

fn cache() -> &'static Cache {
    // One cache per tpr: keys are whole names, the same in every namespace
    // of one project except the first search domain, which is in the name.
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    CACHE.get_or_init(Cache::default)
}

/// How a query came. A TCP query is asked of the host over TCP too, so an
/// answer too large for UDP arrives whole.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Whether `name` is the cluster's: under a search domain of the pod, or
/// the reverse name of a cluster address.
fn is_cluster_name(name: &str, shared: &Shared) -> bool {
    if let Some(ip) = wire::reverse_ip(name) {
        return shared.routes.is_cluster(ip);
    }
    shared.view.search().iter().any(|domain| {
        name.strip_suffix(domain.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
    })
}

/// The answer to one query: an error is a SERVFAIL, a query whose question
/// does not read a FORMERR (RFC 1035 4.1.1); `None` for one without even
/// a header (nothing to answer: dropped, as nameservers do).
pub async fn answer(query: &[u8], shared: &Shared, over: Transport) -> Option<Vec<u8>> {
    shared.stats.dns_queries.fetch_add(1, Ordering::Relaxed);
    if query.len() < wire::HEADER_LEN {
        return None;
    }
    let Some(asked) = wire::read_query(query) else {
        return Some(wire::respond(query, wire::RCODE_FORMERR, &[], 0));
    };
    let question = &asked.key.question;
    if question.name == HOST_ALIAS {
        return Some(wire::address_answer(
            query,
            question.qtype,
            HOST_ADDR,
            HOST_ADDR6,
        ));
    }
    let cluster = is_cluster_name(&question.name, shared);
    let now = Instant::now();
    if let Some(entry) = lock(cache()).get(&asked.key).filter(|e| now < e.expires) {
        // The cache is every namespace's, the routes each one's own.
        if cluster {
            shared.routes.learn(&entry.read.ips);
        }
        let age = u32::try_from((now - entry.came).as_secs()).unwrap_or(u32::MAX);
        return Some(wire::reuse(&entry.answer, &entry.read, query, &asked, age));
    }
    let asked_of = if cluster {
        ask_agent(query, shared).await
    } else {
        ask_host(query, shared, over).await
    };
    // A stray or forged answer (another id or question) is not relayed.
    let checked = asked_of.and_then(|answer| {
        if wire::answers_query(&answer, query) {
            Ok(answer)
        } else {
            Err("an answer to another query".to_string())
        }
    });
    let answer = match checked {
        Ok(answer) => answer,
        Err(reason) => {
            shared.failed(format!("dns {}", question.name), reason);
            return Some(wire::respond(query, wire::RCODE_SERVFAIL, &[], 0));
        }
    };
    let read = wire::read_answer(&answer);
    if cluster {
        shared.routes.learn(&read.ips);
    }
    let keep = match wire::rcode(&answer) {
        // A part of an answer: the asker asks again over TCP for the whole,
        // which must not find this part here.
        _ if read.truncated => Duration::ZERO,
        ResponseCode::NoError => read.ttl.map_or(NEGATIVE_TTL, |t| {
            Duration::from_secs(u64::from(t)).min(MAX_TTL)
        }),
        wire::RCODE_NXDOMAIN => NEGATIVE_TTL,
        _ => Duration::ZERO,
    };
    if !keep.is_zero() {
        let came = Instant::now();
        let mut cache = lock(cache());
        // Bounded: old entries go when it is full.
        if cache.len() > 10_000 {
            cache.retain(|_, entry| entry.expires > came);
        }
        let entry = Entry {
            came,
            expires: came + keep,
            answer: answer.clone(),
            read,
        };
        cache.insert(asked.key, entry);
    }
    Some(answer)
}

async fn ask_agent(query: &[u8], shared: &Shared) -> Result<Vec<u8>, String> {
    // The agent asks again over TCP when the pod's nameserver truncates,
    // so its answer is whole whatever the asker's transport.
    let (pod, channel) = shared.egress()?;
    let answer = AgentClient::new(channel)
        .resolve(ResolveRequest {
            query: query.to_vec(),
        })
        .await
        .map_err(|status| format!("through the agent in pod {pod}: {}", status.message()))?;
    Ok(answer.into_inner().answer)
}

async fn ask_host(query: &[u8], shared: &Shared, over: Transport) -> Result<Vec<u8>, String> {
    let mut last = "the host has no nameserver".to_string();
    for server in &shared.host_nameservers {
        let asked = match over {
            Transport::Udp => tokio::time::timeout(HOST_TIMEOUT, udp_query(*server, query)).await,
            Transport::Tcp => tokio::time::timeout(HOST_TIMEOUT, tcp_query(*server, query)).await,
        };
        match asked {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => last = format!("host nameserver {server}: {e}"),
            Err(_) => last = format!("host nameserver {server}: no answer"),
        }
    }
    Err(last)
}

async fn udp_query(server: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0; 65_535];
    loop {
        let n = socket.recv(&mut buf).await?;
        // Anything but the answer (a stray or a forged one) is ignored, the
        // wait for the answer going on, as a stub resolver's does.
        if wire::answers_query(&buf[..n], query) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp_query(server: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(server).await?;
    write_message(&mut tcp, query).await?;
    read_message(&mut tcp).await
}

/// One DNS message over TCP: its length in two bytes, then it (RFC 1035
/// 4.2.2).
async fn read_message(tcp: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut message = vec![0; usize::from(tcp.read_u16().await?)];
    tcp.read_exact(&mut message).await?;
    Ok(message)
}

async fn write_message(tcp: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "a DNS message over 64 KiB"))?;
    tcp.write_all(&[&len.to_be_bytes()[..], message].concat())
        .await
}

/// `reply` as a UDP answer to `query`: cut to its question with TC when
/// longer than the asker takes (it then asks again over TCP).
fn fit_udp(query: &[u8], reply: Vec<u8>) -> Vec<u8> {
    // Every asker takes 512 bytes: only a longer answer reads the query's
    // EDNS size.
    if reply.len() > wire::UDP_DEFAULT && reply.len() > wire::udp_limit(query) {
        wire::truncated(&reply)
    } else {
        reply
    }
}

/// The UDP side: each query answered on its own task.
pub async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0; 65_535];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => {
                continue;
            }
            Err(_) => {
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let (socket, shared) = (socket.clone(), shared.clone());
        tokio::spawn(async move {
            if let Some(reply) = answer(&query, &shared, Transport::Udp).await {
                let _ = socket.send_to(&fit_udp(&query, reply), from).await;
            }
        });
    }
}

/// The TCP side (a truncated UDP answer is asked again here).
pub async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            tokio::time::sleep(ERROR_PAUSE).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Ok(query) = read_message(&mut tcp).await {
                let Some(reply) = answer(&query, &shared, Transport::Tcp).await else {
                    continue;
                };
                if write_message(&mut tcp, &reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// A UDP flow to a cluster nameserver seen by the stack: each datagram is
/// a query answered through the agent, each on its own task (a resolver
/// asks A and AAAA at once). The flow ends once idle.
pub async fn serve_flow(mut flow: super::net::UdpFlow, shared: Arc<Shared>) {
    while let Ok(Some(query)) = tokio::time::timeout(FLOW_IDLE, flow.recv()).await {
        let (reply, shared) = (flow.reply(), shared.clone());
        tokio::spawn(async move {
            if let Some(answer) = answer(&query, &shared, Transport::Udp).await {
                let _ = reply.send(&fit_udp(&query, answer));
            }
        });
    }
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
