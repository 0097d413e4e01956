//! A process's TCP connection as its task sees it: [`PendingTcp`] until
//! the destination answered, then a [`TcpStream`]. The state and the
//! protocol are the control block's ([`super::tcb`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Key;
use super::tcb::{TcbRef, lock};

/// A process's connection waiting for its destination to answer: the
/// process's `connect()` returns when this is accepted, or fails with
/// ECONNREFUSED when refused, as for a real server.
pub struct PendingTcp {
    tcb: Option<TcbRef>,
    key: Key,
}

impl PendingTcp {
    pub fn new(tcb: TcbRef, key: Key) -> Self {
        PendingTcp {
            tcb: Some(tcb),
            key,
        }
    }

    /// Where the process connected to.
    pub fn dest(&self) -> SocketAddr {
        self.key.dest
    }

    /// Completes the handshake.
    pub fn accept(mut self) -> TcpStream {
        let tcb = self.tcb.take().expect("decided once");
        lock(&tcb).accept();
        TcpStream { tcb }
    }

    /// Refuses the connection: a reset answers the SYN.
    pub fn refuse(mut self) {
        if let Some(tcb) = self.tcb.take() {
            lock(&tcb).refuse();
        }
    }
}

impl Drop for PendingTcp {
    fn drop(&mut self) {
        if let Some(tcb) = self.tcb.take() {
            lock(&tcb).refuse();
        }
    }
}

/// The connection's end for its task: received data as it came
/// ([`TcpStream::recv`]) or as a byte stream (`AsyncRead`), data to send as
/// shared buffers ([`TcpStream::send`], no copy) or bytes (`AsyncWrite`).
/// Both directions may be used at once through `&TcpStream`. Dropped
/// before both ends closed, it resets the connection.
pub struct TcpStream {
    tcb: TcbRef,
}

impl TcpStream {
    /// The next data the process sent, at most `max` bytes; `None` at its
    /// FIN.
    pub fn poll_recv(&self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Option<Bytes>>> {
        lock(&self.tcb).take(max, cx.waker())
    }

    pub async fn recv(&self) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_recv(cx, usize::MAX)).await
    }

    /// Sends all of `data` as the process's window allows.
    pub async fn send(&self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            std::future::poll_fn(|cx| {
                let mut t = lock(&self.tcb);
                match t.room(data.len(), cx.waker()) {
                    Ok(0) => Poll::Pending,
                    Ok(n) => {
                        t.transmit(data.split_to(n));
                        Poll::Ready(Ok(()))
                    }
                    Err(e) => Poll::Ready(Err(e)),
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Our FIN, after what was sent.
    pub fn shutdown(&self) {
        lock(&self.tcb).shutdown();
    }

    /// Resets the connection (the far end failed).
    pub fn reset(&self) {
        lock(&self.tcb).abort();
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        lock(&self.tcb).release();
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(data) = std::task::ready!(self.poll_recv(cx, buf.remaining()))? {
            buf.put_slice(&data);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut t = lock(&self.tcb);
        match t.room(buf.len(), cx.waker()) {
            Ok(0) if !buf.is_empty() => Poll::Pending,
            Ok(n) => {
                // Only what the window takes now is copied.
                t.transmit(Bytes::copy_from_slice(&buf[..n]));
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shutdown();
        Poll::Ready(Ok(()))
    }
}
