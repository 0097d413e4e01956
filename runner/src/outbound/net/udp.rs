//! UDP as the process sends it through the TUN device: a flow per
//! (process address, destination), its datagrams in order, answers sent
//! back as from the destination.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::packet;
use super::{Key, Link};

/// Datagrams queued for a flow's task; more are dropped, as a full socket
/// buffer drops them.
pub const QUEUE: usize = 64;

/// One flow: datagrams from the process, and its [`UdpReply`].
pub struct UdpFlow {
    rx: mpsc::Receiver<Bytes>,
    reply: UdpReply,
    id: u64,
}

/// Sends datagrams back to the process as from the flow's destination.
#[derive(Clone)]
pub struct UdpReply {
    link: Arc<Link>,
    key: Key,
}

impl UdpFlow {
    pub fn new(link: Arc<Link>, key: Key, id: u64) -> (UdpFlow, mpsc::Sender<Bytes>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let flow = UdpFlow {
            rx,
            reply: UdpReply { link, key },
            id,
        };
        (flow, tx)
    }

    pub fn dest(&self) -> SocketAddr {
        self.reply.key.dest
    }

    /// The next datagram from the process.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    pub fn reply(&self) -> UdpReply {
        self.reply.clone()
    }
}

impl Drop for UdpFlow {
    fn drop(&mut self) {
        let _ = self.reply.link.gone.send((self.reply.key, self.id));
    }
}

impl UdpReply {
    /// One datagram to the process. Larger than the link's MTU is an
    /// error: IP fragments are not made.
    pub fn send(&self, payload: &[u8]) -> io::Result<()> {
        let max = packet::max_payload(self.link.mtu, self.key.process.is_ipv6(), false);
        if payload.len() > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a datagram of {} bytes exceeds the link's {max}",
                    payload.len()
                ),
            ));
        }
        let mut header = [0u8; packet::MAX_HEADER];
        let n = packet::udp_header(&mut header, self.key.dest, self.key.process, payload);
        self.link
            .device
            .send(&[IoSlice::new(&header[..n]), IoSlice::new(payload)])
    }
}
