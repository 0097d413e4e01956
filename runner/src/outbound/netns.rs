//! A network + mount namespace owned by tpr, without a process of its own.
//!
//! A dedicated thread `unshare`s both namespaces (only that thread moves:
//! namespaces belong to threads), sets them up (loopback up, the TUN device
//! as the default route, resolv.conf bind-mounted, mounts private so nothing
//! reaches the host) and then stays there to create sockets on request: a
//! socket belongs to the namespace of the thread that made it, whichever
//! thread uses it later. tpr keeps the namespaces' files open; processes
//! join them by path ([`NsPaths`], `/proc/<tpr>/fd/<n>`). When tpr ends,
//! however it ends, the kernel closes those files, the shim kills the
//! processes, and both namespaces and the TUN device are gone.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

use super::tun;

/// Where a process finds the namespaces (paths under /proc of tpr's open
/// files: valid while tpr runs).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NsPaths {
    pub net: PathBuf,
    pub mnt: PathBuf,
}

type Job = Box<dyn FnOnce() + Send>;

/// The namespaces and the thread that lives in them.
pub struct Netns {
    jobs: mpsc::Sender<Job>,
    paths: NsPaths,
    _files: (File, File),
}

/// What the namespace is set up with.
pub struct Setup {
    /// The content of the process's /etc/resolv.conf.
    pub resolv_conf: String,
    /// Name of the TUN device.
    pub tun_name: String,
    pub tun_addr: std::net::Ipv4Addr,
    pub tun_prefix: u8,
    pub mtu: u16,
}

impl Netns {
    /// Creates the namespaces; returns them with the TUN device's file and
    /// the mounted resolv.conf (to rewrite when the pod's view arrives).
    pub fn create(setup: Setup) -> io::Result<(Netns, OwnedFd, File)> {
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
            })?;
        let (net, mnt, tun, resolv) = ready_rx
            .recv()
            .map_err(|_| io::Error::other("the namespace thread died"))??;
        let pid = std::process::id();
        let paths = NsPaths {
            net: PathBuf::from(format!("/proc/{pid}/fd/{}", net.as_raw_fd())),
            mnt: PathBuf::from(format!("/proc/{pid}/fd/{}", mnt.as_raw_fd())),
        };
        Ok((
            Netns {
                jobs,
                paths,
                _files: (net, mnt),
            },
            tun,
            resolv,
        ))
    }

    pub fn paths(&self) -> &NsPaths {
        &self.paths
    }

    /// Runs `f` on the namespace's thread (sockets made there are in it).
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| io::Error::other("the namespace is gone"))?;
        rx.recv()
            .map_err(|_| io::Error::other("the namespace is gone"))?
    }

    /// A TCP socket in the namespace, not yet connected.
    pub fn tcp_socket(&self, v6: bool) -> io::Result<tokio::net::TcpSocket> {
        let fd = self.run(move || {
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
        })?;
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
        let listener = self.run(move || {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        tokio::net::TcpListener::from_std(listener)
    }

    /// A UDP socket bound in the namespace.
    pub fn bind_udp(&self, addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
        let socket = self.run(move || {
            let s = std::net::UdpSocket::bind(addr)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })?;
        tokio::net::UdpSocket::from_std(socket)
    }
}

/// On the namespace thread: unshare, mount, interfaces. Returns the
/// namespaces' files and the TUN device.
fn enter(setup: &Setup) -> io::Result<(File, File, OwnedFd, File)> {
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS).map_err(|e| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("cannot create a network namespace (unshare: {e})"),
        )
    })?;
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
    let net = File::open("/proc/thread-self/ns/net")?;
    let mnt = File::open("/proc/thread-self/ns/mnt")?;
    Ok((net, mnt, device, resolv))
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

/// Whether this machine lets tpr make an outbound namespace: the same
/// steps on a throwaway thread, whose namespaces vanish with it.
pub fn probe() -> io::Result<()> {
    std::thread::spawn(|| -> io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS).map_err(|e| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("cannot create a network namespace (unshare: {e})"),
            )
        })?;
        tun::create("tpr-probe").map(drop)
    })
    .join()
    .map_err(|_| io::Error::other("the probe thread panicked"))?
}
