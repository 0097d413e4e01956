//! One bounded read decides how to treat a connection on an http-intercepted
//! port: TLS, HTTP/2 with prior knowledge, HTTP/1, or opaque bytes. On a
//! timeout (a server-first protocol) the connection is opaque, so traffic
//! keeps flowing to the app.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DETECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest HTTP/1 method we wait for ("OPTIONS", "CONNECT" and friends).
const MAX_METHOD: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Tls,
    Opaque,
}

fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.first() == Some(&0x16) {
        return Some(Protocol::Tls);
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    // HTTP/1: an upper-case token and a space.
    match buf.iter().position(|b| *b == b' ') {
        Some(0) => Some(Protocol::Opaque),
        Some(i) if buf[..i].iter().all(u8::is_ascii_uppercase) => Some(Protocol::Http1),
        Some(_) => Some(Protocol::Opaque),
        None if buf.len() > MAX_METHOD || !buf.iter().all(u8::is_ascii_uppercase) => {
            Some(Protocol::Opaque)
        }
        None => None,
    }
}

/// Reads until the protocol is known; the bytes read come back inside the
/// returned stream.
pub async fn detect(mut tcp: TcpStream) -> io::Result<(Protocol, Rewind)> {
    let mut buf = BytesMut::with_capacity(1024);
    let protocol = tokio::time::timeout(DETECT_TIMEOUT, async {
        loop {
            if tcp.read_buf(&mut buf).await? == 0 {
                return Ok::<_, io::Error>(Protocol::Opaque);
            }
            if let Some(p) = classify(&buf) {
                return Ok(p);
            }
        }
    })
    .await
    .unwrap_or(Ok(Protocol::Opaque))?;
    Ok((
        protocol,
        Rewind {
            prefix: buf,
            inner: tcp,
        },
    ))
}

/// A stream that first replays bytes already read.
pub struct Rewind {
    prefix: BytesMut,
    inner: TcpStream,
}

impl Rewind {
    /// The bytes read so far (not yet replayed) and the connection.
    pub fn into_parts(self) -> (BytesMut, TcpStream) {
        (self.prefix, self.inner)
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(b"\x16\x03\x01"), Some(Protocol::Tls));
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Protocol::Http2)
        );
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"PO"), None);
        assert_eq!(classify(b"*1\r\n$4\r\nPING"), Some(Protocol::Opaque));
        assert_eq!(classify(b"get / x"), Some(Protocol::Opaque));
    }
}
