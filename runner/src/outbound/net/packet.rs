//! IPv4/IPv6 packets carrying TCP or UDP, as the TUN device reads and
//! writes them: parsed in place, built as a header to write in front of a
//! payload (the payload is never copied to make a packet: `writev`).

use std::net::{IpAddr, SocketAddr};

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// The largest header [`tcp_header`] writes: IPv6 (40) + TCP with the
/// options of a SYN (20 + 8).
pub const MAX_HEADER: usize = 40 + 28;

/// The transport payload of a packet of `mtu` bytes with no options.
pub fn max_payload(mtu: usize, v6: bool, tcp: bool) -> usize {
    mtu - if v6 { 40 } else { 20 } - if tcp { 20 } else { 8 }
}

/// One parsed packet: addresses from the process's side (`src` is the
/// process, `dst` what it asked for).
#[derive(Debug)]
pub struct Packet<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub transport: Transport<'a>,
}

#[derive(Debug)]
pub enum Transport<'a> {
    Tcp(Segment<'a>),
    Udp(&'a [u8]),
}

/// A TCP segment, with the options a SYN may carry.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub payload: &'a [u8],
}

impl Segment<'_> {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses a packet; `None` for anything but unfragmented TCP and UDP.
/// Checksums are not verified: the packets come from this machine's kernel.
pub fn parse(packet: &[u8]) -> Option<Packet<'_>> {
    let (src_ip, dst_ip, proto, body): (IpAddr, IpAddr, u8, &[u8]) = match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0F) * 4;
            let total = usize::from(be16(packet, 2)).min(packet.len());
            // A fragment (more-fragments flag or an offset) is not handled.
            if ihl < 20 || total < ihl || be16(packet, 6) & 0x3FFF != 0 {
                return None;
            }
            let src: [u8; 4] = packet[12..16].try_into().ok()?;
            let dst: [u8; 4] = packet[16..20].try_into().ok()?;
            (src.into(), dst.into(), packet[9], &packet[ihl..total])
        }
        6 if packet.len() >= 40 => {
            let total = (40 + usize::from(be16(packet, 4))).min(packet.len());
            let src: [u8; 16] = packet[8..24].try_into().ok()?;
            let dst: [u8; 16] = packet[24..40].try_into().ok()?;
            // Extension headers are not followed: TCP and UDP come first.
            (src.into(), dst.into(), packet[6], &packet[40..total])
        }
        _ => return None,
    };
    let (ports, transport) = match proto {
        PROTO_TCP if body.len() >= 20 => {
            let offset = usize::from(body[12] >> 4) * 4;
            if offset < 20 || offset > body.len() {
                return None;
            }
            let (mss, window_scale) = options(&body[20..offset]);
            let segment = Segment {
                seq: be32(body, 4),
                ack: be32(body, 8),
                flags: body[13],
                window: be16(body, 14),
                mss,
                window_scale,
                payload: &body[offset..],
            };
            ((be16(body, 0), be16(body, 2)), Transport::Tcp(segment))
        }
        PROTO_UDP if body.len() >= 8 => {
            let len = usize::from(be16(body, 4)).clamp(8, body.len());
            (
                (be16(body, 0), be16(body, 2)),
                Transport::Udp(&body[8..len]),
            )
        }
        _ => return None,
    };
    Some(Packet {
        src: SocketAddr::new(src_ip, ports.0),
        dst: SocketAddr::new(dst_ip, ports.1),
        transport,
    })
}

/// MSS and window scale of a TCP option list.
fn options(mut opts: &[u8]) -> (Option<u16>, Option<u8>) {
    let (mut mss, mut scale) = (None, None);
    while let Some(&kind) = opts.first() {
        match kind {
            0 => break,
            1 => opts = &opts[1..],
            _ => {
                let Some(&len) = opts.get(1) else { break };
                let len = usize::from(len);
                if len < 2 || len > opts.len() {
                    break;
                }
                match (kind, len) {
                    (2, 4) => mss = Some(be16(opts, 2)),
                    (3, 3) => scale = Some(opts[2].min(14)),
                    _ => {}
                }
                opts = &opts[len..];
            }
        }
    }
    (mss, scale)
}

/// The one's-complement sum of `data` (RFC 1071), not yet folded.
fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc + u64::from(u32::from_be_bytes(tail))
}

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    !(acc as u16)
}

/// What a packet we send says, besides its payload.
pub struct Tcp {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// The options of a SYN-ACK: our MSS and, when the peer offered
    /// scaling, our window scale.
    pub syn_options: Option<(u16, Option<u8>)>,
}

/// Writes the IP and TCP headers of a packet from `from` to `to` carrying
/// `payload` into `out`; returns their length.
pub fn tcp_header(
    out: &mut [u8; MAX_HEADER],
    from: SocketAddr,
    to: SocketAddr,
    tcp: &Tcp,
    payload: &[u8],
) -> usize {
    let mut opts = [0u8; 8];
    let opts_len = match tcp.syn_options {
        None => 0,
        Some((mss, scale)) => {
            opts[..4].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
            // NOP, then window scale (kind 3, length 3).
            match scale {
                Some(s) => {
                    opts[4..8].copy_from_slice(&[1, 3, 3, s]);
                    8
                }
                None => 4,
            }
        }
    };
    let tcp_len = 20 + opts_len;
    let ip_len = ip_header(out, from.ip(), to.ip(), PROTO_TCP, tcp_len + payload.len());
    let h = &mut out[ip_len..ip_len + tcp_len];
    h[0..2].copy_from_slice(&from.port().to_be_bytes());
    h[2..4].copy_from_slice(&to.port().to_be_bytes());
    h[4..8].copy_from_slice(&tcp.seq.to_be_bytes());
    h[8..12].copy_from_slice(&tcp.ack.to_be_bytes());
    h[12] = ((tcp_len / 4) as u8) << 4;
    h[13] = tcp.flags;
    h[14..16].copy_from_slice(&tcp.window.to_be_bytes());
    h[16..20].fill(0);
    h[20..].copy_from_slice(&opts[..opts_len]);
    let acc = pseudo_sum(from.ip(), to.ip(), PROTO_TCP, tcp_len + payload.len());
    let checksum = fold(sum(payload, sum(h, acc)));
    h[16..18].copy_from_slice(&checksum.to_be_bytes());
    ip_len + tcp_len
}

/// Writes the IP and UDP headers of a datagram; returns their length.
pub fn udp_header(
    out: &mut [u8; MAX_HEADER],
    from: SocketAddr,
    to: SocketAddr,
    payload: &[u8],
) -> usize {
    let udp_len = 8 + payload.len();
    let ip_len = ip_header(out, from.ip(), to.ip(), PROTO_UDP, udp_len);
    let h = &mut out[ip_len..ip_len + 8];
    h[0..2].copy_from_slice(&from.port().to_be_bytes());
    h[2..4].copy_from_slice(&to.port().to_be_bytes());
    h[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    h[6..8].fill(0);
    let acc = pseudo_sum(from.ip(), to.ip(), PROTO_UDP, udp_len);
    // A computed zero is sent as all ones (zero means "none" in IPv4).
    let checksum = match fold(sum(payload, sum(h, acc))) {
        0 => 0xFFFF,
        c => c,
    };
    h[6..8].copy_from_slice(&checksum.to_be_bytes());
    ip_len + 8
}

fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u64 {
    let acc = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum(&s.octets(), sum(&d.octets(), 0)),
        (s, d) => sum(&ip6(s).octets(), sum(&ip6(d).octets(), 0)),
    };
    acc + u64::from(proto) + len as u64
}

fn ip6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Writes an IP header for `len` bytes of `proto`; returns its length.
fn ip_header(out: &mut [u8; MAX_HEADER], src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> usize {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let h = &mut out[..20];
            h[0] = 0x45;
            h[1] = 0;
            h[2..4].copy_from_slice(&((20 + len) as u16).to_be_bytes());
            // Don't fragment: id 0, flags DF.
            h[4..8].copy_from_slice(&[0, 0, 0x40, 0]);
            h[8] = 64;
            h[9] = proto;
            h[10..12].fill(0);
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let checksum = fold(sum(h, 0));
            h[10..12].copy_from_slice(&checksum.to_be_bytes());
            20
        }
        (s, d) => {
            let h = &mut out[..40];
            h[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
            h[4..6].copy_from_slice(&(len as u16).to_be_bytes());
            h[6] = proto;
            h[7] = 64;
            h[8..24].copy_from_slice(&ip6(s).octets());
            h[24..40].copy_from_slice(&ip6(d).octets());
            40
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A packet we build parses back, and its checksums verify (the sum
    /// over a correct header and payload folds to zero).
    #[test]
    fn a_built_segment_parses_back_with_valid_checksums() {
        let (from, to) = (addr("10.0.0.1:80"), addr("198.18.0.1:40000"));
        let payload = b"hello, odd length";
        let mut header = [0u8; MAX_HEADER];
        let tcp = Tcp {
            seq: 7,
            ack: 9,
            flags: SYN | ACK,
            window: 1000,
            syn_options: Some((1460, Some(7))),
        };
        let n = tcp_header(&mut header, from, to, &tcp, payload);
        let mut packet = header[..n].to_vec();
        packet.extend_from_slice(payload);
        assert_eq!(fold(sum(&packet[..20], 0)), 0, "IPv4 header checksum");
        let acc = pseudo_sum(from.ip(), to.ip(), PROTO_TCP, packet.len() - 20);
        assert_eq!(fold(sum(&packet[20..], acc)), 0, "TCP checksum");
        let p = parse(&packet).unwrap();
        assert_eq!((p.src, p.dst), (from, to));
        let Transport::Tcp(s) = p.transport else {
            panic!("not TCP")
        };
        assert_eq!((s.seq, s.ack, s.flags, s.window), (7, 9, SYN | ACK, 1000));
        assert_eq!((s.mss, s.window_scale), (Some(1460), Some(7)));
        assert_eq!(s.payload, payload);
    }

    /// The largest segment at the largest MTU: the whole packet is the
    /// MTU, its IPv6 payload length (TCP header and data, 65495) fits the
    /// 16-bit field: no jumbogram, nothing wraps.
    #[test]
    fn the_largest_ipv6_segment_fits_its_length_field() {
        let mtu = usize::from(u16::MAX);
        let max = max_payload(mtu, true, true);
        let (from, to) = (addr("[fd00::1]:80"), addr("[fd00::2]:40000"));
        let payload = vec![7u8; max];
        let mut header = [0u8; MAX_HEADER];
        let tcp = Tcp {
            seq: 1,
            ack: 2,
            flags: ACK,
            window: 9,
            syn_options: None,
        };
        let n = tcp_header(&mut header, from, to, &tcp, &payload);
        let mut packet = header[..n].to_vec();
        packet.extend_from_slice(&payload);
        assert_eq!(packet.len(), mtu);
        assert_eq!(be16(&packet, 4), 65_495);
        let acc = pseudo_sum(from.ip(), to.ip(), PROTO_TCP, packet.len() - 40);
        assert_eq!(fold(sum(&packet[40..], acc)), 0, "TCP checksum");
        let p = parse(&packet).unwrap();
        let Transport::Tcp(s) = p.transport else {
            panic!("not TCP")
        };
        assert_eq!(s.payload.len(), max);
        // A datagram likewise: IPv6 and UDP headers and the payload, the MTU.
        assert_eq!(40 + 8 + max_payload(mtu, true, false), mtu);
    }

    #[test]
    fn a_datagram_parses_back() {
        let (from, to) = (addr("[fd00::1]:53"), addr("[fd00::2]:5353"));
        let mut header = [0u8; MAX_HEADER];
        let n = udp_header(&mut header, from, to, b"q");
        let mut packet = header[..n].to_vec();
        packet.push(b'q');
        let p = parse(&packet).unwrap();
        assert_eq!((p.src, p.dst), (from, to));
        assert!(matches!(p.transport, Transport::Udp(b"q")));
        let acc = pseudo_sum(from.ip(), to.ip(), PROTO_UDP, 9);
        assert_eq!(fold(sum(&packet[40..], acc)), 0, "UDP checksum");
    }
}
