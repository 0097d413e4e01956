//! The little of the DNS wire format (RFC 1035) the namespace's resolver
//! needs: the question (to route a query), the answers' addresses and TTLs
//! (to learn cluster addresses and cache), and a few answers of its own.
//! Messages are otherwise relayed as the nameserver sent them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;

/// A query's question.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Question {
    /// Lower case, without the final dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

fn u16_at(msg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]))
}

/// Reads a (possibly compressed) name at `at`; returns it and the offset
/// after it in the message.
fn read_name(msg: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    // Bounded: a malicious pointer loop ends here.
    for _ in 0..128 {
        let len = *msg.get(at)?;
        match len {
            0 => {
                return Some((name, end.unwrap_or(at + 1)));
            }
            l if l & 0xC0 == 0xC0 => {
                let pointer = usize::from(u16_at(msg, at)? & 0x3FFF);
                end.get_or_insert(at + 2);
                at = pointer;
            }
            l => {
                let label = msg.get(at + 1..at + 1 + usize::from(l))?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
                at += 1 + usize::from(l);
            }
        }
    }
    None
}

/// The first question of a message and the offset after it.
pub fn question(msg: &[u8]) -> Option<(Question, usize)> {
    if msg.len() < 12 || u16_at(msg, 4)? == 0 {
        return None;
    }
    let (name, at) = read_name(msg, 12)?;
    Some((
        Question {
            name,
            qtype: u16_at(msg, at)?,
            qclass: u16_at(msg, at + 2)?,
        },
        at + 4,
    ))
}

/// The addresses of an answer's A/AAAA records and the smallest TTL of
/// its answer section (`None`: no answer records).
pub fn answers(msg: &[u8]) -> (Vec<IpAddr>, Option<u32>) {
    let mut ips = Vec::new();
    let mut ttl: Option<u32> = None;
    let Some((_, mut at)) = question(msg) else {
        return (ips, ttl);
    };
    let count = u16_at(msg, 6).unwrap_or(0);
    for _ in 0..count {
        let Some((_, after)) = read_name(msg, at) else {
            break;
        };
        let (Some(rtype), Some(ttl_hi), Some(ttl_lo), Some(len)) = (
            u16_at(msg, after),
            u16_at(msg, after + 4),
            u16_at(msg, after + 6),
            u16_at(msg, after + 8),
        ) else {
            break;
        };
        let data_at = after + 10;
        let Some(data) = msg.get(data_at..data_at + usize::from(len)) else {
            break;
        };
        let record_ttl = (u32::from(ttl_hi) << 16) | u32::from(ttl_lo);
        ttl = Some(ttl.map_or(record_ttl, |t| t.min(record_ttl)));
        match (rtype, data.len()) {
            (TYPE_A, 4) => ips.push(IpAddr::from(<[u8; 4]>::try_from(data).expect("len 4"))),
            (TYPE_AAAA, 16) => {
                ips.push(IpAddr::from(<[u8; 16]>::try_from(data).expect("len 16")));
            }
            _ => {}
        }
        at = data_at + usize::from(len);
    }
    (ips, ttl)
}

pub fn rcode(msg: &[u8]) -> u8 {
    msg.get(3).map_or(0, |b| b & 0x0F)
}

/// `answer` with the id of `query` (a cached answer for a new query).
pub fn with_id(answer: &[u8], query: &[u8]) -> Vec<u8> {
    let mut out = answer.to_vec();
    if out.len() >= 2 && query.len() >= 2 {
        out[..2].copy_from_slice(&query[..2]);
    }
    out
}

/// The header and question of `query` as a response with `rcode` and
/// `answers` records (each a name pointer to the question, a type and data).
pub fn respond(query: &[u8], rcode: u8, answers: &[(u16, Vec<u8>)], ttl: u32) -> Vec<u8> {
    let end = question(query).map_or(12.min(query.len()), |(_, end)| end);
    let mut out = query[..end].to_vec();
    if out.len() < 12 {
        out.resize(12, 0);
    }
    // QR, the query's opcode and RD; RA; the rcode.
    out[2] = 0x80 | (out[2] & 0x79);
    out[3] = 0x80 | (rcode & 0x0F);
    let count = u16::try_from(answers.len()).unwrap_or(0);
    out[6..8].copy_from_slice(&count.to_be_bytes());
    out[8..12].fill(0);
    for (rtype, data) in answers {
        out.extend_from_slice(&[0xC0, 0x0C]);
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&u16::try_from(data.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(data);
    }
    out
}

/// An answer for `query` with one address (A or AAAA as it asked; an
/// empty answer for the other family and other types).
pub fn address_answer(query: &[u8], qtype: u16, ip: Ipv4Addr) -> Vec<u8> {
    match qtype {
        TYPE_A => respond(query, 0, &[(TYPE_A, ip.octets().to_vec())], 60),
        _ => respond(query, 0, &[], 60),
    }
}

/// The largest UDP answer the asker takes: its EDNS0 size, else 512.
pub fn udp_limit(query: &[u8]) -> usize {
    let Some((_, mut at)) = question(query) else {
        return 512;
    };
    // Skip answer and authority records (none in a query), find OPT.
    let additional = u16_at(query, 10).unwrap_or(0);
    for _ in 0..additional {
        let Some((_, after)) = read_name(query, at) else {
            break;
        };
        if u16_at(query, after) == Some(41) {
            return usize::from(u16_at(query, after + 2).unwrap_or(512)).max(512);
        }
        let len = u16_at(query, after + 8).unwrap_or(0);
        at = after + 10 + usize::from(len);
    }
    512
}

/// An answer cut to the question with TC set, for an asker whose UDP
/// limit it exceeds: the resolver asks again over TCP.
pub fn truncated(answer: &[u8]) -> Vec<u8> {
    let end = question(answer).map_or(12.min(answer.len()), |(_, end)| end);
    let mut out = answer[..end].to_vec();
    if out.len() >= 12 {
        out[2] |= 0x02;
        out[6..12].fill(0);
    }
    out
}

/// The address a reverse name (`4.3.2.1.in-addr.arpa`) asks about.
pub fn reverse_ip(name: &str) -> Option<IpAddr> {
    if let Some(v4) = name.strip_suffix(".in-addr.arpa") {
        let mut octets: Vec<u8> = v4
            .split('.')
            .map(|o| o.parse().ok())
            .collect::<Option<_>>()?;
        if octets.len() != 4 {
            return None;
        }
        octets.reverse();
        return Some(IpAddr::from(<[u8; 4]>::try_from(octets).ok()?));
    }
    let v6 = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<u8> = v6
        .split('.')
        .rev()
        .map(|n| u8::from_str_radix(n, 16).ok())
        .collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, pair) in nibbles.chunks(2).enumerate() {
        bytes[i] = (pair[0] << 4) | pair[1];
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

#[cfg(test)]
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_reads_lower_case() {
        let q = query(7, "Hello.NS.svc.cluster.local", TYPE_A);
        let (question, end) = question(&q).unwrap();
        assert_eq!(question.name, "hello.ns.svc.cluster.local");
        assert_eq!(question.qtype, TYPE_A);
        assert_eq!(end, q.len());
    }

    #[test]
    fn an_answer_of_our_own_reads_back() {
        let q = query(9, "host.tpr.internal", TYPE_A);
        let a = address_answer(&q, TYPE_A, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(a[..2], q[..2]);
        assert_eq!(a[2] & 0x80, 0x80);
        let (ips, ttl) = answers(&a);
        assert_eq!(ips, vec![IpAddr::from([198, 18, 0, 2])]);
        assert_eq!(ttl, Some(60));
        let nx = respond(&q, RCODE_NXDOMAIN, &[], 0);
        assert_eq!(rcode(&nx), RCODE_NXDOMAIN);
        assert_eq!(answers(&nx).0, Vec::<IpAddr>::new());
    }

    #[test]
    fn truncation_keeps_the_question_and_sets_tc() {
        let q = query(1, "a.b", TYPE_A);
        let a = address_answer(&q, TYPE_A, Ipv4Addr::LOCALHOST);
        let t = truncated(&a);
        assert_eq!(t.len(), q.len());
        assert_eq!(t[2] & 0x02, 0x02);
        assert_eq!(udp_limit(&q), 512);
    }

    #[test]
    fn reverse_names_give_addresses() {
        assert_eq!(
            reverse_ip("5.0.244.10.in-addr.arpa"),
            Some(IpAddr::from([10, 244, 0, 5]))
        );
        assert_eq!(reverse_ip("example.com"), None);
    }
}
