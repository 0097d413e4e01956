//! The TUN device of a namespace: created and configured with the classic
//! ioctls (no netlink library, no `ip` binary), and read and written one
//! packet at a time by the userspace stack ([`super::net`]) through
//! [`Device`].
//!
//! These calls run on the namespace's thread, so the device, its addresses
//! and its routes exist only in that namespace.

use std::ffi::c_char;
use std::io;
use std::io::IoSlice;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    #[allow(unsafe_code)]
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as c_char;
    }
    Ok(req)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads
    // a sockaddr_in from it, as the ioctls' ABI says.
    #[allow(unsafe_code)]
    unsafe {
        std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin)
    }
}

/// One ioctl on `fd` with a pointer argument.
fn ioctl<T>(fd: &impl AsRawFd, request: libc::Ioctl, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is the structure `request` expects (each caller pairs
    // them as the kernel's ABI says) and lives across the call.
    #[allow(unsafe_code)]
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request, std::ptr::from_mut(arg)) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A socket to issue interface ioctls on (any socket of the namespace).
fn control_socket() -> io::Result<std::net::UdpSocket> {
    std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .or_else(|_| std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
}

/// Creates the TUN device `name` (no packet-information header).
pub fn create(name: &str) -> io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/net/tun: {e}")))?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    ioctl(&file, libc::TUNSETIFF as libc::Ioctl, &mut req)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create a TUN device: {e}")))?;
    let fd = OwnedFd::from(file);
    rustix::io::ioctl_fionbio(&fd, true)?;
    Ok(fd)
}

/// Sets `name` up (flags IFF_UP).
pub fn link_up(name: &str) -> io::Result<()> {
    let socket = control_socket()?;
    let mut req = ifreq(name)?;
    ioctl(&socket, libc::SIOCGIFFLAGS as libc::Ioctl, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    #[allow(unsafe_code)]
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(&socket, libc::SIOCSIFFLAGS as libc::Ioctl, &mut req)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot set {name} up: {e}")))
}

/// Gives `name` its address, netmask and MTU, and sets it up.
pub fn configure(name: &str, addr: Ipv4Addr, prefix: u8, mtu: u16) -> io::Result<()> {
    let socket = control_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr(addr);
    ioctl(&socket, libc::SIOCSIFADDR as libc::Ioctl, &mut req)?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    req.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(mask));
    ioctl(&socket, libc::SIOCSIFNETMASK as libc::Ioctl, &mut req)?;
    req.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
    ioctl(&socket, libc::SIOCSIFMTU as libc::Ioctl, &mut req)?;
    link_up(name)
}

/// `struct rtentry` of <net/route.h> (64-bit layout).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_tos: libc::c_uchar,
    rt_class: libc::c_uchar,
    rt_pad4: [libc::c_short; 3],
    rt_metric: libc::c_short,
    rt_dev: *mut c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// The default route through `name`: in the namespace every destination
/// but loopback goes to tpr.
pub fn default_route(name: &str) -> io::Result<()> {
    let socket = control_socket()?;
    let mut dev: Vec<c_char> = name.bytes().map(|b| b as c_char).collect();
    dev.push(0);
    let mut route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_tos: 0,
        rt_class: 0,
        rt_pad4: [0; 3],
        rt_metric: 0,
        rt_dev: dev.as_mut_ptr(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    ioctl(&socket, libc::SIOCADDRT as libc::Ioctl, &mut route)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot route through {name}: {e}")))
}

/// `struct in6_rtmsg` of <linux/ipv6_route.h> (libc's has private fields).
#[repr(C)]
struct In6RtMsg {
    rtmsg_dst: libc::in6_addr,
    rtmsg_src: libc::in6_addr,
    rtmsg_gateway: libc::in6_addr,
    rtmsg_type: u32,
    rtmsg_dst_len: u16,
    rtmsg_src_len: u16,
    rtmsg_metric: u32,
    rtmsg_info: libc::c_ulong,
    rtmsg_flags: u32,
    rtmsg_ifindex: libc::c_int,
}

/// Turns a `/proc/sys/net/ipv6/conf/...` switch off where it is on.
fn ipv6_sysctl_off(dev: &str, key: &str) -> io::Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{dev}/{key}");
    if std::fs::read_to_string(&path)?.trim() != "0" {
        std::fs::write(&path, "0")?;
    }
    Ok(())
}

/// Waits, 2 s at most, until the namespace's `addr` is no longer
/// "tentative": the kernel ends even a skipped duplicate address detection
/// on a work queue, milliseconds later; until then a connection gets
/// another source address (the link-local one), or none (EADDRNOTAVAIL).
fn wait_usable(addr: Ipv6Addr) {
    const IFA_F_TENTATIVE: u32 = 0x40;
    let hex: String = addr.octets().iter().map(|b| format!("{b:02x}")).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        // Columns: address, index, prefix length, scope, flags, device.
        let table = std::fs::read_to_string("/proc/thread-self/net/if_inet6").unwrap_or_default();
        let flags = table.lines().find_map(|line| {
            let mut columns = line.split_whitespace();
            if columns.next()? != hex {
                return None;
            }
            u32::from_str_radix(columns.nth(3)?, 16).ok()
        });
        if flags.is_some_and(|f| f & IFA_F_TENTATIVE == 0) || std::time::Instant::now() > deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Gives `name` an IPv6 address and makes it the IPv6 default route too.
/// An error where the kernel has no IPv6 (the caller goes on without).
pub fn configure_v6(name: &str, addr: Ipv6Addr, prefix: u8) -> io::Result<()> {
    // A new namespace takes the host's defaults: IPv6 may be off there (the
    // namespace's ::1 with it). Duplicate address detection would hold the
    // address "tentative" (EADDRNOTAVAIL) for a second or two: off too, at
    // best (/proc/sys may be read-only), since the kernel skips it on a
    // NOARP device such as a TUN one anyway.
    for dev in ["all", name] {
        ipv6_sysctl_off(dev, "disable_ipv6")?;
        let _ = ipv6_sysctl_off(dev, "accept_dad");
    }
    // IPv6 addresses and routes are set on an IPv6 socket.
    let socket = rustix::net::socket_with(
        rustix::net::AddressFamily::INET6,
        rustix::net::SocketType::DGRAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    let mut req = ifreq(name)?;
    ioctl(&socket, libc::SIOCGIFINDEX as libc::Ioctl, &mut req)?;
    // SAFETY: SIOCGIFINDEX filled the index member.
    #[allow(unsafe_code)]
    let ifindex = unsafe { req.ifr_ifru.ifru_ifindex };
    let mut address = libc::in6_ifreq {
        ifr6_addr: libc::in6_addr {
            s6_addr: addr.octets(),
        },
        ifr6_prefixlen: u32::from(prefix),
        ifr6_ifindex: ifindex,
    };
    ioctl(&socket, libc::SIOCSIFADDR as libc::Ioctl, &mut address)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot give {name} {addr}: {e}")))?;
    wait_usable(addr);
    let any = libc::in6_addr { s6_addr: [0; 16] };
    // ::/0 on the device, no gateway: every IPv6 destination but the
    // namespace's own goes to tpr.
    let mut route = In6RtMsg {
        rtmsg_dst: any,
        rtmsg_src: any,
        rtmsg_gateway: any,
        rtmsg_type: u32::from(libc::RTN_UNICAST),
        rtmsg_dst_len: 0,
        rtmsg_src_len: 0,
        rtmsg_metric: 0,
        rtmsg_info: 0,
        rtmsg_flags: u32::from(libc::RTF_UP),
        rtmsg_ifindex: ifindex,
    };
    ioctl(&socket, libc::SIOCADDRT as libc::Ioctl, &mut route)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot route IPv6 through {name}: {e}")))
}

/// The TUN device for the stack: each read is one packet, each write one.
/// Reads wait on the reactor; writes do not wait at all (a TUN device
/// takes a packet at once or drops it, as a link would; TCP resends).
pub struct Device {
    fd: AsyncFd<OwnedFd>,
}

impl Device {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        // Deprecated for file descriptors it does not own; an `OwnedFd` is
        // owned, and closed only when the device is dropped.
        #[allow(deprecated)]
        Ok(Device {
            fd: AsyncFd::new(fd)?,
        })
    }

    /// The next packet into `buf`; its length.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut *buf)?)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes one packet made of `parts` (header, payload: no copy to join
    /// them).
    pub fn send(&self, parts: &[IoSlice<'_>]) -> io::Result<()> {
        rustix::io::writev(self.fd.get_ref(), parts)?;
        Ok(())
    }
}
