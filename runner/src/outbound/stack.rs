//! Where each connection of the namespace's stack ([`super::net`]) goes
//! (UDP: [`super::udp`]): a cluster address is dialled by the agent
//! (`DialOut`, the pod is the source), `host.tpr.internal` on the host's
//! localhost (127.0.0.1, or ::1 for its IPv6 address), anything else from
//! the host; IPv6 as IPv4. The process's SYN is answered only once the
//! destination answered, so a refusal there is a refusal here
//! (ECONNREFUSED from `connect()`), reported as `outbound_failed`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tpr_schema::proto::{self, pipe};
use tracing::debug;

use super::net::{self, Incoming, PendingTcp};
use super::relay::{self, Remote};
use super::tun::Device;
use super::{HOST_ADDR, HOST_ADDR6, Shared};

/// How long a dial from the host may take before the process's connection
/// is refused (a dial through the agent has the agent's own limit).
const HOST_DIAL_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(device: Device, mtu: u16, shared: Arc<Shared>) {
    let flows = shared.stats.flows.clone();
    net::run(device, mtu, flows, |flow| match flow {
        Incoming::Tcp(pending) => {
            tokio::spawn(tcp_connection(pending, shared.clone()));
        }
        Incoming::Udp(flow) => {
            tokio::spawn(super::udp::flow(flow, shared.clone()));
        }
    })
    .await;
}

/// Where a destination is dialled.
pub(super) enum Via {
    Agent,
    HostLoopback(SocketAddr),
    Host,
}

pub(super) fn via(dest: SocketAddr, shared: &Shared) -> Via {
    if dest.ip() == HOST_ADDR {
        Via::HostLoopback(SocketAddr::from((Ipv4Addr::LOCALHOST, dest.port())))
    } else if dest.ip() == HOST_ADDR6 {
        Via::HostLoopback(SocketAddr::from((Ipv6Addr::LOCALHOST, dest.port())))
    } else if shared.routes.is_cluster(dest.ip()) {
        Via::Agent
    } else {
        Via::Host
    }
}

/// Counts a connection open while it lives.
struct Open<'a>(&'a Shared);

impl<'a> Open<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.stats.open.fetch_add(1, Ordering::Relaxed);
        shared.stats.connections.fetch_add(1, Ordering::Relaxed);
        Open(shared)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn tcp_connection(pending: PendingTcp, shared: Arc<Shared>) {
    let dest = pending.dest();
    let _open = Open::new(&shared);
    let dialled = match via(dest, &shared) {
        Via::Agent => dial_agent(&shared, dest).await,
        Via::HostLoopback(addr) => dial_host(addr).await,
        Via::Host => dial_host(dest).await,
    };
    match dialled {
        Ok(remote) => {
            relay::run(pending.accept(), remote).await;
            debug!(%dest, "outbound connection ended");
        }
        Err(reason) => {
            // Reported first: whoever sees the refusal sees the count.
            shared.failed(dest.to_string(), reason);
            pending.refuse();
        }
    }
}

/// A `DialOut` stream through the egress agent.
async fn dial_agent(shared: &Shared, dest: SocketAddr) -> Result<Remote, String> {
    let (pod, channel) = shared.egress()?;
    let (inbound, outbound) = pipe::call(
        &channel,
        pipe::DIAL_OUT,
        (proto::DEST_METADATA, &dest.to_string()),
    )
    .await
    .map_err(|status| format!("through the agent in pod {pod}: {}", status.message()))?;
    Ok(Remote::Agent(inbound, outbound))
}

async fn dial_host(dest: SocketAddr) -> Result<Remote, String> {
    match tokio::time::timeout(HOST_DIAL_TIMEOUT, TcpStream::connect(dest)).await {
        Ok(Ok(tcp)) => {
            pipe::tune_local(&tcp);
            Ok(Remote::Host(tcp))
        }
        Ok(Err(e)) => Err(format!("from this host: {e}")),
        Err(_) => Err(format!(
            "from this host: no answer within {HOST_DIAL_TIMEOUT:?}"
        )),
    }
}

/// A `to_pod` port on the namespace's localhost: each connection is
/// relayed to the pod's port by the agent of `intercept` (`DialPod`).
pub async fn serve_to_pod(
    listener: TcpListener,
    port: u16,
    intercept: String,
    shared: Arc<Shared>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        let intercept = intercept.clone();
        tokio::spawn(async move {
            let Some((pod, channel)) = shared.channels.get(&intercept) else {
                shared.failed(
                    format!("to_pod 127.0.0.1:{port}"),
                    format!("not connected to the agent of intercept {intercept}"),
                );
                return;
            };
            match pipe::call(
                &channel,
                pipe::DIAL_POD,
                (proto::PORT_METADATA, &port.to_string()),
            )
            .await
            {
                Ok((inbound, outbound)) => {
                    pipe::tune_local(&tcp);
                    if let Err(e) = pipe::splice(tcp, inbound, outbound).await {
                        debug!(port, "to_pod relay ended: {e}");
                    }
                }
                Err(status) => shared.failed(
                    format!("to_pod 127.0.0.1:{port}"),
                    format!("through the agent in pod {pod}: {}", status.message()),
                ),
            }
        });
    }
}
