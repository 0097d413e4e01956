//! A network + mount namespace owned by tpr, made one of two ways:
//!
//! - as root (CAP_SYS_ADMIN), without a process of its own: a dedicated
//!   thread `unshare`s both namespaces (only that thread moves: namespaces
//!   belong to threads), sets them up ([`set_up`]) and then stays there to
//!   create sockets on request: a socket belongs to the namespace of the
//!   thread that made it, whichever thread uses it later. tpr keeps the
//!   namespaces' files open; processes join them by path ([`NsPaths`],
//!   `/proc/<tpr>/fd/<n>`);
//! - otherwise, where the kernel allows it, inside an unprivileged user
//!   namespace held by a helper process ([`super::netns_user`]), which
//!   makes the sockets instead of the thread; processes join the user
//!   namespace first.
//!
//! When tpr ends, however it ends, the kernel closes the namespaces' files
//! (and the helper ends), the shim kills the processes, and both namespaces
//! and the TUN device are gone.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use serde::{Deserialize, Serialize};

use super::{netns_user, tun};

/// Where a process finds the namespaces (paths under /proc of tpr's open
/// files: valid while tpr runs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsPaths {
    /// The user namespace to join first ([`Mode::UserNamespace`]); `None`:
    /// made as root, nothing to join before the others.
    #[serde(default)]
    pub user: Option<PathBuf>,
    pub net: PathBuf,
    pub mnt: PathBuf,
}

/// How a namespace was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// By tpr as root (or with CAP_SYS_ADMIN). The default: state files
    /// written before the user namespace existed were all made so.
    #[default]
    Namespace,
    /// Inside an unprivileged user namespace (tpr is not root).
    UserNamespace,
}

impl Mode {
    /// For people: `tpr up`'s line and `tpr status`.
    pub fn describe(self) -> &'static str {
        match self {
            Mode::Namespace => "as root",
            Mode::UserNamespace => "in a user namespace, without root",
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The namespaces and whoever makes their sockets.
pub struct Netns {
    maker: Maker,
    paths: NsPaths,
}

enum Maker {
    /// The thread that lives in them; the namespaces' files (net, mnt).
    Thread {
        jobs: mpsc::Sender<Job>,
        _files: (File, File),
    },
    /// The helper process that lives in them.
    Helper(netns_user::Helper),
}

/// What the namespace is set up with.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    /// The content of the process's /etc/resolv.conf.
    pub resolv_conf: String,
    /// Name of the TUN device.
    pub tun_name: String,
    pub tun_addr: std::net::Ipv4Addr,
    pub tun_prefix: u8,
    pub tun_addr6: std::net::Ipv6Addr,
    pub tun_prefix6: u8,
    pub mtu: u16,
}

/// A socket made inside the namespace, on request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketRequest {
    /// A TCP socket, not yet connected.
    Tcp { v6: bool },
    /// A TCP listener bound to the address.
    ListenTcp(SocketAddr),
    /// A UDP socket bound to the address.
    BindUdp(SocketAddr),
}

impl SocketRequest {
    /// Makes the socket, non-blocking and close-on-exec, in the network
    /// namespace of the calling thread.
    pub fn make(self) -> io::Result<OwnedFd> {
        match self {
            SocketRequest::Tcp { v6 } => {
                let family = if v6 {
                    rustix::net::AddressFamily::INET6
                } else {
                    rustix::net::AddressFamily::INET
                };
                Ok(rustix::net::socket_with(
                    family,
                    rustix::net::SocketType::STREAM,
                    rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
                    None,
                )?)
            }
            SocketRequest::ListenTcp(addr) => {
                let l = std::net::TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Ok(l.into())
            }
            SocketRequest::BindUdp(addr) => {
                let s = std::net::UdpSocket::bind(addr)?;
                s.set_nonblocking(true)?;
                Ok(s.into())
            }
        }
    }
}

/// Why the namespaces could not be made as root.
enum RootFailure {
    /// unshare refused (no CAP_SYS_ADMIN): a user namespace may do.
    Unshare(nix::errno::Errno),
    /// Later: the namespaces exist, something in them failed.
    SetUp(io::Error),
}

/// Both ways failed: one message with both reasons.
fn neither(root: nix::errno::Errno, user: io::Error) -> io::Error {
    io::Error::new(
        user.kind(),
        format!(
            "cannot create a network namespace as root (unshare: {root}) nor in an unprivileged user namespace: {user}"
        ),
    )
}

impl Netns {
    /// Creates the namespaces (as root, else in a user namespace); returns
    /// them with the TUN device's file and the mounted resolv.conf (to
    /// rewrite when the pod's view arrives).
    pub fn create(setup: Setup) -> io::Result<(Netns, OwnedFd, File)> {
        match Self::on_thread(setup.clone()) {
            Ok(made) => Ok(made),
            Err(RootFailure::SetUp(e)) => Err(e),
            Err(RootFailure::Unshare(root)) => {
                let (helper, tun, resolv) =
                    netns_user::Helper::spawn(&setup).map_err(|e| neither(root, e))?;
                let paths = helper.paths();
                let netns = Netns {
                    maker: Maker::Helper(helper),
                    paths,
                };
                Ok((netns, tun, resolv))
            }
        }
    }

    /// As root: the namespaces of a dedicated thread.
    fn on_thread(setup: Setup) -> Result<(Netns, OwnedFd, File), RootFailure> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (jobs, job_rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("tpr-netns".into())
            .spawn(move || {
                let made = enter(&setup);
                let ok = made.is_ok();
                let _ = ready_tx.send(made);
                if ok {
                    // Serve socket requests until the namespace is dropped.
                    while let Ok(job) = job_rx.recv() {
                        job();
                    }
                }
            })
            .map_err(RootFailure::SetUp)?;
        let (net, mnt, tun, resolv) = ready_rx
            .recv()
            .map_err(|_| RootFailure::SetUp(io::Error::other("the namespace thread died")))??;
        let pid = std::process::id();
        let paths = NsPaths {
            user: None,
            net: PathBuf::from(format!("/proc/{pid}/fd/{}", net.as_raw_fd())),
            mnt: PathBuf::from(format!("/proc/{pid}/fd/{}", mnt.as_raw_fd())),
        };
        let maker = Maker::Thread {
            jobs,
            _files: (net, mnt),
        };
        Ok((Netns { maker, paths }, tun, resolv))
    }

    pub fn paths(&self) -> &NsPaths {
        &self.paths
    }

    pub fn mode(&self) -> Mode {
        match self.maker {
            Maker::Thread { .. } => Mode::Namespace,
            Maker::Helper(_) => Mode::UserNamespace,
        }
    }

    /// Makes a socket in the namespace.
    fn socket(&self, request: SocketRequest) -> io::Result<OwnedFd> {
        let jobs = match &self.maker {
            Maker::Thread { jobs, .. } => jobs,
            Maker::Helper(helper) => return helper.socket(request),
        };
        let gone = || io::Error::other("the namespace is gone");
        let (tx, rx) = mpsc::sync_channel(1);
        jobs.send(Box::new(move || {
            let _ = tx.send(request.make());
        }))
        .map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }

    /// A TCP socket in the namespace, not yet connected.
    pub fn tcp_socket(&self, v6: bool) -> io::Result<tokio::net::TcpSocket> {
        let fd = self.socket(SocketRequest::Tcp { v6 })?;
        Ok(tokio::net::TcpSocket::from_std_stream(
            std::net::TcpStream::from(fd),
        ))
    }

    /// Connects to `addr` from inside the namespace (its localhost).
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        self.tcp_socket(addr.is_ipv6())?.connect(addr).await
    }

    /// A TCP listener in the namespace.
    pub fn listen_tcp(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
        let fd = self.socket(SocketRequest::ListenTcp(addr))?;
        tokio::net::TcpListener::from_std(std::net::TcpListener::from(fd))
    }

    /// A UDP socket bound in the namespace.
    pub fn bind_udp(&self, addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
        let fd = self.socket(SocketRequest::BindUdp(addr))?;
        tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd))
    }
}

/// On the namespace thread: unshare, then [`set_up`]. Returns the
/// namespaces' files and the TUN device.
fn enter(setup: &Setup) -> Result<(File, File, OwnedFd, File), RootFailure> {
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS).map_err(RootFailure::Unshare)?;
    let set_up = || -> io::Result<_> {
        let (device, resolv) = set_up(setup)?;
        let net = File::open("/proc/thread-self/ns/net")?;
        let mnt = File::open("/proc/thread-self/ns/mnt")?;
        Ok((net, mnt, device, resolv))
    };
    set_up().map_err(RootFailure::SetUp)
}

/// In new network and mount namespaces (either way): mounts private,
/// resolv.conf, loopback up, the TUN device as the default route (IPv4,
/// and IPv6 where the kernel has it). Returns the TUN device and the
/// mounted resolv.conf.
pub fn set_up(setup: &Setup) -> io::Result<(OwnedFd, File)> {
    // Nothing mounted here may propagate to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| io::Error::other(format!("cannot make mounts private: {e}")))?;
    let resolv = bind_resolv_conf(&setup.resolv_conf)?;
    tun::link_up("lo")?;
    let device = tun::create(&setup.tun_name)?;
    tun::configure(&setup.tun_name, setup.tun_addr, setup.tun_prefix, setup.mtu)?;
    tun::default_route(&setup.tun_name)?;
    // Without IPv6 (a kernel without it, a sysctl refused) IPv4 alone:
    // outbound does not depend on it.
    if let Err(e) = tun::configure_v6(&setup.tun_name, setup.tun_addr6, setup.tun_prefix6) {
        tracing::debug!("outbound namespace without IPv6: {e}");
    }
    Ok((device, resolv))
}

/// Bind-mounts a file with `content` over /etc/resolv.conf (over its
/// target when it is a symlink, as systemd-resolved's is). The file is
/// unlinked at once: the mount keeps it, and nothing stays on disk. The
/// returned file is it, open for writing.
fn bind_resolv_conf(content: &str) -> io::Result<File> {
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "tpr-resolv-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, content)?;
    let file = std::fs::OpenOptions::new().write(true).open(&path);
    let mounted = mount(
        Some(&path),
        "/etc/resolv.conf",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    );
    let _ = std::fs::remove_file(&path);
    mounted.map_err(|e| io::Error::other(format!("cannot bind-mount /etc/resolv.conf: {e}")))?;
    file
}

/// Whether this machine lets tpr make an outbound namespace, and how: as
/// root, the same steps on a throwaway thread, whose namespaces vanish
/// with it; else a throwaway user-namespace helper.
pub fn probe() -> io::Result<Mode> {
    let root = std::thread::spawn(|| -> Result<(), RootFailure> {
        unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
            .map_err(RootFailure::Unshare)?;
        tun::create("tpr-probe")
            .map(drop)
            .map_err(RootFailure::SetUp)
    })
    .join()
    .map_err(|_| io::Error::other("the probe thread panicked"))?;
    match root {
        Ok(()) => Ok(Mode::Namespace),
        Err(RootFailure::SetUp(e)) => Err(e),
        Err(RootFailure::Unshare(root)) => netns_user::probe()
            .map(|()| Mode::UserNamespace)
            .map_err(|e| neither(root, e)),
    }
}
