//! The little of DNS messages the namespace's resolver reads and writes,
//! through `hickory-proto`: the question (to route a query) and its EDNS,
//! the answers' addresses and TTLs (to learn cluster addresses and cache),
//! and a few answers of its own. Messages are otherwise relayed as the
//! nameserver sent them: nothing here re-encodes an upstream answer, and a
//! cached one only has bytes changed in place (id, the question's letter
//! case, TTLs).

use std::net::IpAddr;

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};

pub const TYPE_A: RecordType = RecordType::A;
pub const TYPE_AAAA: RecordType = RecordType::AAAA;
pub const RCODE_SERVFAIL: ResponseCode = ResponseCode::ServFail;
pub const RCODE_NXDOMAIN: ResponseCode = ResponseCode::NXDomain;
pub const RCODE_FORMERR: ResponseCode = ResponseCode::FormErr;

/// The UDP size of an asker that does not say (RFC 1035).
pub const UDP_DEFAULT: usize = 512;
pub const HEADER_LEN: usize = 12;

/// A query's question.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Question {
    /// Lower case, without the final dot.
    pub name: String,
    pub qtype: RecordType,
    pub qclass: DNSClass,
}

/// What an answer is cached under: the question, and what else of the
/// query changes the answer: whether it has EDNS, and then its DO bit
/// (RFC 6891, 3225), and the CD bit (RFC 4035).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub question: Question,
    pub dnssec_ok: Option<bool>,
    pub checking_disabled: bool,
}

/// A query as the resolver reads it.
pub struct Asked {
    pub key: Key,
    /// The end of the question's name, which starts after the header.
    name_end: usize,
}

/// A message's header, and a decoder past its questions (at the answers).
fn past_questions(msg: &[u8]) -> Option<(Header, BinDecoder<'_>)> {
    let mut decoder = BinDecoder::new(msg);
    let header = Header::read(&mut decoder).ok()?;
    for _ in 0..header.counts.queries {
        Query::read(&mut decoder).ok()?;
    }
    Some((header, decoder))
}

/// The header of a message and its first question (if it has one and it
/// reads), with the offset after that question.
fn first_question(msg: &[u8]) -> Option<(Header, Option<(Query, usize)>)> {
    let mut decoder = BinDecoder::new(msg);
    let header = Header::read(&mut decoder).ok()?;
    let query = (header.counts.queries > 0)
        .then(|| Query::read(&mut decoder).ok())
        .flatten()
        .map(|query| (query, decoder.index()));
    Some((header, query))
}

/// A name as the resolver compares it: labels lower case, joined by dots,
/// without the final dot (the root is "").
fn lower_name(name: &Name) -> String {
    let mut out = String::with_capacity(name.len());
    for label in name.iter() {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&String::from_utf8_lossy(label));
    }
    out.make_ascii_lowercase();
    out
}

/// The first question of a message and the offset after it.
pub fn question(msg: &[u8]) -> Option<(Question, usize)> {
    let (_, first) = first_question(msg)?;
    let (query, end) = first?;
    Some((
        Question {
            name: lower_name(query.name()),
            qtype: query.query_type(),
            qclass: query.query_class(),
        },
        end,
    ))
}

/// A query's first question and EDNS; `None` when its question does not
/// read.
pub fn read_query(query: &[u8]) -> Option<Asked> {
    let (question, end) = question(query)?;
    let header = Header::read(&mut BinDecoder::new(query)).ok()?;
    Some(Asked {
        key: Key {
            question,
            dnssec_ok: edns(query).map(|(_, dnssec_ok)| dnssec_ok),
            checking_disabled: header.metadata.checking_disabled,
        },
        // Its type and class follow it.
        name_end: end - 4,
    })
}

/// One resource record, read where it lies (RDATA left as bytes).
struct Rr<'a> {
    in_answers: bool,
    rtype: RecordType,
    /// OPT's is the UDP size.
    class: u16,
    /// OPT's is flags (DO).
    ttl: u32,
    /// Where the TTL is in the message.
    ttl_at: usize,
    data: &'a [u8],
}

fn read_rr<'a>(decoder: &mut BinDecoder<'a>, in_answers: bool) -> Option<Rr<'a>> {
    Name::read(decoder).ok()?;
    let rtype = RecordType::from(decoder.read_u16().ok()?.unverified());
    let class = decoder.read_u16().ok()?.unverified();
    let ttl_at = decoder.index();
    let ttl = decoder.read_u32().ok()?.unverified();
    let len = decoder.read_u16().ok()?.unverified();
    let data = decoder.read_slice(usize::from(len)).ok()?.unverified();
    Some(Rr {
        in_answers,
        rtype,
        class,
        ttl,
        ttl_at,
        data,
    })
}

/// A message's header and records (answer, authority, additional), up to
/// the first that does not read.
fn records(msg: &[u8]) -> Option<(Header, Vec<Rr<'_>>)> {
    let (header, mut decoder) = past_questions(msg)?;
    let c = header.counts;
    let count = u32::from(c.answers) + u32::from(c.authorities) + u32::from(c.additionals);
    let records = (0..count)
        .map_while(|i| read_rr(&mut decoder, i < u32::from(c.answers)))
        .collect();
    Some((header, records))
}

/// A message's EDNS (its OPT record): the UDP size and the DO bit.
fn edns(msg: &[u8]) -> Option<(u16, bool)> {
    let (_, records) = records(msg)?;
    let opt = records.iter().find(|rr| rr.rtype == RecordType::OPT)?;
    Some((opt.class, opt.ttl & 0x8000 != 0))
}

/// What the resolver keeps of an answer, read once when it comes.
#[derive(Debug, Default)]
pub struct Answer {
    /// The addresses of its A/AAAA answers.
    pub ips: Vec<IpAddr>,
    /// The smallest TTL of its answer section (`None`: no answers).
    pub ttl: Option<u32>,
    /// TC: only a part of the answer.
    pub truncated: bool,
    /// Where each record's TTL is (not OPT's: flags, not a time).
    ttl_at: Vec<usize>,
}

/// An answer's addresses, TTLs and TC bit. Reading stops at the first
/// record that does not read, keeping what came before it.
pub fn read_answer(msg: &[u8]) -> Answer {
    let mut answer = Answer::default();
    let Some((header, records)) = records(msg) else {
        return answer;
    };
    answer.truncated = header.metadata.truncation;
    for rr in records.iter().filter(|rr| rr.rtype != RecordType::OPT) {
        answer.ttl_at.push(rr.ttl_at);
        if !rr.in_answers {
            continue;
        }
        answer.ttl = Some(answer.ttl.map_or(rr.ttl, |t| t.min(rr.ttl)));
        let ip = match rr.rtype {
            RecordType::A => <[u8; 4]>::try_from(rr.data).ok().map(IpAddr::from),
            RecordType::AAAA => <[u8; 16]>::try_from(rr.data).ok().map(IpAddr::from),
            _ => None,
        };
        answer.ips.extend(ip);
    }
    answer
}

/// An answer's addresses and smallest TTL (tests' shorthand).
#[cfg(test)]
pub fn answers(msg: &[u8]) -> (Vec<IpAddr>, Option<u32>) {
    let Answer { ips, ttl, .. } = read_answer(msg);
    (ips, ttl)
}

/// Whether `answer` answers `query`: a response with its id and question
/// (letter case aside), as a stub resolver checks to ignore stray and
/// forged answers.
pub fn answers_query(answer: &[u8], query: &[u8]) -> bool {
    let read = |msg| first_question(msg).and_then(|(header, q)| Some((header.metadata, q?.0)));
    match (read(answer), read(query)) {
        (Some((a, a_question)), Some((q, q_question))) => {
            a.message_type == MessageType::Response && a.id == q.id && a_question == q_question
        }
        _ => false,
    }
}

/// A message's response code (the header's four bits); a message without
/// a header counts as a SERVFAIL.
pub fn rcode(msg: &[u8]) -> ResponseCode {
    Header::read(&mut BinDecoder::new(msg)).map_or(RCODE_SERVFAIL, |h| h.metadata.response_code)
}

/// A cached `answer` (`read` of it) for `query`, `age` seconds after it
/// came: a copy with the query's id, its question name as written (resolvers
/// that randomise its letter case, "DNS 0x20", check it) and every TTL less
/// `age`. Bytes changed in place, nothing decoded.
pub fn reuse(answer: &[u8], read: &Answer, query: &[u8], asked: &Asked, age: u32) -> Vec<u8> {
    let mut out = answer.to_vec();
    out[..2].copy_from_slice(&query[..2]);
    let name = HEADER_LEN..asked.name_end;
    if out
        .get(name.clone())
        .is_some_and(|cached| cached.eq_ignore_ascii_case(&query[name.clone()]))
    {
        out[name.clone()].copy_from_slice(&query[name]);
    }
    for &at in &read.ttl_at {
        let ttl = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
        out[at..at + 4].copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
    }
    out
}

/// `metadata`, `question` and `records` as a message (a name the message
/// repeats is a pointer to its first occurrence).
fn encode(metadata: Metadata, question: Option<&Query>, records: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(UDP_DEFAULT);
    let header = Header {
        metadata,
        counts: HeaderCounts {
            queries: question.is_some().into(),
            answers: u16::try_from(records.len()).unwrap_or(0),
            ..HeaderCounts::default()
        },
    };
    let mut encoder = BinEncoder::new(&mut out);
    let written = header
        .emit(&mut encoder)
        .and_then(|()| question.map_or(Ok(()), |q| q.emit(&mut encoder)))
        .and_then(|()| encoder.emit_all(records.iter()));
    match written {
        Ok(_) => out,
        // Only a name the question read could not write back: the header.
        Err(_) if question.is_some() || !records.is_empty() => encode(metadata, None, &[]),
        Err(_) => Vec::new(),
    }
}

/// The header and question of `query` as a response with `rcode` and
/// `answers` records (each for the question's name, class IN, `ttl`).
/// The query's id, opcode and RD are kept; RA is set.
pub fn respond(query: &[u8], rcode: ResponseCode, answers: &[RData], ttl: u32) -> Vec<u8> {
    let (asked, question) = match first_question(query) {
        Some((header, q)) => (Some(header.metadata), q.map(|(q, _)| q)),
        None => (None, None),
    };
    let mut metadata = Metadata::new(
        asked.map_or(0, |m| m.id),
        MessageType::Response,
        asked.map_or(OpCode::Query, |m| m.op_code),
    );
    metadata.recursion_desired = asked.is_some_and(|m| m.recursion_desired);
    metadata.recursion_available = true;
    metadata.response_code = rcode;
    let records: Vec<Record> = match &question {
        Some(q) => answers
            .iter()
            .map(|data| Record::from_rdata(q.name().clone(), ttl, data.clone()))
            .collect(),
        None => Vec::new(),
    };
    encode(metadata, question.as_ref(), &records)
}

/// An answer for `query` with one address: `v4` for A, `v6` for AAAA (an
/// empty answer for other types).
pub fn address_answer(
    query: &[u8],
    qtype: RecordType,
    v4: std::net::Ipv4Addr,
    v6: std::net::Ipv6Addr,
) -> Vec<u8> {
    let data = match qtype {
        TYPE_A => vec![RData::A(A(v4))],
        TYPE_AAAA => vec![RData::AAAA(AAAA(v6))],
        _ => Vec::new(),
    };
    respond(query, ResponseCode::NoError, &data, 60)
}

/// The largest UDP answer the asker takes: its EDNS size (at least 512,
/// RFC 6891), else 512.
pub fn udp_limit(query: &[u8]) -> usize {
    edns(query).map_or(UDP_DEFAULT, |(size, _)| usize::from(size).max(UDP_DEFAULT))
}

/// An answer cut to its question with TC set, for an asker whose UDP
/// limit it exceeds: the resolver asks again over TCP. The question is
/// kept as the nameserver wrote it.
pub fn truncated(answer: &[u8]) -> Vec<u8> {
    let Some((header, question)) = first_question(answer) else {
        return answer.to_vec();
    };
    let mut metadata = header.metadata;
    metadata.truncation = true;
    let header = Header {
        metadata,
        counts: HeaderCounts {
            queries: question.is_some().into(),
            ..HeaderCounts::default()
        },
    };
    let end = question.map_or(HEADER_LEN, |(_, end)| end);
    let mut out = Vec::with_capacity(end);
    // A header always writes (a fixed size, no names).
    if header.emit(&mut BinEncoder::new(&mut out)).is_ok() {
        out.extend_from_slice(&answer[HEADER_LEN..end]);
    }
    out
}

/// The address a reverse name (`4.3.2.1.in-addr.arpa`) asks about: a
/// whole address, not a reverse zone.
pub fn reverse_ip(name: &str) -> Option<IpAddr> {
    if !name.ends_with(".arpa") {
        return None;
    }
    let mut arpa = Name::from_ascii(name).ok()?;
    arpa.set_fqdn(true);
    let net = arpa.parse_arpa_name().ok()?;
    (net.prefix_len() == net.max_prefix_len()).then(|| net.addr())
}

/// A query for `name` (case kept) as a stub resolver sends it: RD set,
/// class IN.
#[cfg(test)]
pub fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut metadata = Metadata::new(id, MessageType::Query, OpCode::Query);
    metadata.recursion_desired = true;
    let name = Name::from_ascii(name).expect("a test name");
    encode(metadata, Some(&Query::query(name, qtype)), &[])
}

/// `query` with an OPT record of `size` and the DO bit, plus a client
/// cookie as dig sends it.
#[cfg(test)]
pub fn with_edns(mut query: Vec<u8>, size: u16, dnssec_ok: bool) -> Vec<u8> {
    query[11] += 1;
    query.extend_from_slice(&[0, 0, 41]);
    query.extend_from_slice(&size.to_be_bytes());
    query.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0]);
    query.extend_from_slice(&[0, 12, 0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
    query
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn a_question_reads_lower_case() {
        let q = query(7, "Hello.NS.svc.cluster.local", TYPE_A);
        assert!(q.windows(5).any(|w| w == b"Hello"), "sent as written");
        let (question, end) = question(&q).unwrap();
        assert_eq!(question.name, "hello.ns.svc.cluster.local");
        assert_eq!(question.qtype, TYPE_A);
        assert_eq!(question.qclass, DNSClass::IN);
        assert_eq!(end, q.len());
    }

    #[test]
    fn an_answer_of_our_own_reads_back() {
        let q = query(9, "host.tpr.internal", TYPE_A);
        let a = address_answer(
            &q,
            TYPE_A,
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv6Addr::LOCALHOST,
        );
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
    fn an_answer_of_our_own_is_the_query_with_a_record_pointing_at_its_name() {
        let q = query(9, "Host.tpr.internal", TYPE_A);
        let a = address_answer(
            &q,
            TYPE_A,
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv6Addr::LOCALHOST,
        );
        // QR, RD, RA; one question (as asked, case kept), one answer.
        let head = [0, 9, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        let record = [0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 0, 2];
        assert_eq!(a, [&head[..], &q[12..], &record[..]].concat());
        // AAAA: the IPv6 address.
        let q = query(10, "host.tpr.internal", TYPE_AAAA);
        let v6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
        let a = address_answer(&q, TYPE_AAAA, Ipv4Addr::LOCALHOST, v6);
        let record = [
            &[0xC0, 0x0C, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16][..],
            &v6.octets(),
        ]
        .concat();
        let head = [0, 10, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        assert_eq!(a, [&head[..], &q[12..], &record[..]].concat());
        assert_eq!(answers(&a).0, vec![IpAddr::V6(v6)]);
        // Another type: the same header and question, no answer.
        let q = query(11, "host.tpr.internal", RecordType::MX);
        let a = address_answer(&q, RecordType::MX, Ipv4Addr::LOCALHOST, v6);
        assert_eq!(
            a,
            [&[0, 11, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0][..], &q[12..]].concat()
        );
    }

    #[test]
    fn truncation_keeps_the_question_and_sets_tc() {
        let q = query(1, "a.b", TYPE_A);
        let a = address_answer(&q, TYPE_A, Ipv4Addr::LOCALHOST, Ipv6Addr::LOCALHOST);
        let t = truncated(&a);
        assert_eq!(t.len(), q.len());
        assert_eq!(t[2] & 0x02, 0x02);
        assert_eq!(t[12..], q[12..]);
        assert_eq!(question(&t).unwrap().0.name, "a.b");
        assert_eq!(answers(&t), (vec![], None));
        assert_eq!(udp_limit(&q), 512);
    }

    #[test]
    fn the_udp_limit_is_the_edns_size() {
        let with_opt = |size: u16| with_edns(query(1, "a.b", TYPE_A), size, false);
        assert_eq!(udp_limit(&with_opt(1232)), 1232);
        // Less than 512 counts as 512.
        assert_eq!(udp_limit(&with_opt(100)), 512);
        assert_eq!(question(&with_opt(1232)).unwrap().0.name, "a.b");
    }

    /// An answer as nameservers write it: the answers' names are pointers
    /// to earlier names (RFC 1035 4.1.4), here a CNAME and its A record.
    #[test]
    fn a_compressed_answer_reads() {
        let q = query(3, "Web.NS.svc.cluster.local", TYPE_A);
        let mut a = q.clone();
        a[2..4].copy_from_slice(&[0x81, 0x80]);
        a[6..8].copy_from_slice(&2u16.to_be_bytes());
        // web.ns... CNAME pod.ns... (`pod` then a pointer to `ns` at 16).
        a.extend_from_slice(&[0xC0, 0x0C, 0, 5, 0, 1, 0, 0, 0, 20, 0, 6]);
        let target = a.len();
        a.extend_from_slice(&[3, b'p', b'o', b'd', 0xC0, 16]);
        // pod.ns... (a pointer to the CNAME's data) A 10.96.0.7.
        a.extend_from_slice(&[0xC0, u8::try_from(target).unwrap()]);
        a.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 10, 0, 4, 10, 96, 0, 7]);

        assert_eq!(answers(&a), (vec![IpAddr::from([10, 96, 0, 7])], Some(10)));
        let (question, _) = question(&a).unwrap();
        assert_eq!(question.name, "web.ns.svc.cluster.local");
        assert_eq!(rcode(&a), ResponseCode::NoError);
    }

    #[test]
    fn a_malformed_message_is_rejected_not_a_panic() {
        let q = query(4, "a.ns.svc.cluster.local", TYPE_A);
        let good = address_answer(&q, TYPE_A, Ipv4Addr::new(10, 96, 0, 1), Ipv6Addr::LOCALHOST);
        // A name pointing at itself (a loop), a forward pointer, a
        // reserved label type, a record longer than the message.
        let mut looped = q.clone();
        looped[12..14].copy_from_slice(&[0xC0, 12]);
        let mut forward = q.clone();
        forward[12..14].copy_from_slice(&[0xC0, 40]);
        let mut reserved = q.clone();
        reserved[12] = 0x41;
        let mut long = good.clone();
        let rdlength = long.len() - 6;
        long[rdlength..rdlength + 2].copy_from_slice(&200u16.to_be_bytes());
        for bad in [&looped, &forward, &reserved] {
            assert_eq!(question(bad), None);
            let servfail = respond(bad, RCODE_SERVFAIL, &[], 0);
            assert_eq!(servfail, [0, 4, 0x81, 0x82, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        assert_eq!(answers(&long), (vec![], None));
        assert_eq!(question(&long).unwrap().0.name, "a.ns.svc.cluster.local");
        assert_eq!(question(&[]), None);
        assert_eq!(rcode(&[0, 1]), RCODE_SERVFAIL);
        assert_eq!(respond(&[0, 1], RCODE_SERVFAIL, &[], 0)[2..4], [0x80, 0x82]);

        // Every cut and every changed byte of a good answer: no panic,
        // and nothing read beyond the message.
        let asked = read_query(&q).unwrap();
        let all = |msg: &[u8]| {
            let _ = (question(msg), answers(msg), rcode(msg), udp_limit(msg));
            let _ = (truncated(msg), respond(msg, RCODE_SERVFAIL, &[], 0));
            let _ = read_query(msg).map(|asked| asked.key);
            // Only an answer to the query is cached, and so reused.
            if answers_query(msg, &q) {
                let _ = reuse(msg, &read_answer(msg), &q, &asked, 5);
            }
        };
        for end in 0..good.len() {
            all(&good[..end]);
        }
        for at in 0..good.len() {
            for byte in [0x00, 0x01, 0x3F, 0x40, 0x80, 0xC0, 0xFF] {
                let mut bad = good.clone();
                bad[at] = byte;
                all(&bad);
            }
        }
    }

    #[test]
    fn reverse_names_give_addresses() {
        assert_eq!(
            reverse_ip("5.0.244.10.in-addr.arpa"),
            Some(IpAddr::from([10, 244, 0, 5]))
        );
        // RFC 3596 2.5.
        let v6 = "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4.ip6.arpa";
        assert_eq!(
            reverse_ip(v6),
            Some(IpAddr::from([0x4321, 0, 0x1, 0x2, 0x3, 0x4, 0x567, 0x89ab]))
        );
        assert_eq!(reverse_ip("example.com"), None);
        // Reverse zones, not addresses.
        assert_eq!(reverse_ip("244.10.in-addr.arpa"), None);
        assert_eq!(reverse_ip("0.ip6.arpa"), None);
        assert_eq!(reverse_ip("x.5.0.244.10.in-addr.arpa"), None);
        assert_eq!(reverse_ip("300.0.244.10.in-addr.arpa"), None);
    }
}
