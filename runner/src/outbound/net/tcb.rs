//! The state of one TCP connection opened by a process in the namespace
//! (its control block): tpr is the server the process believes it reached.
//!
//! The stack's task feeds it the process's segments ([`Tcb::on_segment`])
//! and ticks its timer; the connection's own task reads and writes it
//! through its handles ([`super::tcp`]). Both send their packets straight
//! to the TUN device under the connection's lock, so no packet waits for a
//! task.
//!
//! What a link inside one machine needs, and no more: no congestion control
//! (nothing between the two ends is shared), a resend of everything in
//! flight when an ACK is late (a TUN device drops only when its queue is
//! full), no SACK or timestamps. What a peer needs to be fast, and to be
//! safe against a slow reader: window scaling, large segments, sends only
//! within the process's window with probes while it is shut, and a window
//! update as soon as the connection's reader frees room.
//!
//! Memory is held only for bytes on their way: unacknowledged data sent to
//! the process (at most [`TX_CAP`]) and data received but not yet read (at
//! most [`RX_CAP`]); an idle connection holds neither.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

use super::packet::{self, ACK, FIN, PSH, RST, SYN, Segment};
use super::{Key, Link};

/// Our receive window: what the process may send before the connection's
/// reader takes it.
pub const RX_CAP: usize = 1 << 20;
/// Unacknowledged data sent to the process, at most (its window permitting).
pub const TX_CAP: usize = 1 << 20;
/// Our window scale: `RX_CAP` must fit in 16 bits shifted by it.
const RCV_WSCALE: u8 = 5;
/// The window is updated once the reader freed this much room, so a
/// sender stopped by a full window resumes at once, without an update per
/// read.
const UPDATE_AFTER: u32 = (RX_CAP / 8) as u32;
/// The process answers within microseconds; a late ACK is a dropped packet.
const RTO_MIN: Duration = Duration::from_millis(200);
const RTO_MAX: Duration = Duration::from_secs(5);
/// Resends of the same data before the connection is given up (reset).
const MAX_RETRIES: u32 = 10;
/// The MSS a peer that sends none gets (RFC 9293 3.7.1): 576 and 1280
/// bytes packets, the least each IP version guarantees.
const DEFAULT_MSS: usize = 536;
const DEFAULT_MSS_V6: usize = 1220;

fn lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

fn gt(a: u32, b: u32) -> bool {
    lt(b, a)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The process's SYN is in; the connection's task decides
    /// ([`PendingTcp::accept`] or [`PendingTcp::refuse`]).
    Pending,
    Open,
    /// Out of the stack's table: reset, or both ends closed and acknowledged.
    Closed,
}

pub struct Tcb {
    link: Arc<Link>,
    key: Key,
    id: u64,
    state: State,
    /// The process reset the connection, or it was given up.
    reset: bool,
    // Receiving (process -> here).
    rcv_nxt: u32,
    /// The right edge of the window last advertised.
    rcv_adv: u32,
    rx: VecDeque<Bytes>,
    rx_len: usize,
    peer_fin: bool,
    /// Both ends offered window scaling.
    scaled: bool,
    // Sending (here -> process).
    iss: u32,
    snd_una: u32,
    snd_nxt: u32,
    /// Unacknowledged data, from `snd_una`.
    tx: VecDeque<Bytes>,
    tx_len: usize,
    snd_wnd: u32,
    snd_wscale: u8,
    mss: usize,
    fin_sent: bool,
    fin_acked: bool,
    dup_acks: u32,
    rto: Duration,
    /// When to resend (data in flight) or probe (window shut).
    deadline: Option<Instant>,
    retries: u32,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

pub type TcbRef = Arc<Mutex<Tcb>>;

pub fn lock(tcb: &TcbRef) -> MutexGuard<'_, Tcb> {
    tcb.lock().unwrap_or_else(|e| e.into_inner())
}

fn initial_sequence(key: &Key) -> u32 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    key.hash(&mut h);
    Instant::now().hash(&mut h);
    h.finish() as u32
}

impl Tcb {
    /// A connection for a process's SYN, pending the decision.
    pub fn new(link: Arc<Link>, key: Key, id: u64, syn: &Segment) -> TcbRef {
        let iss = initial_sequence(&key);
        let v6 = key.process.is_ipv6();
        let max = packet::max_payload(link.mtu, v6, true);
        let default_mss = if v6 { DEFAULT_MSS_V6 } else { DEFAULT_MSS };
        let rcv_nxt = syn.seq.wrapping_add(1);
        Arc::new(Mutex::new(Tcb {
            link,
            key,
            id,
            state: State::Pending,
            reset: false,
            rcv_nxt,
            rcv_adv: rcv_nxt,
            rx: VecDeque::new(),
            rx_len: 0,
            peer_fin: false,
            scaled: syn.window_scale.is_some(),
            iss,
            snd_una: iss,
            snd_nxt: iss,
            tx: VecDeque::new(),
            tx_len: 0,
            // The window of a SYN is never scaled.
            snd_wnd: u32::from(syn.window),
            snd_wscale: syn.window_scale.unwrap_or(0),
            mss: syn.mss.map_or(default_mss, usize::from).min(max),
            fin_sent: false,
            fin_acked: false,
            dup_acks: 0,
            rto: RTO_MIN,
            deadline: None,
            retries: 0,
            read_waker: None,
            write_waker: None,
        }))
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Sends one segment at `seq` with our ACK and window.
    fn send(&mut self, seq: u32, flags: u8, payload: &[u8]) {
        let window = self.window_field();
        self.emit(seq, flags, window, None, payload);
    }

    fn emit(
        &self,
        seq: u32,
        flags: u8,
        window: u16,
        syn_options: Option<(u16, Option<u8>)>,
        payload: &[u8],
    ) {
        let mut header = [0u8; packet::MAX_HEADER];
        let tcp = packet::Tcp {
            seq,
            ack: self.rcv_nxt,
            flags,
            window,
            syn_options,
        };
        let n = packet::tcp_header(&mut header, self.key.dest, self.key.process, &tcp, payload);
        // A write the device refuses is a packet lost: the timer resends.
        let _ = self
            .link
            .device
            .send(&[IoSlice::new(&header[..n]), IoSlice::new(payload)]);
    }

    /// The window to advertise, remembering its right edge. Never smaller
    /// than what was advertised (a shrinking window confuses senders).
    fn window_field(&mut self) -> u16 {
        let room = (RX_CAP - self.rx_len) as u32;
        let shift = if self.scaled { RCV_WSCALE } else { 0 };
        let field = (room >> shift).min(u32::from(u16::MAX));
        let edge = self.rcv_nxt.wrapping_add(field << shift);
        if gt(edge, self.rcv_adv) {
            self.rcv_adv = edge;
        }
        field as u16
    }

    fn send_ack(&mut self) {
        self.send(self.snd_nxt, ACK, &[]);
    }

    fn send_syn_ack(&mut self) {
        let our_mss = packet::max_payload(self.link.mtu, self.key.process.is_ipv6(), true);
        let scale = self.scaled.then_some(RCV_WSCALE);
        let window = RX_CAP.min(usize::from(u16::MAX)) as u16;
        self.emit(
            self.iss,
            SYN | ACK,
            window,
            Some((our_mss as u16, scale)),
            &[],
        );
    }

    /// Leaves the stack's table; `reset` discards what was not read.
    fn close(&mut self, reset: bool) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.deadline = None;
        self.tx.clear();
        self.tx_len = 0;
        if reset {
            self.reset = true;
            self.rx.clear();
            self.rx_len = 0;
        }
        let _ = self.link.gone.send((self.key, self.id));
        self.wake_all();
    }

    fn wake_all(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }

    pub fn abort(&mut self) {
        if self.state == State::Open {
            self.send(self.snd_nxt, RST | ACK, &[]);
        }
        self.close(true);
    }

    fn arm(&mut self) {
        if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.rto);
            self.link.timers.notify_one();
        }
    }

    /// A segment of the process's for this connection.
    pub fn on_segment(&mut self, seg: &Segment) {
        // Pending: a resent SYN waits for the decision like the first.
        if self.state != State::Open {
            return;
        }
        if seg.has(RST) {
            self.close(true);
            return;
        }
        if seg.has(SYN) {
            // Our SYN-ACK was lost: the process asks again.
            if self.snd_una == self.iss {
                self.send_syn_ack();
            }
            return;
        }
        if !seg.has(ACK) {
            return;
        }
        self.on_ack(seg);
        if self.state == State::Open {
            self.on_data(seg);
        }
        if self.peer_fin && self.fin_acked {
            self.close(false);
        }
    }

    fn on_ack(&mut self, seg: &Segment) {
        let ack = seg.ack;
        if gt(ack, self.snd_nxt) {
            // Acknowledges what was never sent: say where we are.
            self.send_ack();
            return;
        }
        let window = if self.scaled {
            u32::from(seg.window) << self.snd_wscale
        } else {
            u32::from(seg.window)
        };
        if gt(ack, self.snd_una) {
            let mut acked = ack.wrapping_sub(self.snd_una) as usize;
            if self.snd_una == self.iss {
                acked -= 1; // our SYN
            }
            let data = acked.min(self.tx_len);
            self.drop_acked(data);
            if acked > data {
                self.fin_acked = true;
            }
            self.snd_una = ack;
            self.dup_acks = 0;
            self.retries = 0;
            self.rto = RTO_MIN;
            self.deadline = None;
            if self.snd_una != self.snd_nxt {
                self.arm();
            }
            self.snd_wnd = window;
            if let Some(w) = self.write_waker.take() {
                w.wake();
            }
            return;
        }
        let duplicate = ack == self.snd_una
            && seg.payload.is_empty()
            && !seg.has(FIN)
            && window == self.snd_wnd
            && self.snd_una != self.snd_nxt;
        if duplicate {
            self.dup_acks += 1;
            // Three in a row: the head of what is in flight was lost.
            if self.dup_acks == 3 {
                self.resend(false);
            }
        }
        let opened = window > self.snd_wnd;
        self.snd_wnd = window;
        if opened && let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }

    fn drop_acked(&mut self, mut n: usize) {
        self.tx_len -= n;
        while n > 0 {
            let Some(front) = self.tx.front_mut() else {
                break;
            };
            if front.len() <= n {
                n -= front.len();
                self.tx.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    fn on_data(&mut self, seg: &Segment) {
        let fin = seg.has(FIN);
        if seg.payload.is_empty() && !fin {
            return;
        }
        if self.peer_fin {
            // A resend of what is in: the ACK was lost.
            self.send_ack();
            return;
        }
        let mut payload = seg.payload;
        if lt(seg.seq, self.rcv_nxt) {
            let old = self.rcv_nxt.wrapping_sub(seg.seq) as usize;
            if old > payload.len() {
                self.send_ack();
                return;
            }
            payload = &payload[old..];
        } else if seg.seq != self.rcv_nxt {
            // A hole before it (a dropped packet): this duplicate ACK asks
            // for it; the process resends.
            self.send_ack();
            return;
        }
        let take = payload.len().min(RX_CAP - self.rx_len);
        if take > 0 {
            self.rx.push_back(Bytes::copy_from_slice(&payload[..take]));
            self.rx_len += take;
            self.rcv_nxt = self.rcv_nxt.wrapping_add(take as u32);
        }
        if fin && take == payload.len() {
            self.peer_fin = true;
            self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
        }
        if (take > 0 || self.peer_fin)
            && let Some(w) = self.read_waker.take()
        {
            w.wake();
        }
        self.send_ack();
    }

    /// Resends from `snd_una`: everything in flight (`all`, after a
    /// timeout) or its first segment (after duplicate ACKs).
    fn resend(&mut self, all: bool) {
        if self.snd_una == self.iss {
            self.send_syn_ack();
            return;
        }
        let mut seq = self.snd_una;
        let mss = self.mss;
        let chunks: Vec<Bytes> = self.tx.iter().cloned().collect();
        'out: for chunk in chunks {
            for part in chunk.chunks(mss) {
                self.send(seq, ACK | PSH, part);
                seq = seq.wrapping_add(part.len() as u32);
                if !all {
                    break 'out;
                }
            }
        }
        if self.fin_sent && !self.fin_acked && seq == self.snd_nxt.wrapping_sub(1) {
            self.send(seq, FIN | ACK, &[]);
        }
    }

    /// The stack's timer: resends late data, probes a shut window. Returns
    /// whether the timer is still wanted.
    pub fn on_tick(&mut self, now: Instant) -> bool {
        let Some(deadline) = self.deadline else {
            return false;
        };
        if self.state != State::Open {
            self.deadline = None;
            return false;
        }
        if now < deadline {
            return true;
        }
        self.deadline = None;
        if self.snd_una != self.snd_nxt {
            self.retries += 1;
            if self.retries > MAX_RETRIES {
                self.abort();
                return false;
            }
            self.resend(true);
        } else if self.write_waker.is_some() && self.snd_wnd == 0 {
            // The window update may have been lost: an old sequence number
            // makes the process answer with its window.
            self.send(self.snd_una.wrapping_sub(1), ACK, &[]);
        } else {
            return false;
        }
        self.rto = (self.rto * 2).min(RTO_MAX);
        self.arm();
        true
    }

    /// How much of `want` bytes to send now: 0 when the window takes none
    /// (the waker is kept), or only a tiny segment while others are in
    /// flight (their ACKs will open room for a full one).
    pub fn room(&mut self, want: usize, waker: &Waker) -> io::Result<usize> {
        if self.reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if self.state != State::Open || self.fin_sent {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let limit = (self.snd_wnd as usize).min(TX_CAP);
        let room = limit.saturating_sub(self.tx_len);
        if room == 0 || (room < self.mss.min(want) && self.tx_len > 0) {
            self.write_waker = Some(waker.clone());
            if self.snd_wnd == 0 && self.tx_len == 0 {
                self.arm(); // a probe, in case the window update is lost
            }
            return Ok(0);
        }
        Ok(room.min(want))
    }

    /// Sends `data` (which the window takes whole) in segments.
    pub fn transmit(&mut self, data: Bytes) {
        let mut seq = self.snd_nxt;
        for part in data.chunks(self.mss) {
            self.send(seq, ACK | PSH, part);
            seq = seq.wrapping_add(part.len() as u32);
        }
        self.snd_nxt = seq;
        self.tx_len += data.len();
        self.tx.push_back(data);
        self.arm();
    }

    /// Takes received data; frees room and tells the process when it
    /// matters.
    pub fn take(&mut self, max: usize, waker: &Waker) -> Poll<io::Result<Option<Bytes>>> {
        if let Some(front) = self.rx.front_mut() {
            let data = if front.len() > max {
                front.split_to(max)
            } else {
                self.rx.pop_front().expect("a front")
            };
            self.rx_len -= data.len();
            let edge = self.rcv_nxt.wrapping_add((RX_CAP - self.rx_len) as u32);
            let open = self.state == State::Open && !self.peer_fin;
            if open && gt(edge, self.rcv_adv) && edge.wrapping_sub(self.rcv_adv) >= UPDATE_AFTER {
                self.send_ack();
            }
            return Poll::Ready(Ok(Some(data)));
        }
        if self.peer_fin {
            return Poll::Ready(Ok(None));
        }
        if self.reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        if self.state == State::Closed {
            return Poll::Ready(Ok(None));
        }
        self.read_waker = Some(waker.clone());
        Poll::Pending
    }

    pub fn shutdown(&mut self) {
        if self.state == State::Open && !self.fin_sent {
            self.fin_sent = true;
            self.send(self.snd_nxt, FIN | ACK, &[]);
            self.snd_nxt = self.snd_nxt.wrapping_add(1);
            self.arm();
        }
    }

    /// Completes the handshake: the SYN-ACK.
    pub fn accept(&mut self) {
        if self.state == State::Pending {
            self.state = State::Open;
            self.snd_nxt = self.iss.wrapping_add(1);
            self.send_syn_ack();
            self.arm();
        }
    }

    /// Answers the SYN with a reset: the process's connect() is refused.
    pub fn refuse(&mut self) {
        if self.state == State::Pending {
            self.emit(0, RST | ACK, 0, None, &[]);
            self.close(true);
        }
    }

    /// The connection's task let go of it: a reset unless both ends
    /// closed and everything was read; else done once our FIN is
    /// acknowledged (by the ACK, or given up by the timer).
    pub fn release(&mut self) {
        self.read_waker = None;
        self.write_waker = None;
        if !(self.peer_fin && self.fin_sent) || self.rx_len > 0 {
            self.abort();
        } else if self.fin_acked {
            self.close(false);
        }
    }
}
