//! tpr's resolver in the namespace (127.0.0.53, UDP and TCP), named by the
//! namespace's resolv.conf with the pod's search list and `ndots`, so the
//! process's libc expands names exactly as the pod's does.
//!
//! A wire-level forwarder rather than a DNS library: answers are relayed as
//! the nameserver wrote them, so only the question (to route) and the
//! answers' addresses and TTLs (to learn cluster addresses, to cache) are
//! read. Routing by name:
//! - `host.tpr.internal`: the host's localhost, answered here;
//! - a name under one of the pod's search domains (`svc.cluster.local`,
//!   `<ns>.svc.cluster.local`, ...), or the reverse name of a cluster
//!   address: the pod's nameserver, through the agent (`Resolve`);
//! - anything else: the host's nameservers, from the host.
//!
//! Answers are cached for their TTL (at most 30 s; NXDOMAIN 5 s), so a
//! repeated name costs no round trip to the cluster.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tpr_schema::proto::{ResolveRequest, agent_client::AgentClient};

use super::dns_wire::{self as wire, Question};
use super::{HOST_ADDR, HOST_ALIAS, Shared, lock};

/// The longest a query waits for the host's nameservers (each).
const HOST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_TTL: Duration = Duration::from_secs(30);
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// A UDP flow to a cluster nameserver with no query for this long ends.
const FLOW_IDLE: Duration = Duration::from_secs(30);

type Cache = Mutex<HashMap<Question, (Instant, Vec<u8>)>>;

fn cache() -> &'static Cache {
    // One cache per tpr: keys are whole names, the same in every namespace
    // of one project except the first search domain, which is in the name.
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    CACHE.get_or_init(Cache::default)
}

/// Whether `name` is the cluster's: under a search domain of the pod, or
/// the reverse name of a cluster address.
fn is_cluster_name(name: &str, shared: &Shared) -> bool {
    if let Some(ip) = wire::reverse_ip(name) {
        return shared.routes.is_cluster(ip);
    }
    shared
        .view
        .search()
        .iter()
        .any(|domain| name == domain || name.ends_with(&format!(".{domain}")))
}

/// The answer to one query (never fails: an error is a SERVFAIL).
pub async fn answer(query: &[u8], shared: &Shared) -> Vec<u8> {
    shared.stats.dns_queries.fetch_add(1, Ordering::Relaxed);
    let Some((question, _)) = wire::question(query) else {
        return wire::respond(query, wire::RCODE_SERVFAIL, &[], 0);
    };
    if question.name == HOST_ALIAS {
        return wire::address_answer(query, question.qtype, HOST_ADDR);
    }
    if let Some((expires, cached)) = lock(cache()).get(&question)
        && Instant::now() < *expires
    {
        return wire::with_id(cached, query);
    }
    let cluster = is_cluster_name(&question.name, shared);
    let asked = if cluster {
        ask_agent(query, shared).await
    } else {
        ask_host(query, shared).await
    };
    match asked {
        Ok(answer) => {
            let (ips, ttl) = wire::answers(&answer);
            if cluster {
                shared.routes.learn(&ips);
            }
            let keep = match wire::rcode(&answer) {
                0 => ttl.map_or(NEGATIVE_TTL, |t| {
                    Duration::from_secs(u64::from(t)).min(MAX_TTL)
                }),
                wire::RCODE_NXDOMAIN => NEGATIVE_TTL,
                _ => Duration::ZERO,
            };
            if !keep.is_zero() {
                let mut cache = lock(cache());
                // Bounded: old entries go when it is full.
                if cache.len() > 10_000 {
                    let now = Instant::now();
                    cache.retain(|_, (expires, _)| *expires > now);
                }
                cache.insert(question, (Instant::now() + keep, answer.clone()));
            }
            answer
        }
        Err(reason) => {
            shared.failed(format!("dns {}", question.name), reason);
            wire::respond(query, wire::RCODE_SERVFAIL, &[], 0)
        }
    }
}

async fn ask_agent(query: &[u8], shared: &Shared) -> Result<Vec<u8>, String> {
    let (pod, channel) = shared.egress()?;
    let answer = AgentClient::new(channel)
        .resolve(ResolveRequest {
            query: query.to_vec(),
        })
        .await
        .map_err(|status| format!("through the agent in pod {pod}: {}", status.message()))?;
    Ok(answer.into_inner().answer)
}

async fn ask_host(query: &[u8], shared: &Shared) -> Result<Vec<u8>, String> {
    let mut last = "the host has no nameserver".to_string();
    for server in &shared.host_nameservers {
        match tokio::time::timeout(HOST_TIMEOUT, udp_query(*server, query)).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => last = format!("host nameserver {server}: {e}"),
            Err(_) => last = format!("host nameserver {server}: no answer"),
        }
    }
    Err(last)
}

async fn udp_query(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
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
        if n >= 12 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// The UDP side: each query answered on its own task.
pub async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0; 65_535];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (socket, shared) = (socket.clone(), shared.clone());
        tokio::spawn(async move {
            let mut reply = answer(&query, &shared).await;
            if reply.len() > wire::udp_limit(&query) {
                reply = wire::truncated(&reply);
            }
            let _ = socket.send_to(&reply, from).await;
        });
    }
}

/// The TCP side (a truncated UDP answer is asked again here).
pub async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok(len) = tcp.read_u16().await else {
                    return;
                };
                let mut query = vec![0; usize::from(len)];
                if tcp.read_exact(&mut query).await.is_err() {
                    return;
                }
                let reply = answer(&query, &shared).await;
                let Ok(len) = u16::try_from(reply.len()) else {
                    return;
                };
                let mut message = len.to_be_bytes().to_vec();
                message.extend_from_slice(&reply);
                if tcp.write_all(&message).await.is_err() {
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
            let answer = answer(&query, &shared).await;
            let _ = reply.send(&answer);
        });
    }
}
