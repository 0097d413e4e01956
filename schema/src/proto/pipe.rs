//! A byte stream carried by a bidirectional gRPC stream of [`Chunk`]s: the
//! end of either stream is a half-close of that direction. Both the agent
//! and the runner use it, for intercepted connections and `to_pod`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_util::sync::PollSender;
use tonic::Streaming;

use super::{CHUNK_SIZE, Chunk};

/// Receiving half: chunks from the peer.
pub type Inbound = Streaming<Chunk>;
/// Sending half: dropping it ends the stream (half-close).
pub type Outbound = mpsc::Sender<Chunk>;

/// A channel for the sending half; the receiver becomes the gRPC stream.
pub fn outbound() -> (Outbound, mpsc::Receiver<Chunk>) {
    // A few chunks in flight keep the writer busy without holding much.
    mpsc::channel(4)
}

/// Relays a TCP connection and a chunk stream until both directions ended.
/// Returns the bytes sent and received. Chunks move without copies beyond
/// the socket reads and writes.
pub async fn splice(tcp: TcpStream, mut inbound: Inbound, outbound: Outbound) -> io::Result<()> {
    let (mut reader, mut writer) = tcp.into_split();
    let up = async move {
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(CHUNK_SIZE);
            if reader.read_buf(&mut buf).await? == 0 {
                // Dropping `outbound` half-closes the stream.
                return Ok::<_, io::Error>(());
            }
            let data = buf.split().freeze();
            if outbound.send(Chunk { data }).await.is_err() {
                return Ok(());
            }
        }
    };
    let down = async move {
        while let Some(chunk) = inbound.message().await.map_err(status_to_io)? {
            writer.write_all(&chunk.data).await?;
        }
        writer.shutdown().await
    };
    tokio::try_join!(up, down).map(|_| ())
}

/// A chunk stream as an `AsyncRead + AsyncWrite` byte stream, for protocol
/// clients (hyper) that speak over the tunnel.
pub struct Pipe {
    inbound: Inbound,
    pending: Bytes,
    read_done: bool,
    outbound: PollSender<Chunk>,
}

impl Pipe {
    pub fn new(inbound: Inbound, outbound: Outbound) -> Self {
        Pipe {
            inbound,
            pending: Bytes::new(),
            read_done: false,
            outbound: PollSender::new(outbound),
        }
    }
}

fn status_to_io(status: tonic::Status) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, status.message().to_owned())
}

impl AsyncRead for Pipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inbound).poll_next(cx)) {
                Some(Ok(chunk)) => self.pending = chunk.data,
                Some(Err(status)) => return Poll::Ready(Err(status_to_io(status))),
                None => self.read_done = true,
            }
        }
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "tunnel stream closed");
        ready!(self.outbound.poll_reserve(cx)).map_err(|_| closed())?;
        let n = buf.len().min(CHUNK_SIZE);
        let data = Bytes::copy_from_slice(&buf[..n]);
        self.outbound
            .send_item(Chunk { data })
            .map_err(|_| closed())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outbound.close();
        Poll::Ready(Ok(()))
    }
}
