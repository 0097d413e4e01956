//! The userspace TCP/IP stack behind the namespace's TUN device: tpr is
//! every server the processes reach. One task reads the device and hands
//! each packet to its flow: a TCP connection ([`tcp`]) or a UDP flow
//! ([`udp`]); a new one goes to `incoming`, whose caller decides where it
//! is dialled. Packets out are written by whoever makes them.
//!
//! Our own rather than a crate's: the general-purpose stacks either
//! resend only when the process sends again and overrun its window (a slow
//! reader stalled for seconds), or poll every socket on every packet with
//! fixed buffers per socket; and neither can answer a SYN only once the
//! destination answered, which is what gives the process the pod's
//! ECONNREFUSED.

pub mod packet;
mod tcb;
pub mod tcp;
pub mod udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use tracing::debug;

use super::tun::Device;
use packet::{ACK, RST, SYN, Segment, Transport};
pub use tcp::{PendingTcp, TcpStream};
pub use udp::UdpFlow;

/// How often timers are looked at while any is armed.
const TICK: Duration = Duration::from_millis(50);
/// Flows at most (a process opening connections without end is refused).
const MAX_FLOWS: usize = 100_000;

/// A flow: the process's address and the destination it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub udp: bool,
    pub process: SocketAddr,
    pub dest: SocketAddr,
}

/// What every flow of a stack shares.
pub struct Link {
    pub device: Device,
    pub mtu: usize,
    /// A flow that ended asks the stack's task to forget it (by its id: a
    /// new flow may have the same key).
    pub gone: mpsc::UnboundedSender<(Key, u64)>,
    /// A timer was armed while none was.
    pub timers: Notify,
}

/// A new flow from the process.
pub enum Incoming {
    Tcp(PendingTcp),
    Udp(UdpFlow),
}

enum Flow {
    Tcp(tcb::TcbRef),
    Udp(mpsc::Sender<Bytes>),
}

/// Reads the device until it fails; hands each new flow to `incoming`.
/// `flows` counts the flows in the table.
pub async fn run(
    device: Device,
    mtu: u16,
    flows_count: Arc<AtomicUsize>,
    mut incoming: impl FnMut(Incoming),
) {
    let (gone, mut gone_rx) = mpsc::unbounded_channel();
    let link = Arc::new(Link {
        device,
        mtu: usize::from(mtu),
        gone,
        timers: Notify::new(),
    });
    let mut table = Table {
        link: link.clone(),
        flows: HashMap::new(),
        next_id: 0,
    };
    let mut buf = vec![0u8; usize::from(mtu)];
    let mut ticking = false;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Forget ended flows first: their memory goes now.
            biased;
            Some((key, id)) = gone_rx.recv() => table.forget(key, id),
            read = link.device.recv(&mut buf) => match read {
                Ok(n) => table.packet(&buf[..n], &mut incoming),
                Err(e) => {
                    debug!("the TUN device failed: {e}");
                    return;
                }
            },
            _ = tick.tick(), if ticking => ticking = table.tick(),
            () = link.timers.notified(), if !ticking => ticking = true,
        }
        flows_count.store(table.flows.len(), Ordering::Relaxed);
    }
}

struct Table {
    link: Arc<Link>,
    flows: HashMap<Key, (u64, Flow)>,
    next_id: u64,
}

impl Table {
    fn forget(&mut self, key: Key, id: u64) {
        if self.flows.get(&key).is_some_and(|(i, _)| *i == id) {
            self.flows.remove(&key);
        }
    }

    fn packet(&mut self, data: &[u8], incoming: &mut impl FnMut(Incoming)) {
        let Some(p) = packet::parse(data) else {
            return; // ICMP, fragments, ...: nothing here answers them
        };
        match p.transport {
            Transport::Tcp(seg) => self.tcp(p.src, p.dst, &seg, incoming),
            Transport::Udp(payload) => self.udp(p.src, p.dst, payload, incoming),
        }
    }

    fn tcp(
        &mut self,
        process: SocketAddr,
        dest: SocketAddr,
        seg: &Segment,
        incoming: &mut impl FnMut(Incoming),
    ) {
        let key = Key {
            udp: false,
            process,
            dest,
        };
        let new_syn = seg.has(SYN) && !seg.has(ACK) && !seg.has(RST);
        if let Some((_, Flow::Tcp(tcb))) = self.flows.get(&key) {
            let mut t = tcb::lock(tcb);
            // A closed connection's port used again before it was forgotten.
            if !(t.is_closed() && new_syn) {
                t.on_segment(seg);
                return;
            }
        }
        if !new_syn || self.flows.len() >= MAX_FLOWS {
            if !seg.has(RST) {
                reset_stray(&self.link, key, seg);
            }
            return;
        }
        let id = self.id();
        let tcb = tcb::Tcb::new(self.link.clone(), key, id, seg);
        self.flows.insert(key, (id, Flow::Tcp(tcb.clone())));
        incoming(Incoming::Tcp(PendingTcp::new(tcb, key)));
    }

    fn udp(
        &mut self,
        process: SocketAddr,
        dest: SocketAddr,
        payload: &[u8],
        incoming: &mut impl FnMut(Incoming),
    ) {
        let key = Key {
            udp: true,
            process,
            dest,
        };
        let datagram = Bytes::copy_from_slice(payload);
        let sent = match self.flows.get(&key) {
            Some((_, Flow::Udp(tx))) => tx.try_send(datagram),
            _ if self.flows.len() >= MAX_FLOWS => return,
            _ => Err(mpsc::error::TrySendError::Closed(datagram)),
        };
        // Full: dropped, as by a socket buffer. Closed: new, or its task
        // ended and a new flow takes over.
        if let Err(mpsc::error::TrySendError::Closed(datagram)) = sent {
            self.new_udp(key, datagram, incoming);
        }
    }

    fn new_udp(&mut self, key: Key, datagram: Bytes, incoming: &mut impl FnMut(Incoming)) {
        let id = self.id();
        let (flow, tx) = UdpFlow::new(self.link.clone(), key, id);
        let _ = tx.try_send(datagram);
        self.flows.insert(key, (id, Flow::Udp(tx)));
        incoming(Incoming::Udp(flow));
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Runs the connections' timers; whether any is still armed.
    fn tick(&mut self) -> bool {
        let now = Instant::now();
        let mut armed = false;
        for (_, flow) in self.flows.values() {
            if let Flow::Tcp(tcb) = flow {
                armed |= tcb::lock(tcb).on_tick(now);
            }
        }
        armed
    }
}

/// Answers a segment of no connection (the process's view is stale, or the
/// table is full) with a reset, as a host with no such socket does.
fn reset_stray(link: &Link, key: Key, seg: &Segment) {
    let (seq, ack, flags) = if seg.has(ACK) {
        (seg.ack, 0, RST)
    } else {
        let len =
            seg.payload.len() as u32 + u32::from(seg.has(SYN)) + u32::from(seg.has(packet::FIN));
        (0, seg.seq.wrapping_add(len), RST | ACK)
    };
    let tcp = packet::Tcp {
        seq,
        ack,
        flags,
        window: 0,
        syn_options: None,
    };
    let mut header = [0u8; packet::MAX_HEADER];
    let n = packet::tcp_header(&mut header, key.dest, key.process, &tcp, &[]);
    let _ = link.device.send(&[std::io::IoSlice::new(&header[..n])]);
}
