//! A byte stream carried by a bidirectional gRPC stream of [`Chunk`]s
//! (`TakeConnection`, `DialPod`): the end of either stream is a half-close of
//! that direction. Both the agent and the runner use it, for intercepted
//! connections and `to_pod`.
//!
//! These two calls bypass tonic's codec: payloads travel as slices of the
//! socket reads and of the received HTTP/2 frames ([`wire`]), which is what
//! keeps the intercepted path's cost close to the sockets' own. The other
//! calls of the service stay generated code.
//!
//! [`Chunk`]: super::Chunk

pub mod wire;

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http_body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, PollSender};
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::CHUNK_SIZE;

/// Paths of the byte-stream calls, as the generated service names them.
pub const TAKE_CONNECTION: &str = "/tpr.agent.v1.Agent/TakeConnection";
pub const DIAL_POD: &str = "/tpr.agent.v1.Agent/DialPod";
pub const DIAL_OUT: &str = "/tpr.agent.v1.Agent/DialOut";

/// Receiving half: the payloads of the peer's chunks.
pub struct Inbound {
    body: Body,
    decoder: wire::Decoder,
    ready: VecDeque<Bytes>,
    done: bool,
}

/// Sending half: whole messages ([`wire::seal`], [`wire::message`]).
/// Dropping it ends the stream (half-close); sending [`RESET`] first ends
/// it as a reset.
pub type Outbound = mpsc::Sender<Bytes>;

/// The message that resets the stream instead of ending it: its connection
/// was reset on this side, and the other side's connection is reset too
/// (a real message always has its 5-byte header, so it is never empty).
pub const RESET: Bytes = Bytes::new();

/// The body that carries what an [`Outbound`] sends.
pub struct OutboundBody {
    rx: mpsc::Receiver<Bytes>,
    /// A server's response ends with `grpc-status: 0`; a request has none.
    trailers: Option<HeaderMap>,
    /// A server's response that was reset ends with its status.
    reset: bool,
}

/// A channel for the sending half; the body goes into the request or response.
pub fn outbound() -> (Outbound, OutboundBody) {
    // A few chunks in flight keep the writer busy without holding much.
    let (tx, rx) = mpsc::channel(4);
    (
        tx,
        OutboundBody {
            rx,
            trailers: None,
            reset: false,
        },
    )
}

/// Ends the stream as a reset ([`RESET`]). The reset queues behind the
/// messages already sent; if the other side reads none for a second (its
/// window is full) the stream ends as a close instead of waiting longer.
pub async fn reset(outbound: Outbound) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), outbound.send(RESET)).await;
}

/// What a stream's reader sees when the other side reset the connection.
const RESET_MESSAGE: &str = "the connection was reset on the other side";

/// The trailers of a reset response: `ABORTED` with [`RESET_MESSAGE`].
fn reset_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(Code::Aborted as i32));
    trailers.insert("grpc-message", HeaderValue::from_static(RESET_MESSAGE));
    trailers
}

impl Inbound {
    pub fn new(body: Body) -> Self {
        Inbound {
            body,
            decoder: wire::Decoder::default(),
            ready: VecDeque::new(),
            done: false,
        }
    }

    /// The next payload; `None` at the peer's half-close.
    pub async fn next(&mut self) -> Option<io::Result<Bytes>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            if let Some(bytes) = self.ready.pop_front() {
                return Poll::Ready(Some(Ok(bytes)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(status)) => return Poll::Ready(Some(Err(status_to_io(status)))),
                None => {
                    self.done = true;
                    if let Err(e) = self.decoder.finish() {
                        return Poll::Ready(Some(Err(wire_to_io(e))));
                    }
                    continue;
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let ready = &mut self.ready;
                    if let Err(e) = self.decoder.decode(data, &mut |b| ready.push_back(b)) {
                        self.done = true;
                        return Poll::Ready(Some(Err(wire_to_io(e))));
                    }
                }
                Err(frame) => {
                    let failed = frame
                        .trailers_ref()
                        .and_then(Status::from_header_map)
                        .filter(|status| status.code() != Code::Ok);
                    if let Some(status) = failed {
                        self.done = true;
                        return Poll::Ready(Some(Err(status_to_io(status))));
                    }
                }
            }
        }
    }
}

impl http_body::Body for OutboundBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.reset {
            return Poll::Ready(None);
        }
        match ready!(self.rx.poll_recv(cx)) {
            Some(message) if message.is_empty() => {
                self.reset = true;
                // A response ends with the reset's status in its trailers;
                // a request can only be cancelled (RST_STREAM), which the
                // server reads as an error too.
                Poll::Ready(Some(match self.trailers.take() {
                    Some(_) => Ok(Frame::trailers(reset_trailers())),
                    None => Err(Status::aborted(RESET_MESSAGE)),
                }))
            }
            Some(message) => Poll::Ready(Some(Ok(Frame::data(message)))),
            None => Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t)))),
        }
    }
}

/// Opens a byte-stream call (`path`, one metadata entry) on a tunnel channel.
pub async fn call(
    channel: &Channel,
    path: &'static str,
    (key, value): (&'static str, &str),
) -> Result<(Inbound, Outbound), Status> {
    let (tx, body) = outbound();
    let value = HeaderValue::from_str(value)
        .map_err(|_| Status::invalid_argument(format!("{key} is not a header value")))?;
    let request = http::Request::post(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header(key, value)
        .body(Body::new(body))
        .map_err(|e| Status::internal(e.to_string()))?;
    let mut channel = channel.clone();
    let unavailable = |e: tonic::transport::Error| Status::unavailable(e.to_string());
    poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(unavailable)?;
    let response = channel.call(request).await.map_err(unavailable)?;
    if response.status() != http::StatusCode::OK {
        return Err(Status::unknown(format!(
            "the agent answered HTTP {}",
            response.status()
        )));
    }
    // A call refused at once ends in its headers ("trailers-only").
    if let Some(status) = Status::from_header_map(response.headers())
        && status.code() != Code::Ok
    {
        return Err(status);
    }
    Ok((Inbound::new(response.into_body()), tx))
}

/// The response of a byte-stream call whose replies `body` carries.
pub fn respond(mut body: OutboundBody) -> http::Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    body.trailers = Some(trailers);
    http::Response::builder()
        .header("content-type", "application/grpc")
        .body(Body::new(body))
        .expect("static headers are valid")
}

/// Settings for a connection that never leaves this host (the agent to the
/// app inside the pod, the runner to a local process): no Nagle delay, and
/// reno congestion control. Many nodes default to BBR, which paces sends
/// with timers; on loopback that only leaves the CPU idle between bursts
/// (measured by bench/agent: passthrough throughput rises by a fifth). Reno
/// is open to unprivileged sockets on every kernel. Best effort: a refusal
/// only costs speed. Connections that cross the network keep the system's
/// choice.
pub fn tune_local(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let local = tcp.peer_addr().is_ok_and(|peer| peer.ip().is_loopback());
    if local {
        let _ = rustix::net::sockopt::set_tcp_congestion(tcp, "reno");
    }
}

/// Relays a TCP connection and a chunk stream until both directions ended.
/// Socket reads become messages in place; received payloads are written
/// straight from the frames they arrived in.
///
/// A FIN is passed on as the stream's end and back. A reset is passed on as
/// a reset both ways: the socket's peer reset (or a failed write to it)
/// resets the stream ([`RESET`]), and a stream reset (or broken) on the
/// other side resets the socket, so neither end mistakes a crash for a
/// clean end of data.
pub async fn splice(tcp: TcpStream, mut inbound: Inbound, outbound: Outbound) -> io::Result<()> {
    // Set by whichever direction fails first; the other one stops too.
    let failed = CancellationToken::new();
    let up = async {
        let read = async {
            loop {
                // The buffer is made once data is there: a quiet
                // connection holds none.
                tcp.readable().await?;
                let mut buf = wire::buffer(CHUNK_SIZE);
                match tcp.try_read_buf(&mut buf) {
                    Ok(0) => return Ok::<_, io::Error>(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
                // The other side is gone: nothing more to carry.
                if outbound.send(wire::seal(buf)).await.is_err() {
                    return Ok(());
                }
            }
        };
        let result = guarded(read, &failed).await;
        if result.is_err() {
            reset(outbound).await;
        } else {
            // Dropping `outbound` ends the stream: a half-close after a FIN.
            drop(outbound);
        }
        result
    };
    let down = async {
        let write = async {
            while let Some(data) = inbound.next().await {
                write_all(&tcp, &data?).await?;
            }
            rustix::net::shutdown(&tcp, rustix::net::Shutdown::Write)?;
            Ok::<_, io::Error>(())
        };
        guarded(write, &failed).await
    };
    let (up, down) = tokio::join!(up, down);
    if up.is_err() || down.is_err() {
        reset_on_close(&tcp);
    }
    up.and(down)
}

/// Makes closing `tcp` a reset (a zero linger): its peer learns the
/// connection failed rather than ended.
pub fn reset_on_close(tcp: &TcpStream) {
    let _ = rustix::net::sockopt::set_socket_linger(tcp, Some(std::time::Duration::ZERO));
}

/// One direction of a relay: stops when the other direction failed
/// (`failed`), and when it fails itself, stops the other.
pub async fn guarded(
    direction: impl Future<Output = io::Result<()>>,
    failed: &CancellationToken,
) -> io::Result<()> {
    let result = tokio::select! {
        r = direction => r,
        () = failed.cancelled() => Err(io::ErrorKind::ConnectionReset.into()),
    };
    if result.is_err() {
        failed.cancel();
    }
    result
}

/// Writes all of `data` through a shared socket.
pub async fn write_all(tcp: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        tcp.writable().await?;
        match tcp.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A chunk stream as an `AsyncRead + AsyncWrite` byte stream, for protocol
/// clients (hyper) that speak over the tunnel.
pub struct Pipe {
    inbound: Inbound,
    pending: Bytes,
    outbound: PollSender<Bytes>,
}

impl Pipe {
    pub fn new(inbound: Inbound, outbound: Outbound) -> Self {
        Pipe {
            inbound,
            pending: Bytes::new(),
            outbound: PollSender::new(outbound),
        }
    }
}

fn status_to_io(status: Status) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, status.message().to_owned())
}

fn wire_to_io(e: wire::WireError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl AsyncRead for Pipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            match ready!(self.inbound.poll_next(cx)) {
                Some(Ok(data)) => self.pending = data,
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
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
        self.outbound
            .send_item(wire::message(&buf[..n]))
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

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// A connected pair of loopback sockets.
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// `a` ⇄ splice ⇄ (a request one way, a response the other) ⇄ splice ⇄
    /// `b`, as an intercepted or outbound connection is carried.
    async fn carried() -> (TcpStream, TcpStream) {
        let (a, a_inner) = socket_pair().await;
        let (b, b_inner) = socket_pair().await;
        let (request_tx, request_body) = outbound();
        let (response_tx, response_body) = outbound();
        let response = respond(response_body).into_body();
        tokio::spawn(splice(a_inner, Inbound::new(response), request_tx));
        tokio::spawn(splice(
            b_inner,
            Inbound::new(Body::new(request_body)),
            response_tx,
        ));
        (a, b)
    }

    /// Reads until the end; what was read, or the error that ended it.
    async fn read_to_end(tcp: &mut TcpStream) -> io::Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        tcp.read_to_end(&mut got).await.map(|_| got)
    }

    /// A FIN crosses as a FIN (the other direction stays open), and a
    /// reset crosses as a reset, from either end.
    #[tokio::test]
    async fn a_close_arrives_as_a_close_and_a_reset_as_a_reset() {
        use tokio::io::AsyncWriteExt;
        let (mut a, mut b) = carried().await;
        a.write_all(b"question").await.unwrap();
        a.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut b).await.unwrap(), b"question");
        b.write_all(b"answer").await.unwrap();
        b.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut a).await.unwrap(), b"answer");

        for a_resets in [true, false] {
            let (mut a, b) = carried().await;
            a.write_all(b"x").await.unwrap();
            let (mut resetter, mut reader) = if a_resets { (a, b) } else { (b, a) };
            resetter.write_all(b"hello").await.unwrap();
            reset_on_close(&resetter);
            drop(resetter);
            let got =
                tokio::time::timeout(std::time::Duration::from_secs(5), read_to_end(&mut reader))
                    .await
                    .expect("the reset arrives");
            let e = got.expect_err("a reset, not a clean end");
            assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
        }
    }

    /// A loopback connection gets reno (this machine's default is BBR).
    #[tokio::test]
    async fn local_connections_use_reno() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune_local(&tcp);
        assert_eq!(rustix::net::sockopt::tcp_congestion(&tcp).unwrap(), "reno");
        assert!(tcp.nodelay().unwrap());
    }
}
