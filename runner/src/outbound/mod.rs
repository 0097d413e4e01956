//! Outbound: the processes `tpr up` runs reach the cluster as the
//! intercepted pod does.
//!
//! One network + mount namespace per egress intercept (the intercept a
//! process takes its environment from, else the project's first), shared by
//! the processes that egress through it and by `tpr exec`:
//!
//! - its only route out is a TUN device read by a userspace TCP/IP stack in
//!   tpr ([`net`], [`stack`], [`udp`]): a connection or UDP flow to a
//!   cluster address is dialled by that intercept's agent (`DialOut`,
//!   `DialUdp`), so it leaves from the pod; any other destination is
//!   dialled by tpr from the host, and `host.tpr.internal` is the host's
//!   own localhost;
//! - its /etc/resolv.conf (a bind mount) names tpr's resolver on the
//!   namespace's loopback ([`dns`]) with the pod's search list and `ndots`:
//!   names under the pod's search domains are asked of the pod's nameserver
//!   through the agent (`Resolve`), others of the host's nameservers;
//! - intercepted connections reach the processes on its localhost
//!   ([`connect_local`]) and `to_pod` ports listen there too.
//!
//! As root tpr makes the namespaces itself ([`netns`]); otherwise inside an
//! unprivileged user namespace held by a helper process ([`netns_user`]),
//! where the kernel allows one. Nothing on the host changes: no route, no
//! resolver setting.

mod dns;
mod dns_wire;
mod join;
mod net;
mod netns;
mod netns_user;
mod relay;
mod stack;
#[cfg(test)]
mod stack_tests;
mod tun;
mod udp;

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tpr_schema::proto::{NetworkInfoRequest, NetworkInfoResponse, agent_client::AgentClient};

pub use join::{NETNS_EXEC_ARG, join_and_exec, netns_exec_args, netns_exec_main_if_requested};
pub use netns::{Mode, NsPaths};
pub use netns_user::hold_main_if_requested as netns_hold_main_if_requested;

use crate::up::{Events, UpEvent};

/// The TUN device's address (the process's source address) and the
/// address that stands for the host's own localhost (`host.tpr.internal`),
/// from the benchmarking range (RFC 2544), which no real network uses.
pub const TUN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Their IPv6 counterparts. The TUN device's is a unique local address
/// (RFC 4193, a random global ID: no other network uses it in practice),
/// not one of the benchmarking range 2001:2::/48: address selection (RFC
/// 6724) takes that for a global address, and every process would try
/// IPv6 first for each name with A and AAAA records, even on a host
/// without IPv6, whose processes do not even ask for AAAA (AI_ADDRCONFIG):
/// a failed attempt each time, fatal to a client that tries only the first
/// address. From a unique local source IPv4 stays first for global
/// destinations. `host.tpr.internal`'s is from 2001:2::/48 by the same
/// rule: a label unlike the source's keeps its IPv4 address first
/// (services on the host's localhost often listen on 127.0.0.1 alone).
pub const TUN_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfde9, 0x21a6, 0xf90b, 0, 0, 0, 0, 1);
pub const HOST_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
const TUN_PREFIX6: u8 = 64;
pub const HOST_ALIAS: &str = "host.tpr.internal";
/// tpr's resolver inside the namespace.
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 53);
/// The largest packets IP has: the fewest trips through the TUN device and
/// the userspace stack per byte (the kernel's TCP makes 64 KiB segments).
const MTU: u16 = u16::MAX;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What went wrong setting up outbound.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error(
        "outbound needs a network namespace and a TUN device, and this machine refused them: {0}. Fix: {UNAVAILABLE_FIX}"
    )]
    Unavailable(String),
    #[error(
        "outbound: no intercept to egress through; add an [[intercept]] or set `[network] outbound = false`"
    )]
    NoIntercept,
}

/// How to get outbound where the kernel refused it.
const UNAVAILABLE_FIX: &str = "run tpr as root, or allow unprivileged user namespaces (`sysctl kernel.unprivileged_userns_clone=1` on Debian/Ubuntu kernels, `sysctl kernel.apparmor_restrict_unprivileged_userns=0` on Ubuntu 24.04+, `sysctl user.max_user_namespaces` above 0); or set `[network] outbound = false` in telepresence.toml";

/// The settings of `[network]` that the runner uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    /// `Some(true)`: asked for explicitly (a failure is an error);
    /// `None`: the default (a failure is a warning, processes run as before).
    pub outbound: Option<bool>,
    /// Extra cluster ranges (`10.0.0.0/8`) dialled through the agent.
    pub cluster_subnets: Vec<(IpAddr, u8)>,
}

/// Counters of one namespace, for `tpr status`.
#[derive(Default)]
pub struct Stats {
    pub open: AtomicU64,
    pub connections: AtomicU64,
    pub dns_queries: AtomicU64,
    pub failures: AtomicU64,
    /// Flows in the stack's table (connections and UDP flows until their
    /// state is freed).
    pub flows: Arc<std::sync::atomic::AtomicUsize>,
}

/// The agent connection of one intercept, as the manager keeps it current
/// (reconnects, pod replaced).
#[derive(Default)]
pub struct Channels {
    map: Mutex<BTreeMap<String, (String, Channel)>>,
}

impl Channels {
    pub fn get(&self, intercept: &str) -> Option<(String, Channel)> {
        lock(&self.map).get(intercept).cloned()
    }
}

/// Addresses dialled through the agent: the ranges around the pod's and
/// the Services' addresses, the file's extra ranges, and every address a
/// cluster name resolved to.
#[derive(Default)]
pub struct Routes {
    subnets: Mutex<Vec<(IpAddr, u8)>>,
    learned: Mutex<HashSet<IpAddr>>,
}

fn in_subnet(ip: IpAddr, (net, prefix): (IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

impl Routes {
    pub fn is_cluster(&self, ip: IpAddr) -> bool {
        lock(&self.learned).contains(&ip) || lock(&self.subnets).iter().any(|s| in_subnet(ip, *s))
    }

    pub fn learn(&self, ips: &[IpAddr]) {
        let mut learned = lock(&self.learned);
        // Bounded: a name server answering with endless addresses cannot
        // grow tpr without end; the ranges cover the usual ones anyway.
        if learned.len() < 65_536 {
            learned.extend(ips.iter().copied());
        }
    }

    /// The ranges of a pod's view: a /16 around the pod's IP, each Service
    /// IP and nameserver (the usual pod and Service CIDRs), plus `extra`.
    fn set_from(&self, info: &NetworkInfoResponse, extra: &[(IpAddr, u8)]) {
        let mut subnets: Vec<(IpAddr, u8)> = extra.to_vec();
        let ips = std::iter::once(&info.pod_ip)
            .chain(&info.service_ips)
            .chain(&info.nameservers)
            .filter_map(|s| s.parse::<IpAddr>().ok())
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
        for ip in ips {
            let subnet = match ip {
                IpAddr::V4(_) => (ip, 16),
                IpAddr::V6(_) => (ip, 64),
            };
            if !subnets.iter().any(|s| in_subnet(ip, *s)) {
                subnets.push(subnet);
            }
        }
        *lock(&self.subnets) = subnets;
    }
}

/// The pod's view, once the agent told it.
#[derive(Default)]
pub struct PodView {
    info: Mutex<Option<NetworkInfoResponse>>,
}

impl PodView {
    pub fn search(&self) -> Vec<String> {
        lock(&self.info)
            .as_ref()
            .map(|i| {
                i.search
                    .iter()
                    .map(|s| s.trim_end_matches('.').to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What the stack and the resolver of one namespace share.
pub struct Shared {
    pub intercept: String,
    pub channels: Arc<Channels>,
    pub routes: Routes,
    pub view: PodView,
    pub stats: Stats,
    pub events: Events,
    /// The host's nameservers, for names that are not the cluster's.
    pub host_nameservers: Vec<SocketAddr>,
}

impl Shared {
    /// The agent to egress through, or why there is none now.
    pub fn egress(&self) -> Result<(String, Channel), String> {
        self.channels.get(&self.intercept).ok_or_else(|| {
            format!(
                "not connected to the traffic agent of intercept {} (reconnecting)",
                self.intercept
            )
        })
    }

    pub fn failed(&self, destination: String, reason: String) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        self.events.emit(UpEvent::OutboundFailed {
            intercept: self.intercept.clone(),
            destination,
            reason,
        });
    }
}

/// One namespace with its stack, resolver and `to_pod` listeners.
pub struct Space {
    pub netns: netns::Netns,
    pub shared: Arc<Shared>,
    resolv_conf: Mutex<std::fs::File>,
    tasks: Vec<JoinHandle<()>>,
    to_pod: Mutex<BTreeMap<u16, JoinHandle<()>>>,
}

impl Drop for Space {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in lock(&self.to_pod).values() {
            task.abort();
        }
    }
}

/// The namespaces every process is connected through, for intercepted
/// connections ([`connect_local`]).
static SPACES: Mutex<Vec<Weak<Space>>> = Mutex::new(Vec::new());

/// Connects to a local target (an intercept's `127.0.0.1:<port>`): in each
/// outbound namespace (the processes listen on their localhost there), then
/// on the host. A refusal everywhere is a refusal.
pub async fn connect_local(addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
    let spaces: Vec<Arc<Space>> = {
        let mut all = lock(&SPACES);
        all.retain(|s| s.strong_count() > 0);
        all.iter().filter_map(Weak::upgrade).collect()
    };
    // A process that listens on `localhost` may have it on ::1 only (many
    // runtimes put IPv6 first): 127.0.0.1 refused, ::1 is tried too.
    let mut targets = vec![addr];
    if addr.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) {
        targets.push(SocketAddr::from((
            std::net::Ipv6Addr::LOCALHOST,
            addr.port(),
        )));
    }
    let mut refused = None;
    for space in &spaces {
        for target in &targets {
            match space.netns.connect(*target).await {
                Ok(tcp) => return Ok(tcp),
                // What the fallback says (no IPv6 there) matters less.
                Err(_) if target != &addr => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => refused = Some(e),
                Err(e) => return Err(e),
            }
        }
    }
    for target in &targets {
        match tokio::net::TcpStream::connect(target).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) if target == &addr => refused = Some(e),
            Err(_) => {}
        }
    }
    Err(refused.unwrap_or_else(|| io::ErrorKind::ConnectionRefused.into()))
}

fn resolv_conf(view: Option<&NetworkInfoResponse>) -> String {
    let mut text = format!(
        "# tpr: outbound namespace; cluster names via the traffic agent\nnameserver {DNS_ADDR}\n"
    );
    if let Some(info) = view {
        if !info.search.is_empty() {
            text.push_str(&format!("search {}\n", info.search.join(" ")));
        }
        text.push_str(&format!("options ndots:{}\n", info.ndots.max(1)));
    }
    text
}

/// The host's nameservers: `TPR_HOST_NAMESERVERS` (`ip:port,...`, for
/// tests and odd setups), else the host's /etc/resolv.conf read before any
/// namespace replaced it.
fn host_nameservers() -> Vec<SocketAddr> {
    if let Ok(list) = std::env::var("TPR_HOST_NAMESERVERS") {
        return list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
    }
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The warning when outbound is off by default because the machine refused it.
fn outbound_off(reason: &str) -> String {
    format!(
        "outbound is off: {reason}; processes reach the network as before (for the cluster's network: {UNAVAILABLE_FIX} to silence this)"
    )
}

/// Asks an agent for its pod's network view.
async fn network_info(channel: Channel) -> Result<NetworkInfoResponse, tonic::Status> {
    Ok(AgentClient::new(channel)
        .network_info(NetworkInfoRequest {})
        .await?
        .into_inner())
}

impl Space {
    fn create(
        intercept: &str,
        channels: Arc<Channels>,
        settings: &Settings,
        events: Events,
        host_nameservers: Vec<SocketAddr>,
        view: Option<NetworkInfoResponse>,
    ) -> io::Result<Arc<Space>> {
        let (netns, tun_fd, resolv) = netns::Netns::create(netns::Setup {
            resolv_conf: resolv_conf(view.as_ref()),
            tun_name: "tpr0".into(),
            tun_addr: TUN_ADDR,
            tun_prefix: 30,
            tun_addr6: TUN_ADDR6,
            tun_prefix6: TUN_PREFIX6,
            mtu: MTU,
        })?;
        let shared = Arc::new(Shared {
            intercept: intercept.to_owned(),
            channels,
            routes: Routes::default(),
            view: PodView::default(),
            stats: Stats::default(),
            events,
            host_nameservers,
        });
        if let Some(info) = &view {
            shared.routes.set_from(info, &settings.cluster_subnets);
        } else {
            *lock(&shared.routes.subnets) = settings.cluster_subnets.clone();
        }
        *lock(&shared.view.info) = view;
        let device = tun::Device::new(tun_fd)?;
        let udp = netns.bind_udp(SocketAddr::from((DNS_ADDR, 53)))?;
        let tcp = netns.listen_tcp(SocketAddr::from((DNS_ADDR, 53)))?;
        let tasks = vec![
            tokio::spawn(stack::run(device, MTU, shared.clone())),
            tokio::spawn(dns::serve_udp(udp, shared.clone())),
            tokio::spawn(dns::serve_tcp(tcp, shared.clone())),
        ];
        let space = Arc::new(Space {
            netns,
            shared,
            resolv_conf: Mutex::new(resolv),
            tasks,
            to_pod: Mutex::new(BTreeMap::new()),
        });
        lock(&SPACES).push(Arc::downgrade(&space));
        events.emit(UpEvent::OutboundReady {
            intercept: intercept.to_owned(),
            mode: space.netns.mode(),
        });
        Ok(space)
    }

    /// Takes the pod's view: routes and the resolver's search list.
    fn set_view(&self, info: NetworkInfoResponse, extra: &[(IpAddr, u8)]) {
        use std::io::{Seek, Write};
        self.shared.routes.set_from(&info, extra);
        let text = resolv_conf(Some(&info));
        {
            let mut file = lock(&self.resolv_conf);
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = file.write_all(text.as_bytes());
        }
        *lock(&self.shared.view.info) = Some(info);
    }

    fn has_view(&self) -> bool {
        lock(&self.shared.view.info).is_some()
    }

    /// Listens on the namespace's localhost for each `to_pod` port (dialled
    /// through the agent of the intercept that lists it): 127.0.0.1, and
    /// ::1 where the namespace has IPv6 (a name `localhost` is ::1 first
    /// for many processes then).
    fn sync_to_pod(&self, ports: &BTreeMap<u16, String>) {
        let mut current = lock(&self.to_pod);
        current.retain(|port, task| {
            let keep = ports.contains_key(port);
            if !keep {
                task.abort();
            }
            keep
        });
        for (port, intercept) in ports {
            if current.contains_key(port) {
                continue;
            }
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
            match self.netns.listen_tcp(addr) {
                Ok(listener) => {
                    let serve = |listener| {
                        stack::serve_to_pod(listener, *port, intercept.clone(), self.shared.clone())
                    };
                    let v4 = serve(listener);
                    let v6 = self
                        .netns
                        .listen_tcp(SocketAddr::from((Ipv6Addr::LOCALHOST, *port)))
                        .ok()
                        .map(serve);
                    let task = tokio::spawn(async move {
                        match v6 {
                            Some(v6) => {
                                tokio::join!(v4, v6);
                            }
                            None => v4.await,
                        }
                    });
                    current.insert(*port, task);
                }
                Err(e) => self.shared.events.emit(UpEvent::Warning {
                    message: format!(
                        "outbound namespace of intercept {}: cannot listen on to_pod port {port}: {e}",
                        self.shared.intercept
                    ),
                }),
            }
        }
    }
}

/// One namespace as `tpr exec` and `tpr status` find it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceState {
    pub intercept: String,
    /// How the namespace was made (state files before it: as root).
    #[serde(default)]
    pub mode: Mode,
    pub paths: NsPaths,
    pub pod: Option<String>,
    pub processes: Vec<String>,
    pub open_connections: u64,
    pub connections: u64,
    pub dns_queries: u64,
    pub failures: u64,
}

/// What a running `tpr up` writes for `tpr exec` and `tpr status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundState {
    pub pid: u32,
    /// Why outbound is off, when it is.
    pub disabled: Option<String>,
    pub spaces: Vec<SpaceState>,
}

/// Where a project's outbound state is kept: beside its session state.
pub fn state_path(session_state: &Path) -> PathBuf {
    session_state.with_extension("outbound.json")
}

/// Outbound for one `tpr up`.
pub struct Outbound {
    settings: Settings,
    events: Events,
    channels: Arc<Channels>,
    spaces: Mutex<BTreeMap<String, Arc<Space>>>,
    /// Set when namespaces cannot be made and the file did not insist.
    disabled: Mutex<Option<String>>,
    host_nameservers: Vec<SocketAddr>,
    state_file: PathBuf,
    processes: Mutex<BTreeMap<String, Vec<String>>>,
}

/// The intercept a process egresses through.
pub fn egress_of(project: &tpr_schema::Project, process: &tpr_schema::Process) -> Option<String> {
    process
        .env_from
        .as_deref()
        .and_then(|n| project.intercept(n))
        .or(project.intercepts.first())
        .map(|i| i.name.clone())
}

impl Outbound {
    /// Outbound per the file: `None` when it is off (explicitly, or by
    /// default for a file without intercepts). Checks that namespaces can
    /// be made here, before anything in the cluster changes: an error when
    /// the file asks for outbound, else one warning and outbound off.
    pub fn new(
        network: &tpr_schema::Network,
        has_intercepts: bool,
        events: Events,
        state_file: PathBuf,
    ) -> Result<Option<Arc<Self>>, OutboundError> {
        let settings = Settings {
            outbound: network.outbound,
            cluster_subnets: network
                .cluster_subnets
                .iter()
                .filter_map(|s| parse_subnet(s))
                .collect(),
        };
        match settings.outbound {
            Some(false) => return Ok(None),
            None if !has_intercepts => return Ok(None),
            Some(true) if !has_intercepts => return Err(OutboundError::NoIntercept),
            _ => {}
        }
        let disabled = match netns::probe() {
            Ok(_) => None,
            Err(e) if settings.outbound == Some(true) => {
                return Err(OutboundError::Unavailable(e.to_string()));
            }
            Err(e) => {
                events.emit(UpEvent::Warning {
                    message: outbound_off(&e.to_string()),
                });
                Some(e.to_string())
            }
        };
        Ok(Some(Arc::new(Outbound {
            settings,
            events,
            channels: Arc::new(Channels::default()),
            spaces: Mutex::new(BTreeMap::new()),
            disabled: Mutex::new(disabled),
            host_nameservers: host_nameservers(),
            state_file,
            processes: Mutex::new(BTreeMap::new()),
        })))
    }

    /// The agents' channels, by intercept name (the manager's current view).
    pub fn set_channels(&self, channels: BTreeMap<String, (String, Channel)>) {
        *lock(&self.channels.map) = channels;
    }

    fn space(&self, intercept: &str) -> Result<Option<Arc<Space>>, OutboundError> {
        if lock(&self.disabled).is_some() {
            return Ok(None);
        }
        if let Some(space) = lock(&self.spaces).get(intercept) {
            return Ok(Some(space.clone()));
        }
        match Space::create(
            intercept,
            self.channels.clone(),
            &self.settings,
            self.events,
            self.host_nameservers.clone(),
            None,
        ) {
            Ok(space) => {
                lock(&self.spaces).insert(intercept.to_owned(), space.clone());
                Ok(Some(space))
            }
            Err(e) if self.settings.outbound == Some(true) => {
                Err(OutboundError::Unavailable(e.to_string()))
            }
            Err(e) => {
                let reason = e.to_string();
                self.events.emit(UpEvent::Warning {
                    message: outbound_off(&reason),
                });
                *lock(&self.disabled) = Some(reason);
                Ok(None)
            }
        }
    }

    /// Makes the namespaces the project's processes need and gives each
    /// its pod's view (asked of the agent); call after the intercepts are
    /// up, before the processes start, and after each reconcile.
    pub async fn prepare(&self, project: &tpr_schema::Project) -> Result<(), OutboundError> {
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in &project.processes {
            let egress = egress_of(project, p).ok_or(OutboundError::NoIntercept)?;
            wanted.entry(egress).or_default().push(p.name.clone());
        }
        // `tpr exec` without processes still gets the first intercept's.
        if let Some(first) = project.intercepts.first() {
            wanted.entry(first.name.clone()).or_default();
        }
        let to_pod: BTreeMap<u16, String> = project
            .intercepts
            .iter()
            .rev()
            .flat_map(|i| i.to_pod.iter().map(|p| (*p, i.name.clone())))
            .collect();
        for intercept in wanted.keys() {
            let Some(space) = self.space(intercept)? else {
                break;
            };
            if !space.has_view()
                && let Some((_, channel)) = self.channels.get(intercept)
            {
                match network_info(channel).await {
                    Ok(info) => space.set_view(info, &self.settings.cluster_subnets),
                    Err(status) => self.events.emit(UpEvent::Warning {
                        message: format!(
                            "outbound: the agent of intercept {intercept} did not tell its network ({}); cluster names may not resolve (is its image older than this tpr?)",
                            status.message()
                        ),
                    }),
                }
            }
            space.sync_to_pod(&to_pod);
        }
        // Namespaces nobody uses any more go (their processes have moved).
        lock(&self.spaces).retain(|name, _| wanted.contains_key(name));
        *lock(&self.processes) = wanted;
        self.write_state();
        Ok(())
    }

    /// Puts each process in the namespace of its egress intercept (made
    /// now when new; its pod's view follows in [`Outbound::prepare`]).
    /// Leaves them on the host's network when outbound is off.
    pub fn assign(
        &self,
        project: &tpr_schema::Project,
        specs: &mut [crate::supervise::ProcessSpec],
    ) -> Result<(), OutboundError> {
        for spec in specs {
            let Some(process) = project.processes.iter().find(|p| p.name == spec.name) else {
                continue;
            };
            let egress = egress_of(project, process).ok_or(OutboundError::NoIntercept)?;
            spec.namespace = self.space(&egress)?.map(|s| s.netns.paths().clone());
        }
        Ok(())
    }

    /// Writes the state file (`tpr exec`, `tpr status`).
    pub fn write_state(&self) {
        let processes = lock(&self.processes).clone();
        let spaces = lock(&self.spaces)
            .iter()
            .map(|(name, space)| {
                let stats = &space.shared.stats;
                SpaceState {
                    intercept: name.clone(),
                    mode: space.netns.mode(),
                    paths: space.netns.paths().clone(),
                    pod: self.channels.get(name).map(|(pod, _)| pod),
                    processes: processes.get(name).cloned().unwrap_or_default(),
                    open_connections: stats.open.load(Ordering::Relaxed),
                    connections: stats.connections.load(Ordering::Relaxed),
                    dns_queries: stats.dns_queries.load(Ordering::Relaxed),
                    failures: stats.failures.load(Ordering::Relaxed),
                }
            })
            .collect();
        let state = OutboundState {
            pid: std::process::id(),
            disabled: lock(&self.disabled).clone(),
            spaces,
        };
        let text = serde_json::to_string_pretty(&state).expect("state serializes");
        let tmp = self.state_file.with_extension("tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &self.state_file);
        }
    }

    pub fn remove_state(&self) {
        let _ = std::fs::remove_file(&self.state_file);
    }
}

/// Reads a running `tpr up`'s outbound state.
pub fn read_state(path: &Path) -> Option<OutboundState> {
    let state: OutboundState = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    crate::up::state::pid_alive(state.pid).then_some(state)
}

/// Parses `10.0.0.0/8`.
pub fn parse_subnet(text: &str) -> Option<(IpAddr, u8)> {
    let (ip, prefix) = text.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((ip, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An intercepted connection reaches a process that listens on
    /// `localhost` as ::1 only.
    #[tokio::test]
    async fn a_local_target_on_ipv6_loopback_only_is_reached() {
        let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
            eprintln!("skipped: this host has no ::1");
            return;
        };
        let port = listener.local_addr().unwrap().port();
        let tcp = connect_local(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .expect("reached on ::1");
        assert_eq!(
            tcp.peer_addr().unwrap().ip(),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        );
        drop(listener);
        let e = connect_local(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .expect_err("nothing listens");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }

    #[test]
    fn cluster_ranges_come_from_the_pods_view() {
        let routes = Routes::default();
        let info = NetworkInfoResponse {
            search: vec!["ns.svc.cluster.local".into()],
            nameservers: vec!["10.96.0.10".into()],
            ndots: 5,
            pod_ip: "10.244.0.7".into(),
            service_ips: vec!["10.96.0.1".into()],
        };
        routes.set_from(&info, &[parse_subnet("172.20.0.0/16").unwrap()]);
        assert!(routes.is_cluster("10.244.3.1".parse().unwrap()));
        assert!(routes.is_cluster("10.96.200.1".parse().unwrap()));
        assert!(routes.is_cluster("172.20.1.1".parse().unwrap()));
        assert!(!routes.is_cluster("192.0.2.1".parse().unwrap()));
        routes.learn(&["192.0.2.1".parse().unwrap()]);
        assert!(routes.is_cluster("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn resolv_conf_has_the_pods_search_list() {
        let info = NetworkInfoResponse {
            search: vec!["a.svc.cluster.local".into(), "svc.cluster.local".into()],
            ndots: 5,
            ..Default::default()
        };
        let text = resolv_conf(Some(&info));
        assert!(text.contains("nameserver 127.0.0.53\n"));
        assert!(text.contains("search a.svc.cluster.local svc.cluster.local\n"));
        assert!(text.contains("options ndots:5\n"));
    }

    /// The namespace's only way out is the TUN device and tpr's stack:
    /// `host.tpr.internal` reaches the host's localhost, tpr's resolver
    /// answers inside, and a cluster address with no agent fails at once.
    /// Needs root (namespaces, /dev/net/tun); says so and passes otherwise.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_namespace_reaches_out_only_through_tpr() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if let Err(e) = netns::probe() {
            eprintln!("skipped: no namespaces here ({e})");
            return;
        }
        let host = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = host.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = host.accept().await {
                let _ = tcp.write_all(b"from the host").await;
            }
        });
        let space = Space::create(
            "test",
            Arc::new(Channels::default()),
            &Settings::default(),
            Events::Human,
            Vec::new(),
            Some(NetworkInfoResponse {
                search: vec!["ns.svc.cluster.local".into()],
                pod_ip: "10.244.0.7".into(),
                ndots: 5,
                ..Default::default()
            }),
        )
        .unwrap();

        // Each step is bounded, so a regression fails instead of hanging.
        async fn step<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
            tokio::time::timeout(std::time::Duration::from_secs(20), f)
                .await
                .unwrap_or_else(|_| panic!("{what}: no progress"))
        }
        let host_addr = SocketAddr::from((HOST_ADDR, port));
        let mut tcp = step("connect", space.netns.connect(host_addr))
            .await
            .unwrap();
        let mut got = String::new();
        step("read", tcp.read_to_string(&mut got)).await.unwrap();
        assert_eq!(got, "from the host");

        // The host's loopback is not the namespace's.
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let refused = step("loopback", space.netns.connect(loopback)).await;
        assert_eq!(
            refused.unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );

        // A cluster address with no agent: refused at once.
        let cluster = SocketAddr::from(([10, 244, 0, 9], 80));
        let refused = step("cluster connect", space.netns.connect(cluster)).await;
        assert_eq!(
            refused.unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );
        assert!(space.shared.stats.failures.load(Ordering::Relaxed) >= 1);

        // tpr's resolver answers inside the namespace.
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let udp = space.netns.bind_udp(any).unwrap();
        udp.connect(SocketAddr::from((DNS_ADDR, 53))).await.unwrap();
        let query = dns_wire::query(5, HOST_ALIAS, dns_wire::TYPE_A);
        udp.send(&query).await.unwrap();
        let mut buf = [0u8; 512];
        let n = step("dns", udp.recv(&mut buf)).await.unwrap();
        assert_eq!(dns_wire::answers(&buf[..n]).0, vec![IpAddr::V4(HOST_ADDR)]);
        // A cluster name with no agent: SERVFAIL at once, not a wait.
        let query = dns_wire::query(6, "a.ns.svc.cluster.local", dns_wire::TYPE_A);
        udp.send(&query).await.unwrap();
        let n = step("dns servfail", udp.recv(&mut buf)).await.unwrap();
        assert_eq!(dns_wire::rcode(&buf[..n]), dns_wire::RCODE_SERVFAIL);
    }

    /// A state file of a tpr before user namespaces: made as root.
    #[test]
    fn an_older_state_file_reads_as_made_as_root() {
        let state: SpaceState = serde_json::from_str(
            r#"{"intercept":"hello","paths":{"net":"/proc/1/fd/5","mnt":"/proc/1/fd/6"},"pod":null,"processes":[],"open_connections":0,"connections":0,"dns_queries":0,"failures":0}"#,
        )
        .unwrap();
        assert_eq!(state.mode, Mode::Namespace);
        assert_eq!(state.paths.user, None);
    }

    #[test]
    fn subnets_parse() {
        assert_eq!(
            parse_subnet("10.0.0.0/8"),
            Some(("10.0.0.0".parse().unwrap(), 8))
        );
        assert_eq!(parse_subnet("10.0.0.0/33"), None);
        assert_eq!(parse_subnet("nope"), None);
    }
}
