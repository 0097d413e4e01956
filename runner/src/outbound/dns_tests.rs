//! Tests of the namespace's resolver ([`super`]): fake host nameservers and
//! a fake agent on loopback.

use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;

use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, RecordType};
use tonic::{Request, Response, Status, Streaming};
use tpr_schema::proto::agent_server::{Agent, AgentServer};
use tpr_schema::proto::{
    Chunk, GetEnvRequest, GetEnvResponse, HealthRequest, HealthResponse, NetworkInfoRequest,
    NetworkInfoResponse, ResolveResponse, SessionEvent, SessionRequest, VolumesEvent,
    VolumesRequest,
};

use super::super::{PodView, Routes, Stats};
use super::*;
use crate::up::Events;

fn shared(host_nameservers: Vec<SocketAddr>) -> Shared {
    Shared {
        intercept: "web".into(),
        channels: Arc::default(),
        routes: Routes::default(),
        view: PodView::default(),
        stats: Stats::default(),
        events: Events::default(),
        host_nameservers,
    }
}

/// A host nameserver on the loopback, UDP and TCP on one port, sending
/// the messages of `reply(query, transport)` in turn; the count of
/// queries it saw.
async fn nameserver(
    reply: impl Fn(&[u8], Transport) -> Vec<Vec<u8>> + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = TcpListener::bind(addr).await.unwrap();
    let (reply, asked) = (Arc::new(reply), Arc::new(AtomicUsize::new(0)));
    let (udp_reply, count) = (reply.clone(), asked.clone());
    tokio::spawn(async move {
        let mut buf = vec![0; 65_535];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            count.fetch_add(1, Ordering::Relaxed);
            for message in udp_reply(&buf[..n], Transport::Udp) {
                let _ = socket.send_to(&message, from).await;
            }
        }
    });
    let count = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (reply, count) = (reply.clone(), count.clone());
            tokio::spawn(async move {
                while let Ok(query) = read_message(&mut tcp).await {
                    count.fetch_add(1, Ordering::Relaxed);
                    for message in reply(&query, Transport::Tcp) {
                        let _ = write_message(&mut tcp, &message).await;
                    }
                }
            });
        }
    });
    (addr, asked)
}

fn answer_a(query: &[u8], ip: [u8; 4], ttl: u32) -> Vec<u8> {
    wire::respond(query, ResponseCode::NoError, &[RData::A(A(ip.into()))], ttl)
}

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

type Reply = fn(&[u8]) -> Vec<u8>;

/// An agent that only resolves, with `reply(query)`.
struct FakeAgent {
    reply: Reply,
    asked: Arc<AtomicUsize>,
}

fn unused() -> Status {
    Status::unimplemented("a fake agent only resolves")
}

#[tonic::async_trait]
impl Agent for FakeAgent {
    type SessionStream = Stream<SessionEvent>;
    type TakeConnectionStream = Stream<Chunk>;
    type DialPodStream = Stream<Chunk>;
    type VolumesStream = Stream<VolumesEvent>;
    type DialOutStream = Stream<Chunk>;
    type DialUdpStream = Stream<Chunk>;

    async fn resolve(
        &self,
        request: Request<ResolveRequest>,
    ) -> Result<Response<ResolveResponse>, Status> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        let answer = (self.reply)(&request.into_inner().query);
        Ok(Response::new(ResolveResponse { answer }))
    }
    async fn session(
        &self,
        _: Request<Streaming<SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        Err(unused())
    }
    async fn take_connection(
        &self,
        _: Request<Streaming<Chunk>>,
    ) -> Result<Response<Self::TakeConnectionStream>, Status> {
        Err(unused())
    }
    async fn dial_pod(
        &self,
        _: Request<Streaming<Chunk>>,
    ) -> Result<Response<Self::DialPodStream>, Status> {
        Err(unused())
    }
    async fn get_env(&self, _: Request<GetEnvRequest>) -> Result<Response<GetEnvResponse>, Status> {
        Err(unused())
    }
    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        Err(unused())
    }
    async fn volumes(
        &self,
        _: Request<VolumesRequest>,
    ) -> Result<Response<Self::VolumesStream>, Status> {
        Err(unused())
    }
    async fn dial_out(
        &self,
        _: Request<Streaming<Chunk>>,
    ) -> Result<Response<Self::DialOutStream>, Status> {
        Err(unused())
    }
    async fn network_info(
        &self,
        _: Request<NetworkInfoRequest>,
    ) -> Result<Response<NetworkInfoResponse>, Status> {
        Err(unused())
    }
    async fn dial_udp(
        &self,
        _: Request<Streaming<Chunk>>,
    ) -> Result<Response<Self::DialUdpStream>, Status> {
        Err(unused())
    }
}

/// A namespace of a pod searching `svc.cluster.local`, its agent (if
/// any) answering with `reply`; the count of queries the agent saw.
async fn pod_namespace(reply: Option<Reply>) -> (Shared, Arc<AtomicUsize>) {
    let shared = shared(Vec::new());
    *lock(&shared.view.info) = Some(NetworkInfoResponse {
        search: vec!["svc.cluster.local".into()],
        ..Default::default()
    });
    let asked = Arc::new(AtomicUsize::new(0));
    if let Some(reply) = reply {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let agent = AgentServer::new(FakeAgent {
            reply,
            asked: asked.clone(),
        });
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(agent, incoming));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        lock(&shared.channels.map).insert("web".into(), ("web-pod".into(), channel));
    }
    (shared, asked)
}

#[tokio::test]
async fn a_cluster_answer_is_learned_in_every_namespace_it_is_served_to() {
    let (first, asked) = pod_namespace(Some(|q| answer_a(q, [10, 96, 0, 7], 20))).await;
    let (second, _) = pod_namespace(None).await;
    let ip = IpAddr::from([10, 96, 0, 7]);

    let query = wire::query(1, "learn.ns.svc.cluster.local", wire::TYPE_A);
    let relayed = answer(&query, &first, Transport::Udp).await.unwrap();
    assert_eq!(wire::answers(&relayed).0, vec![ip]);
    assert!(first.routes.is_cluster(ip));

    // The other namespace has no agent: the cache answers, and the
    // address goes through its agent too.
    assert!(!second.routes.is_cluster(ip));
    let query = wire::query(2, "learn.ns.svc.cluster.local", wire::TYPE_A);
    let cached = answer(&query, &second, Transport::Udp).await.unwrap();
    assert_eq!(cached[2..], relayed[2..]);
    assert_eq!(asked.load(Ordering::Relaxed), 1);
    assert!(second.routes.is_cluster(ip));
}

#[tokio::test]
async fn a_host_answer_is_relayed_as_written_then_answered_from_the_cache() {
    // AA set and a TTL of 20: the nameserver's own bytes.
    let upstream = |query: &[u8]| {
        let mut answer = answer_a(query, [192, 0, 2, 7], 20);
        answer[2] |= 0x04;
        answer
    };
    let (server, asked) = nameserver(move |q, _| vec![upstream(q)]).await;
    let shared = shared(vec![server]);

    let first = wire::query(0x1111, "Relay-Test.example.org", wire::TYPE_A);
    let relayed = answer(&first, &shared, Transport::Udp).await.unwrap();
    assert_eq!(relayed, upstream(&first));
    assert_eq!(
        wire::answers(&relayed),
        (vec![IpAddr::from([192, 0, 2, 7])], Some(20))
    );

    // The same question in other letters: the cached bytes with this
    // id and question as asked (0x20 resolvers check its case).
    let again = wire::query(0x2222, "relay-test.EXAMPLE.org", wire::TYPE_A);
    let cached = answer(&again, &shared, Transport::Tcp).await.unwrap();
    assert_eq!(cached[..2], again[..2]);
    assert_eq!(cached[2..12], relayed[2..12]);
    assert_eq!(cached[12..again.len()], again[12..]);
    assert_eq!(cached[again.len()..], relayed[again.len()..]);
    assert_eq!(asked.load(Ordering::Relaxed), 1);
    // Another type is another question.
    let aaaa = wire::query(0x3333, "relay-test.example.org", RecordType::AAAA);
    answer(&aaaa, &shared, Transport::Udp).await;
    assert_eq!(asked.load(Ordering::Relaxed), 2);

    // A cached answer costs well under 0.1 ms (even unoptimised).
    let rounds = 2_000u32;
    let start = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(answer(&again, &shared, Transport::Udp).await);
    }
    let each = start.elapsed() / rounds;
    assert!(
        each < Duration::from_micros(100),
        "{each:?} a cached answer"
    );
    assert_eq!(asked.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_cached_answer_has_its_ttls_counted_down() {
    // An answer (TTL 20), an authority record (TTL 100) and an OPT
    // (its "TTL" is flags: DO).
    let upstream = |query: &[u8]| {
        let mut answer = answer_a(query, [192, 0, 2, 8], 20);
        answer[9] = 1;
        answer[11] = 1;
        answer.extend_from_slice(&[0xC0, 12, 0, 2, 0, 1, 0, 0, 0, 100, 0, 2, 0xC0, 12]);
        answer.extend_from_slice(&[0, 0, 41, 4, 0xD0, 0, 0, 0x80, 0, 0, 0]);
        answer
    };
    let (server, _) = nameserver(move |q, _| vec![upstream(q)]).await;
    let shared = shared(vec![server]);
    let query = wire::query(1, "ttl-test.example.org", wire::TYPE_A);
    let relayed = answer(&query, &shared, Transport::Udp).await.unwrap();
    assert_eq!(relayed, upstream(&query));

    let key = wire::read_query(&query).unwrap().key;
    lock(cache()).get_mut(&key).unwrap().came -= Duration::from_secs(3);
    let cached = answer(&query, &shared, Transport::Udp).await.unwrap();
    assert_eq!(wire::answers(&cached).1, Some(17));
    let (ns_ttl, opt_ttl) = (relayed.len() - 25 + 6, relayed.len() - 11 + 5);
    assert_eq!(cached[ns_ttl..ns_ttl + 4], 97u32.to_be_bytes());
    assert_eq!(cached[opt_ttl..opt_ttl + 4], [0, 0, 0x80, 0]);
    let changed = |at: usize| (at..at + 4).contains(&ns_ttl) || at >= relayed.len() - 39;
    for at in 0..relayed.len() {
        assert!(cached[at] == relayed[at] || changed(at), "byte {at}");
    }
}

#[tokio::test]
async fn edns_and_the_dnssec_bits_are_part_of_the_cache_key() {
    let (server, asked) = nameserver(|q, _| vec![answer_a(q, [192, 0, 2, 9], 20)]).await;
    let shared = shared(vec![server]);
    let plain = wire::query(1, "key-test.example.org", wire::TYPE_A);
    let mut checking_disabled = plain.clone();
    checking_disabled[3] |= 0x10;
    let queries = [
        wire::with_edns(plain.clone(), 1232, false),
        wire::with_edns(plain.clone(), 1232, true),
        checking_disabled,
        plain.clone(),
    ];
    for (n, query) in queries.iter().enumerate() {
        answer(query, &shared, Transport::Udp).await.unwrap();
        assert_eq!(asked.load(Ordering::Relaxed), n + 1);
    }
    // Another EDNS size is the same answer (cut to it when sent).
    let bigger = wire::with_edns(plain, 4096, false);
    answer(&bigger, &shared, Transport::Udp).await.unwrap();
    assert_eq!(asked.load(Ordering::Relaxed), queries.len());
}

#[tokio::test]
async fn a_truncated_answer_is_not_kept_and_a_tcp_query_is_asked_over_tcp() {
    // Over UDP only a part (TC); over TCP the whole answer.
    let upstream = |query: &[u8], over: Transport| {
        let mut answer = answer_a(query, [192, 0, 2, 10], 20);
        if over == Transport::Udp {
            answer = wire::truncated(&answer);
        }
        vec![answer]
    };
    let (server, asked) = nameserver(upstream).await;
    let shared = shared(vec![server]);
    let query = wire::query(1, "tc-test.example.org", wire::TYPE_A);
    for n in 1..=2 {
        let part = answer(&query, &shared, Transport::Udp).await.unwrap();
        assert_eq!(part[2] & 0x02, 0x02, "TC");
        assert_eq!(asked.load(Ordering::Relaxed), n);
    }
    let whole = answer(&query, &shared, Transport::Tcp).await.unwrap();
    assert_eq!(whole, upstream(&query, Transport::Tcp)[0]);
    assert_eq!(asked.load(Ordering::Relaxed), 3);
    // The whole answer is kept, for either transport.
    let cached = answer(&query, &shared, Transport::Udp).await.unwrap();
    assert_eq!(cached, whole);
    assert_eq!(asked.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn an_answer_to_another_query_is_not_taken() {
    // Over UDP a stray answer (another id), a forged one (another
    // question), then the answer: the wait goes on to it.
    let other_question = |query: &[u8]| {
        let mut other = wire::query(0, "forged.example.org", wire::TYPE_A);
        other[..2].copy_from_slice(&query[..2]);
        answer_a(&other, [192, 0, 2, 66], 20)
    };
    let upstream = move |query: &[u8], over: Transport| {
        let mut stray = answer_a(query, [192, 0, 2, 66], 20);
        stray[1] ^= 1;
        match over {
            Transport::Udp => vec![
                stray,
                other_question(query),
                answer_a(query, [192, 0, 2, 11], 20),
            ],
            Transport::Tcp => vec![other_question(query)],
        }
    };
    let (server, asked) = nameserver(upstream).await;
    let shared = shared(vec![server]);
    let query = wire::query(7, "match-test.example.org", wire::TYPE_A);
    let got = answer(&query, &shared, Transport::Udp).await.unwrap();
    assert_eq!(got, answer_a(&query, [192, 0, 2, 11], 20));

    // Over TCP (one answer, the wrong one): SERVFAIL, not kept.
    let query = wire::query(8, "match-test-tcp.example.org", wire::TYPE_A);
    for n in 2..=3 {
        let got = answer(&query, &shared, Transport::Tcp).await.unwrap();
        assert_eq!(wire::rcode(&got), wire::RCODE_SERVFAIL);
        assert_eq!(asked.load(Ordering::Relaxed), n);
    }

    // The agent's answers are checked the same way.
    let (pod, asked) = pod_namespace(Some(|q| {
        let mut answer = answer_a(q, [10, 96, 0, 66], 20);
        answer[1] ^= 1;
        answer
    }))
    .await;
    let query = wire::query(9, "match-test.ns.svc.cluster.local", wire::TYPE_A);
    for n in 1..=2 {
        let got = answer(&query, &pod, Transport::Udp).await.unwrap();
        assert_eq!(wire::rcode(&got), wire::RCODE_SERVFAIL);
        assert_eq!(asked.load(Ordering::Relaxed), n);
    }
    assert!(!pod.routes.is_cluster(IpAddr::from([10, 96, 0, 66])));
}

#[tokio::test]
async fn nxdomain_is_cached_and_servfail_is_not() {
    let upstream = |query: &[u8], _| {
        let rcode = match wire::question(query) {
            Some((q, _)) if q.name.starts_with("missing") => wire::RCODE_NXDOMAIN,
            _ => wire::RCODE_SERVFAIL,
        };
        vec![wire::respond(query, rcode, &[], 0)]
    };
    let (server, asked) = nameserver(upstream).await;
    let shared = shared(vec![server]);

    let missing = wire::query(1, "missing.nx-test.example", wire::TYPE_A);
    for _ in 0..2 {
        let got = answer(&missing, &shared, Transport::Udp).await.unwrap();
        assert_eq!(wire::rcode(&got), wire::RCODE_NXDOMAIN);
    }
    assert_eq!(asked.load(Ordering::Relaxed), 1);

    let failing = wire::query(2, "failing.nx-test.example", wire::TYPE_A);
    for _ in 0..2 {
        let got = answer(&failing, &shared, Transport::Udp).await.unwrap();
        assert_eq!(wire::rcode(&got), wire::RCODE_SERVFAIL);
    }
    assert_eq!(asked.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn without_a_nameserver_the_answer_is_servfail() {
    let shared = shared(Vec::new());
    let query = wire::query(9, "nowhere.example", wire::TYPE_A);
    let got = answer(&query, &shared, Transport::Udp).await.unwrap();
    assert_eq!(got[..2], query[..2]);
    assert_eq!(wire::rcode(&got), wire::RCODE_SERVFAIL);
    assert_eq!(shared.stats.failures.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn an_unreadable_query_is_formerr_and_one_without_a_header_dropped() {
    let shared = shared(Vec::new());
    // A header, then a question cut short: FORMERR, the id kept.
    let cut = &wire::query(0xABCD, "cut.example", wire::TYPE_A)[..16];
    let got = answer(cut, &shared, Transport::Udp).await.unwrap();
    assert_eq!(got[..2], [0xAB, 0xCD]);
    assert_eq!(wire::rcode(&got), wire::RCODE_FORMERR);
    // Not even a header: nothing to answer.
    assert_eq!(
        answer(&[0xAB, 0xCD, 1, 0, 0, 1], &shared, Transport::Udp).await,
        None
    );
    assert_eq!(shared.stats.failures.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_receive_error_that_lasts_is_not_a_busy_loop() {
    // A listening TCP socket as the resolver's socket: readable once a
    // connection waits, then every receive fails (ENOTCONN).
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let _waiting = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let fd = std::os::fd::OwnedFd::from(listener);
    let socket = UdpSocket::from_std(std::net::UdpSocket::from(fd)).unwrap();
    let mut buf = [0; 64];
    let received = tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf));
    assert!(received.await.unwrap().is_err());

    // The test's runtime runs on this thread only: its CPU time is the
    // resolver's.
    let cpu = || {
        use nix::sys::resource::{UsageWho, getrusage};
        use nix::sys::time::TimeValLike;
        let usage = getrusage(UsageWho::RUSAGE_THREAD).unwrap();
        let micros = usage.user_time().num_microseconds() + usage.system_time().num_microseconds();
        Duration::from_micros(u64::try_from(micros).unwrap())
    };
    let before = cpu();
    let serving = tokio::spawn(serve_udp(socket, Arc::new(shared(Vec::new()))));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spent = cpu() - before;
    serving.abort();
    assert!(
        spent < Duration::from_millis(100),
        "{spent:?} of CPU in 300 ms"
    );
}

#[test]
fn cluster_names_are_under_a_search_domain_or_reverse_cluster_addresses() {
    let shared = shared(Vec::new());
    *lock(&shared.view.info) = Some(NetworkInfoResponse {
        search: vec!["ns.svc.cluster.local.".into(), "svc.cluster.local".into()],
        ..Default::default()
    });
    *lock(&shared.routes.subnets) = vec![(IpAddr::from([10, 96, 0, 0]), 12)];
    for name in [
        "db.ns.svc.cluster.local",
        "db.other.svc.cluster.local",
        "svc.cluster.local",
    ] {
        assert!(is_cluster_name(name, &shared), "{name}");
    }
    assert!(is_cluster_name("1.0.96.10.in-addr.arpa", &shared));
    for name in [
        "mysvc.cluster.local",
        "svc.cluster.local.evil",
        "example.com",
    ] {
        assert!(!is_cluster_name(name, &shared), "{name}");
    }
    assert!(!is_cluster_name("1.0.0.192.in-addr.arpa", &shared));
}
