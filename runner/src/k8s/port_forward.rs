//! A port-forward to one pod port through the API server, as a byte stream.
//!
//! The stream reads and writes the port-forward's WebSocket in place.
//! kube's `Portforwarder` relays every message through a one-slot channel,
//! a task and a 1 MiB in-memory pipe, and cuts writes into 4 KiB frames:
//! on a 100 MiB transfer through the tunnel those hops cost about a fifth
//! of the throughput. Here a read is one WebSocket message (its channel byte
//! stripped) and a write is one message of up to [`MAX_MESSAGE`] bytes.
//!
//! The protocol (`v4.channel.k8s.io`, or `v5` which adds stream close):
//! every binary message starts with a channel byte, 0 for the port's data
//! and 1 for its error text; the first message on each channel carries the
//! port number (2 bytes, little-endian) and nothing else.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{Cluster, K8sError};

/// Largest message a write sends: one tunnel chunk and its framing fit.
const MAX_MESSAGE: usize = 256 << 10;

const DATA: usize = 0;
const ERROR: usize = 1;

/// One port-forwarded connection to a pod port. Reads and writes fail with
/// the kubelet's message once the pod side reports an error (e.g. nothing
/// listens on the port).
pub struct PortForwardStream {
    ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    /// The rest of the last data message, not yet read.
    pending: Bytes,
    /// Per channel, whether its initial port message has been seen.
    opened: [bool; 2],
    /// The pod side's error text.
    error: String,
    eof: bool,
    /// A written message may still sit in the WebSocket's buffer.
    unflushed: bool,
}

/// Opens a port-forward to `pod:port` through the API server
/// (`create pods/portforward`).
pub async fn port_forward(
    cluster: &Cluster,
    namespace: &str,
    pod: &str,
    port: u16,
) -> Result<PortForwardStream, K8sError> {
    let request = kube::core::Request::new(Pod::url_path(&(), Some(namespace)))
        .portforward(pod, &[port])
        .map_err(|e| K8sError::PortForward {
            pod: pod.into(),
            port,
            namespace: namespace.into(),
            cause: e.to_string(),
        })?;
    let connection = cluster.client().connect(request).await.map_err(|e| {
        cluster
            .request("create", "pods/portforward", namespace)
            .error(e)
    })?;
    Ok(PortForwardStream {
        ws: connection.into_stream(),
        pending: Bytes::new(),
        opened: [false; 2],
        error: String::new(),
        eof: false,
        unflushed: false,
    })
}

impl PortForwardStream {
    fn failed(&self) -> Option<io::Error> {
        (!self.error.is_empty()).then(|| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                self.error.trim().to_owned(),
            )
        })
    }

    /// Pushes written messages on towards the socket. A write returns once
    /// its message is queued; like a socket, it reaches the pod whether or
    /// not the caller flushes: every write and read moves it along.
    fn poll_push(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.unflushed
            && let Poll::Ready(result) = self.ws.poll_flush_unpin(cx)
        {
            result.map_err(ws_error)?;
            self.unflushed = false;
        }
        Ok(())
    }

    /// Takes one message off the WebSocket; `Ready(())` when it changed the
    /// state a read looks at.
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let message = match ready!(self.ws.poll_next_unpin(cx)) {
            None | Some(Ok(Message::Close(_))) => {
                self.eof = true;
                return Poll::Ready(Ok(()));
            }
            Some(Err(e)) => return Poll::Ready(Err(ws_error(e))),
            Some(Ok(Message::Binary(bytes))) => bytes,
            // Pings are answered by the WebSocket itself; nothing else is
            // part of the protocol.
            Some(Ok(_)) => return Poll::Ready(Ok(())),
        };
        let Some((&channel, _)) = message.split_first() else {
            return Poll::Ready(Ok(()));
        };
        let channel = usize::from(channel);
        if channel > ERROR {
            return Poll::Ready(Ok(()));
        }
        let mut body = message.slice(1..);
        if !self.opened[channel] {
            self.opened[channel] = true;
            body.advance(body.len().min(2));
        }
        if channel == DATA {
            self.pending = body;
        } else {
            self.error.push_str(&String::from_utf8_lossy(&body));
        }
        Poll::Ready(Ok(()))
    }
}

fn ws_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        e => io::Error::other(e),
    }
}

impl AsyncRead for PortForwardStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_push(cx)?;
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = self.failed() {
                return Poll::Ready(Err(e));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_message(cx))?;
        }
    }
}

impl AsyncWrite for PortForwardStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.failed() {
            return Poll::Ready(Err(e));
        }
        ready!(self.ws.poll_ready_unpin(cx)).map_err(ws_error)?;
        let n = buf.len().min(MAX_MESSAGE);
        let mut message = Vec::with_capacity(n + 1);
        message.push(DATA as u8);
        message.extend_from_slice(&buf[..n]);
        self.ws
            .start_send_unpin(Message::Binary(message.into()))
            .map_err(ws_error)?;
        self.unflushed = true;
        self.poll_push(cx)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.ws.poll_flush_unpin(cx)).map_err(ws_error)?;
        self.unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(self.ws.poll_close_unpin(cx)) {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(ws_error(e))),
        }
    }
}
