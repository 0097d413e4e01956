//! The TUN device of a namespace: created and configured with the classic
//! ioctls (no netlink library, no `ip` binary), and read and written one
//! packet at a time by the userspace stack ([`super::net`]) through
//! [`Device`].
//!
//! These calls run on the namespace's thread, so the device, its address and
//! its route exist only in that namespace.

use std::ffi::c_char;
use std::io;
use std::io::IoSlice;
use std::net::Ipv4Addr;
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
