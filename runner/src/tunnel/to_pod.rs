//! `to_pod`: a local listener whose connections the agent relays to
//! 127.0.0.1:<port> inside the pod, so local processes reach the pod's
//! sidecars as the app does.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tpr_schema::proto::{self, pipe};
use tracing::{debug, warn};

use super::TunnelError;

/// A running relay; dropping it stops listening (open connections finish).
pub struct ToPod {
    local: SocketAddr,
    task: JoinHandle<()>,
}

impl ToPod {
    /// Listens on `listen` and relays each connection to the pod's `port`.
    pub async fn start(
        channel: Channel,
        listen: SocketAddr,
        port: u16,
    ) -> Result<Self, TunnelError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| TunnelError::Io {
                what: format!("cannot listen on {listen} for to_pod port {port}"),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| TunnelError::Io {
            what: "local address".into(),
            source,
        })?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                pipe::tune_local(&tcp);
                let channel = channel.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay(channel, tcp, port).await {
                        warn!(%peer, port, "to_pod connection failed: {e}");
                    }
                });
            }
        });
        Ok(ToPod { local, task })
    }

    /// The local address (useful when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for ToPod {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(channel: Channel, tcp: tokio::net::TcpStream, port: u16) -> Result<(), TunnelError> {
    let (inbound, tx) = pipe::call(
        &channel,
        pipe::DIAL_POD,
        (proto::PORT_METADATA, &port.to_string()),
    )
    .await
    .map_err(|status| TunnelError::Call {
        call: "DialPod",
        status,
    })?;
    pipe::splice(tcp, inbound, tx)
        .await
        .map_err(|source| TunnelError::Io {
            what: format!("to_pod relay to port {port}"),
            source,
        })?;
    debug!(port, "to_pod connection closed");
    Ok(())
}
