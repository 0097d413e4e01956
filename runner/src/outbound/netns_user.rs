//! The outbound namespace without root: inside an unprivileged user
//! namespace, held by a helper process.
//!
//! Why a process and not a thread: unshare(CLONE_NEWUSER) refuses a
//! multithreaded caller, and entering a network namespace owned by a user
//! namespace needs CAP_SYS_ADMIN in the caller's own user namespace too,
//! which tpr (not root) does not have: no thread of tpr can go in. So tpr
//! starts its own binary as `tpr __tpr-netns-hold` (single-threaded: `main`
//! runs it first thing), which
//!
//! - unshares user, network and mount namespaces and maps its own uid and
//!   gid to themselves (the only mapping the kernel allows an unprivileged
//!   process, and processes keep their identity and their files);
//! - sets the namespaces up as the root way does ([`set_up`]) and answers
//!   with the TUN device, the mounted resolv.conf and the user, network
//!   and mount namespaces' files (tpr keeps them: processes join by path,
//!   the user namespace first);
//! - then makes sockets on request ([`SocketRequest`]): one datagram in,
//!   one datagram out carrying the socket (SCM_RIGHTS) or an errno, on a
//!   SOCK_SEQPACKET socketpair that is the helper's stdin.
//!
//! It ends with tpr: at EOF on that socket (the kernel closes tpr's end
//! however tpr ends), and by its parent-death signal.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use nix::sched::{CloneFlags, unshare};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::lock;
use super::netns::{NsPaths, Setup, SocketRequest, set_up};

/// The hidden first argument of `tpr` that runs the helper.
pub const HOLD_ARG: &str = "__tpr-netns-hold";

/// How long tpr waits for an answer: setting up takes milliseconds, a
/// socket microseconds; a helper this slow is stuck.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The first answer's files: TUN device, resolv.conf, user, net, mnt.
const SETUP_FDS: usize = 5;

/// tpr's side of a running helper.
pub struct Helper {
    /// The control socket, one exchange at a time; `None` after a failed
    /// exchange (a late answer would pair with the next request).
    control: Mutex<Option<OwnedFd>>,
    pid: u32,
    /// The user, network and mount namespaces.
    namespaces: [OwnedFd; 3],
}

impl Helper {
    /// Starts a helper that sets its namespaces up with `setup`; returns
    /// it with the TUN device and the mounted resolv.conf.
    pub fn spawn(setup: &Setup) -> io::Result<(Helper, OwnedFd, File)> {
        if cfg!(test) {
            // A unit test's binary is not tpr: it cannot be the helper.
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no user-namespace helper in unit tests",
            ));
        }
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        for direction in [
            rustix::net::sockopt::Timeout::Recv,
            rustix::net::sockopt::Timeout::Send,
        ] {
            rustix::net::sockopt::set_socket_timeout(&ours, direction, Some(ANSWER_TIMEOUT))?;
        }
        let pid = start(theirs)?;
        let failed =
            |what: &str| io::Error::other(format!("the namespace helper (pid {pid}) {what}"));
        send(ours.as_fd(), encode_setup(setup).as_bytes(), &[])?;
        let mut buf = vec![0u8; 4096];
        let (n, fds) =
            recv(ours.as_fd(), &mut buf).map_err(|e| failed(&format!("did not answer: {e}")))?;
        let answer = &buf[..n];
        if let Some(error) = answer.strip_prefix(b"error: ") {
            return Err(io::Error::other(
                String::from_utf8_lossy(error).into_owned(),
            ));
        }
        let Ok([tun, resolv, user, net, mnt]) = <[OwnedFd; SETUP_FDS]>::try_from(fds) else {
            return Err(failed("ended without setting up its namespaces"));
        };
        let helper = Helper {
            control: Mutex::new(Some(ours)),
            pid,
            namespaces: [user, net, mnt],
        };
        Ok((helper, tun, File::from(resolv)))
    }

    /// Where processes join: tpr's files of the helper's namespaces.
    pub fn paths(&self) -> NsPaths {
        let pid = std::process::id();
        let path = |fd: &OwnedFd| PathBuf::from(format!("/proc/{pid}/fd/{}", fd.as_raw_fd()));
        let [user, net, mnt] = &self.namespaces;
        NsPaths {
            user: Some(path(user)),
            net: path(net),
            mnt: path(mnt),
        }
    }

    /// Asks the helper for a socket in its namespace.
    pub fn socket(&self, request: SocketRequest) -> io::Result<OwnedFd> {
        let mut control = lock(&self.control);
        let Some(socket) = control.as_ref() else {
            return Err(io::Error::other(format!(
                "the namespace helper (pid {}) is gone",
                self.pid
            )));
        };
        match exchange(socket.as_fd(), request) {
            Ok(answer) => answer,
            Err(e) => {
                *control = None;
                Err(io::Error::other(format!(
                    "the namespace helper (pid {}) failed: {e}",
                    self.pid
                )))
            }
        }
    }
}

/// One request and its answer: the socket, or the helper's errno (the
/// outer error: the exchange itself failed).
fn exchange(control: BorrowedFd<'_>, request: SocketRequest) -> io::Result<io::Result<OwnedFd>> {
    send(control, encode_request(request).as_bytes(), &[])?;
    let mut buf = [0u8; 64];
    let (n, mut fds) = recv(control, &mut buf)?;
    let answer = &buf[..n];
    if answer == b"ok"
        && let Some(fd) = fds.pop()
    {
        return Ok(Ok(fd));
    }
    let errno = answer
        .strip_prefix(b"errno ")
        .and_then(|e| std::str::from_utf8(e).ok()?.parse().ok());
    match errno {
        Some(errno) => Ok(Err(io::Error::from_raw_os_error(errno))),
        None if n == 0 => Err(io::Error::other("it ended")),
        None => Err(io::Error::other("an answer out of protocol")),
    }
}

/// Starts the helper from a thread that then waits for it (and reaps it):
/// the parent-death signal follows the thread that forked, so that thread
/// lives exactly as long as the helper.
fn start(control: OwnedFd) -> io::Result<u32> {
    let (started_tx, started_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("tpr-netns-hold".into())
        .spawn(move || {
            // /proc/self/exe: this very binary, even if an upgrade replaced
            // the file.
            let child = Command::new("/proc/self/exe")
                .arg0("tpr")
                .arg(HOLD_ARG)
                .stdin(Stdio::from(control))
                .stdout(Stdio::null())
                .current_dir("/")
                // Not in tpr's process group: Ctrl-C is tpr's to handle,
                // and the helper serves until tpr is done.
                .process_group(0)
                .spawn();
            match child {
                Ok(mut child) => {
                    let _ = started_tx.send(Ok(child.id()));
                    let _ = child.wait();
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                }
            }
        })?;
    started_rx
        .recv()
        .map_err(|_| io::Error::other("the thread starting the namespace helper died"))?
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start the namespace helper: {e}")))
}

/// Whether a helper can set up its namespaces here (it ends at once).
pub fn probe() -> io::Result<()> {
    Helper::spawn(&Setup {
        resolv_conf: String::new(),
        tun_name: "tpr-probe".into(),
        tun_addr: super::TUN_ADDR,
        tun_prefix: 30,
        tun_addr6: super::TUN_ADDR6,
        tun_prefix6: super::TUN_PREFIX6,
        mtu: 1500,
    })
    .map(drop)
}

/// `tpr __tpr-netns-hold`: runs the helper and exits if this process was
/// started as one; returns otherwise. `main` calls it first thing, while
/// the process is single-threaded.
pub fn hold_main_if_requested() {
    let mut args = std::env::args_os();
    args.next();
    if args.next().as_deref() != Some(OsStr::new(HOLD_ARG)) {
        return;
    }
    std::process::exit(hold());
}

fn hold() -> i32 {
    // SIGKILL when tpr's thread that started the helper ends; EOF on the
    // control socket covers the rest (tpr ended before this line).
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let stdin = std::io::stdin();
    let control = stdin.as_fd();
    let mut buf = vec![0u8; 64 << 10];
    let setup = match recv(control, &mut buf) {
        Ok((n, _)) if n > 0 => decode_setup(&buf[..n]),
        _ => None,
    };
    let Some(setup) = setup else {
        eprintln!("tpr: {HOLD_ARG} is internal to tpr");
        return 64;
    };
    match establish(&setup) {
        Ok(files) => {
            let fds: Vec<BorrowedFd<'_>> = files.iter().map(AsFd::as_fd).collect();
            if send(control, b"ok", &fds).is_err() {
                return 1;
            }
            // tpr holds them now.
            drop(files);
        }
        Err(e) => {
            let _ = send(control, format!("error: {e}").as_bytes(), &[]);
            return 1;
        }
    }
    serve(control, &mut buf)
}

/// The helper's setup: the namespaces, owned by a new user namespace,
/// set up as the root way does. Returns the files for tpr.
fn establish(setup: &Setup) -> io::Result<Vec<OwnedFd>> {
    // The TUN device needs /dev/net/tun open to this user, which a user
    // namespace cannot change: say so plainly.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot open /dev/net/tun: {e}; without root it must be open to you (mode 0666, as udev sets it on most distributions)"
                ),
            )
        })?;
    let (uid, gid) = own_ids()?;
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
        .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, format!("unshare: {e}")))?;
    // An unprivileged process may map only its own ids, and its gid only
    // once setgroups is denied. Mapped to themselves: processes keep their
    // uid and gid, and their files stay theirs.
    for (file, text) in [
        ("/proc/self/setgroups", "deny".to_owned()),
        ("/proc/self/gid_map", format!("{gid} {gid} 1")),
        ("/proc/self/uid_map", format!("{uid} {uid} 1")),
    ] {
        std::fs::write(file, text)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot write {file}: {e}")))?;
    }
    let (tun, resolv) = set_up(setup)?;
    let mut files = vec![tun, OwnedFd::from(resolv)];
    for ns in ["user", "net", "mnt"] {
        files.push(File::open(format!("/proc/self/ns/{ns}"))?.into());
    }
    Ok(files)
}

/// Answers requests until tpr closes its end.
fn serve(control: BorrowedFd<'_>, buf: &mut [u8]) -> i32 {
    loop {
        let n = match recv(control, buf) {
            Ok((0, _)) | Err(_) => return 0,
            Ok((n, _)) => n,
        };
        let made = decode_request(&buf[..n])
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
            .and_then(SocketRequest::make);
        let sent = match made {
            Ok(fd) => send(control, b"ok", &[fd.as_fd()]),
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                send(control, format!("errno {errno}").as_bytes(), &[])
            }
        };
        if sent.is_err() {
            return 0;
        }
    }
}

/// This process's effective uid and gid (the ids its user namespace may
/// map), from /proc/self/status.
fn own_ids() -> io::Result<(u32, u32)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let effective = |key: &str| -> Option<u32> {
        let ids = status.lines().find_map(|l| l.strip_prefix(key))?;
        ids.split_whitespace().nth(1)?.parse().ok()
    };
    match (effective("Uid:"), effective("Gid:")) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(io::Error::other(
            "cannot read this process's uid and gid from /proc/self/status",
        )),
    }
}

/// One datagram with `fds` attached.
fn send(socket: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(SETUP_FDS))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !ancillary.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many files for one message"));
    }
    rustix::net::sendmsg(
        socket,
        &[IoSlice::new(data)],
        &mut ancillary,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// One datagram into `buf` (0 bytes: the other end is closed) and the
/// files attached to it (close-on-exec).
fn recv(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(SETUP_FDS))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(&mut *buf)],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
            }
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
    {
        return Err(io::Error::other("a message too long"));
    }
    Ok((msg.bytes, fds))
}

fn encode_setup(s: &Setup) -> String {
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n{}",
        s.tun_name, s.tun_addr, s.tun_prefix, s.tun_addr6, s.tun_prefix6, s.mtu, s.resolv_conf
    )
}

fn decode_setup(data: &[u8]) -> Option<Setup> {
    let mut lines = std::str::from_utf8(data).ok()?.splitn(7, '\n');
    Some(Setup {
        tun_name: lines.next()?.to_owned(),
        tun_addr: lines.next()?.parse().ok()?,
        tun_prefix: lines.next()?.parse().ok()?,
        tun_addr6: lines.next()?.parse().ok()?,
        tun_prefix6: lines.next()?.parse().ok()?,
        mtu: lines.next()?.parse().ok()?,
        resolv_conf: lines.next()?.to_owned(),
    })
}

fn encode_request(request: SocketRequest) -> String {
    match request {
        SocketRequest::Tcp { v6: false } => "tcp4".to_owned(),
        SocketRequest::Tcp { v6: true } => "tcp6".to_owned(),
        SocketRequest::ListenTcp(addr) => format!("listen {addr}"),
        SocketRequest::BindUdp(addr) => format!("udp {addr}"),
    }
}

fn decode_request(data: &[u8]) -> Option<SocketRequest> {
    let text = std::str::from_utf8(data).ok()?;
    Some(match text.split_once(' ') {
        None if text == "tcp4" => SocketRequest::Tcp { v6: false },
        None if text == "tcp6" => SocketRequest::Tcp { v6: true },
        Some(("listen", addr)) => SocketRequest::ListenTcp(addr.parse().ok()?),
        Some(("udp", addr)) => SocketRequest::BindUdp(addr.parse().ok()?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_setups_read_back_as_written() {
        for request in [
            SocketRequest::Tcp { v6: false },
            SocketRequest::Tcp { v6: true },
            SocketRequest::ListenTcp("127.0.0.1:8080".parse().unwrap()),
            SocketRequest::BindUdp("[::1]:53".parse().unwrap()),
        ] {
            let text = encode_request(request);
            assert_eq!(decode_request(text.as_bytes()), Some(request), "{text}");
        }
        assert_eq!(decode_request(b"listen nowhere"), None);
        let setup = Setup {
            resolv_conf: "nameserver 127.0.0.53\nsearch a b\n".into(),
            tun_name: "tpr0".into(),
            tun_addr: super::super::TUN_ADDR,
            tun_prefix: 30,
            tun_addr6: super::super::TUN_ADDR6,
            tun_prefix6: super::super::TUN_PREFIX6,
            mtu: 65535,
        };
        assert_eq!(decode_setup(encode_setup(&setup).as_bytes()), Some(setup));
    }

    /// The socket of a request arrives on the other end, working: files
    /// cross the socketpair as the helper sends them.
    #[test]
    fn a_socket_crosses_the_socketpair() {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let request = SocketRequest::ListenTcp("127.0.0.1:0".parse().unwrap());
        send(a.as_fd(), encode_request(request).as_bytes(), &[]).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = recv(b.as_fd(), &mut buf).unwrap();
        let made = decode_request(&buf[..n]).unwrap().make().unwrap();
        send(b.as_fd(), b"ok", &[made.as_fd()]).unwrap();
        drop(made);
        let listener = std::net::TcpListener::from(exchange_answer(a.as_fd()));
        let addr = listener.local_addr().unwrap();
        std::net::TcpStream::connect(addr).unwrap();
        drop(b);
        let mut buf = [0u8; 8];
        assert_eq!(recv(a.as_fd(), &mut buf).unwrap().0, 0, "EOF once closed");
    }

    fn exchange_answer(socket: BorrowedFd<'_>) -> OwnedFd {
        let mut buf = [0u8; 64];
        let (n, mut fds) = recv(socket, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"ok");
        fds.pop().unwrap()
    }
}
