//! Raw byte relay between two TCP connections (passthrough to the app).
//!
//! Each direction starts by copying through a small buffer that doubles
//! while reads fill it, so a thousand quiet connections cost little memory.
//! Once a direction proves to be a bulk transfer it switches to `splice(2)`
//! through a pipe: the kernel moves the pages, no copy through user space,
//! which is what keeps passthrough close to a direct connection on a small
//! node. Pipes are made only for bulk directions (pipes count against a
//! per-user limit); if one cannot be made, copying goes on.

use std::io;
use std::os::fd::OwnedFd;

use rustix::net::Shutdown;
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

const FIRST_BUFFER: usize = 4 << 10;
const MAX_BUFFER: usize = 64 << 10;
/// Pipe capacity asked for bulk directions (the default is 64 KiB).
const PIPE_SIZE: usize = 1 << 20;

/// Relays until both directions ended; each end of input half-closes the
/// other side's output.
pub async fn relay(a: TcpStream, b: TcpStream) -> io::Result<()> {
    tokio::try_join!(one_way(&a, &b), one_way(&b, &a)).map(|_| ())
}

async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; FIRST_BUFFER];
    loop {
        let n = read(from, &mut buf).await?;
        if n == 0 {
            return shutdown(to);
        }
        write_all(to, &buf[..n]).await?;
        if n == buf.len() {
            if buf.len() < MAX_BUFFER {
                buf = vec![0u8; buf.len() * 2];
            } else if let Ok(pipe) = bulk_pipe() {
                drop(buf);
                return splice_loop(from, to, pipe).await;
            }
        }
    }
}

fn bulk_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
    // Best effort: a smaller pipe only means more calls.
    let _ = rustix::pipe::fcntl_setpipe_size(&w, PIPE_SIZE);
    Ok((r, w))
}

async fn splice_loop(
    from: &TcpStream,
    to: &TcpStream,
    (pr, pw): (OwnedFd, OwnedFd),
) -> io::Result<()> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    loop {
        // The pipe is empty here, so EAGAIN means the socket has no data.
        let n = loop {
            from.readable().await?;
            let r = from.try_io(Interest::READABLE, || {
                rustix::pipe::splice(from, None, &pw, None, PIPE_SIZE, flags)
                    .map_err(io::Error::from)
            });
            match r {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return shutdown(to);
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            let r = to.try_io(Interest::WRITABLE, || {
                rustix::pipe::splice(&pr, None, to, None, left, flags).map_err(io::Error::from)
            });
            match r {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

async fn read(from: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        from.readable().await?;
        match from.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

async fn write_all(to: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        to.writable().await?;
        match to.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn shutdown(to: &TcpStream) -> io::Result<()> {
    match rustix::net::shutdown(to, Shutdown::Write) {
        // The peer already went away: nothing left to half-close.
        Err(rustix::io::Errno::NOTCONN) => Ok(()),
        r => r.map_err(io::Error::from),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (c, l.accept().await.unwrap().0)
    }

    /// Small and bulk (spliced) transfers both arrive whole, and a
    /// half-close travels through.
    #[tokio::test]
    async fn relays_small_and_bulk_data_and_half_closes() {
        let (mut client, agent_down) = pair().await;
        let (agent_up, mut server) = pair().await;
        let relay = tokio::spawn(relay(agent_down, agent_up));
        let data: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(b"hi").await.unwrap();
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..2], b"hi");
        assert!(got[2..] == data[..], "bulk data arrives intact");
        server.write_all(b"bye").await.unwrap();
        drop(server);
        assert_eq!(writer.await.unwrap(), b"bye");
        relay.await.unwrap().unwrap();
    }
}
