//! Where a UDP flow of the namespace goes, as a connection does
//! ([`super::stack`]): DNS to a cluster nameserver is answered by tpr's
//! resolver; other datagrams to a cluster address are sent by the agent
//! (`DialUdp`, from the pod's address); to `host.tpr.internal` on the
//! host's localhost; anything else from the host. A flow ends once idle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Request;
use tpr_schema::proto::{self, Chunk, agent_client::AgentClient};

use super::net::UdpFlow;
use super::stack::{Via, via};
use super::{Shared, dns};

/// A flow with no datagram either way for this long ends (a NAT's usual
/// timeout); the process's next datagram starts a new one.
const IDLE: Duration = Duration::from_secs(30);

pub async fn flow(flow: UdpFlow, shared: Arc<Shared>) {
    let dest = flow.dest();
    if dest.port() == 53 && shared.routes.is_cluster(dest.ip()) {
        return dns::serve_flow(flow, shared).await;
    }
    let relayed = match via(dest, &shared) {
        Via::Agent => through_agent(flow, &shared).await,
        Via::HostLoopback(addr) => from_host(flow, addr).await,
        Via::Host => from_host(flow, dest).await,
    };
    if let Err(reason) = relayed {
        shared.failed(format!("udp {dest}"), reason);
    }
}

/// A `DialUdp` stream: each message one datagram, each way.
async fn through_agent(mut flow: UdpFlow, shared: &Shared) -> Result<(), String> {
    let (pod, channel) = shared.egress()?;
    let dest = flow.dest();
    let (tx, rx) = mpsc::channel::<Chunk>(super::net::udp::QUEUE);
    let mut request = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let value = dest.to_string().parse().map_err(|_| "not a header value")?;
    request.metadata_mut().insert(proto::DEST_METADATA, value);
    // The call's headers come back only once the agent has its socket, but
    // the first datagram is already queued: no round trip before it goes.
    if let Some(first) = flow.recv().await {
        let _ = tx.try_send(Chunk { data: first });
    }
    let mut answers = AgentClient::new(channel)
        .dial_udp(request)
        .await
        .map_err(|status| match status.message() {
            // An agent older than DialUdp says only UNIMPLEMENTED.
            "" => format!("through the agent in pod {pod}: {:?}", status.code()),
            message => format!("through the agent in pod {pod}: {message}"),
        })?
        .into_inner();
    let reply = flow.reply();
    let idle = tokio::time::sleep(IDLE);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            datagram = flow.recv() => match datagram {
                Some(data) => {
                    if tx.send(Chunk { data }).await.is_err() {
                        return Ok(());
                    }
                }
                None => return Ok(()),
            },
            answer = answers.message() => match answer {
                Ok(Some(chunk)) => {
                    let _ = reply.send(&chunk.data);
                }
                // The agent ended the flow (idle there too, or the tunnel
                // went): the process's next datagram starts a new one.
                Ok(None) | Err(_) => return Ok(()),
            },
            () = &mut idle => return Ok(()),
        }
        idle.as_mut().reset(Instant::now() + IDLE);
    }
}

/// A UDP socket of this host connected to `dest`.
async fn from_host(mut flow: UdpFlow, dest: SocketAddr) -> Result<(), String> {
    let bind = if dest.is_ipv4() {
        SocketAddr::from(([0u8; 4], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("from this host: {e}"))?;
    socket
        .connect(dest)
        .await
        .map_err(|e| format!("from this host: {e}"))?;
    let reply = flow.reply();
    let mut buf = vec![0u8; 65_535];
    let idle = tokio::time::sleep(IDLE);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            datagram = flow.recv() => match datagram {
                Some(data) => {
                    // Refused or lost: as UDP may be.
                    let _ = socket.send(&data).await;
                }
                None => return Ok(()),
            },
            received = socket.recv(&mut buf) => {
                // An error is an earlier datagram's ICMP answer: go on.
                if let Ok(n) = received {
                    let _ = reply.send(&buf[..n]);
                }
            }
            () = &mut idle => return Ok(()),
        }
        idle.as_mut().reset(Instant::now() + IDLE);
    }
}
