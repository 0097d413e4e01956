//! The userspace TCP/IP stack behind the namespace's TUN device.
//!
//! `ipstack` (chosen over smoltcp: it hands out each TCP connection, to any
//! destination, as a tokio `AsyncRead + AsyncWrite` stream with no socket
//! table or poll loop of ours; it is maintained and small: etherparse,
//! tokio) terminates the process's connections. Each is then dialled where
//! it belongs: a cluster address through the agent (`DialOut`, the pod is
//! the source), `host.tpr.internal` on the host's localhost, anything else
//! from the host. A failed dial ends the process's connection with a reset
//! at once and is reported (`outbound_failed`).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ipstack::{IpStack, IpStackConfig, IpStackStream, TcpConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tpr_schema::proto::{self, pipe};
use tracing::debug;

use super::tun::Device;
use super::{HOST_ADDR, Shared, dns};

/// How long a dial from the host may take before the process's connection
/// is reset (a dial through the agent has the agent's own limit).
const HOST_DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Copy buffer per direction: large reads, few trips through the stack.
const BUFFER: usize = 64 << 10;

/// Idle connections live as long as the process keeps them (ipstack's own
/// default closes them after a minute of silence).
const IDLE_TIMEOUT: Duration = Duration::from_secs(2 * 60 * 60);

pub async fn run(device: Device, mtu: u16, shared: Arc<Shared>) {
    let mut config = IpStackConfig::default();
    config.mtu_unchecked(mtu);
    let mut tcp = TcpConfig::default();
    tcp.timeout = IDLE_TIMEOUT;
    config.with_tcp_config(tcp);
    let mut stack = IpStack::new(config, device);
    while let Ok(stream) = stack.accept().await {
        match stream {
            IpStackStream::Tcp(tcp) => {
                tokio::spawn(tcp_connection(tcp, shared.clone()));
            }
            IpStackStream::Udp(udp) => {
                tokio::spawn(udp_flow(udp, shared.clone()));
            }
            // ICMP and the like: nothing answers them.
            IpStackStream::UnknownTransport(_) | IpStackStream::UnknownNetwork(_) => {}
        }
    }
}

/// Where a destination is dialled.
enum Via {
    Agent,
    HostLoopback(SocketAddr),
    Host,
}

fn via(dest: SocketAddr, shared: &Shared) -> Via {
    if dest.ip() == HOST_ADDR {
        Via::HostLoopback(SocketAddr::from((Ipv4Addr::LOCALHOST, dest.port())))
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

async fn tcp_connection(mut tcp: ipstack::IpStackTcpStream, shared: Arc<Shared>) {
    let dest = tcp.peer_addr();
    let _open = Open::new(&shared);
    let result = match via(dest, &shared) {
        Via::Agent => match dial_agent(&shared, dest).await {
            Ok(mut remote) => relay(&mut tcp, &mut remote).await,
            Err(reason) => Err(reason),
        },
        Via::HostLoopback(addr) => match dial_host(addr).await {
            Ok(mut remote) => relay(&mut tcp, &mut remote).await,
            Err(reason) => Err(reason),
        },
        Via::Host => match dial_host(dest).await {
            Ok(mut remote) => relay(&mut tcp, &mut remote).await,
            Err(reason) => Err(reason),
        },
    };
    if let Err(reason) = result {
        shared.failed(dest.to_string(), reason);
        // The process's connection ends at once (ipstack has no reset to
        // send): its FIN, and the stream is dropped soon after either way.
        let _ = tokio::time::timeout(Duration::from_secs(30), close(&mut tcp)).await;
    }
}

/// A `DialOut` stream through the egress agent, as a byte stream.
async fn dial_agent(shared: &Shared, dest: SocketAddr) -> Result<pipe::Pipe, String> {
    let (pod, channel) = shared.egress()?;
    let (inbound, outbound) = pipe::call(
        &channel,
        pipe::DIAL_OUT,
        (proto::DEST_METADATA, &dest.to_string()),
    )
    .await
    .map_err(|status| format!("through the agent in pod {pod}: {}", status.message()))?;
    Ok(pipe::Pipe::new(inbound, outbound))
}

async fn dial_host(dest: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(HOST_DIAL_TIMEOUT, TcpStream::connect(dest)).await {
        Ok(Ok(tcp)) => {
            pipe::tune_local(&tcp);
            Ok(tcp)
        }
        Ok(Err(e)) => Err(format!("from this host: {e}")),
        Err(_) => Err(format!(
            "from this host: no answer within {HOST_DIAL_TIMEOUT:?}"
        )),
    }
}

/// Relays until both directions ended. Errors after the dial are the
/// connection's own ending (a reset by either side), not a failure to
/// report.
async fn relay<A, B>(process: &mut A, remote: &mut B) -> Result<(), String>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (process_read, mut process_write) = tokio::io::split(process);
    let (remote_read, mut remote_write) = tokio::io::split(remote);
    let up = async {
        let mut from = BufReader::with_capacity(BUFFER, process_read);
        let _ = tokio::io::copy_buf(&mut from, &mut remote_write).await;
        let _ = remote_write.shutdown().await;
    };
    let down = async {
        let mut from = BufReader::with_capacity(BUFFER, remote_read);
        let _ = tokio::io::copy_buf(&mut from, &mut process_write).await;
        close(&mut process_write).await;
    };
    tokio::join!(up, down);
    debug!("outbound connection ended");
    Ok(())
}

/// Sends the process its FIN. ipstack sends it only from a `poll_shutdown`
/// made while none of its data is unacknowledged, and does not poll again by
/// itself; so poll until the connection is closed, backing off to a second.
async fn close<W: AsyncWrite + Unpin>(write: &mut W) {
    let mut wait = Duration::from_millis(2);
    loop {
        if tokio::time::timeout(wait, write.shutdown()).await.is_ok() {
            return;
        }
        wait = (wait * 2).min(Duration::from_secs(1));
    }
}

/// UDP: DNS to a cluster nameserver (`dig @10.96.0.10`) is answered by the
/// resolver through the agent; other UDP is not carried (yet) and reported.
async fn udp_flow(udp: ipstack::IpStackUdpStream, shared: Arc<Shared>) {
    let dest = udp.peer_addr();
    if dest.port() == 53 && shared.routes.is_cluster(dest.ip()) {
        dns::serve_flow(udp, shared).await;
    } else {
        shared.failed(
            format!("udp {dest}"),
            "only TCP and DNS are carried out of the outbound namespace".into(),
        );
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
        let Ok((mut tcp, _)) = listener.accept().await else {
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
                    let mut remote = pipe::Pipe::new(inbound, outbound);
                    let _ = relay(&mut tcp, &mut remote).await;
                }
                Err(status) => shared.failed(
                    format!("to_pod 127.0.0.1:{port}"),
                    format!("through the agent in pod {pod}: {}", status.message()),
                ),
            }
        });
    }
}
