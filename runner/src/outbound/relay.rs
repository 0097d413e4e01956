//! Relays a process's connection (the stack's [`TcpStream`]) and its
//! dialled destination until both directions ended. Data travels as the
//! shared buffers it arrived in where it can: a chunk from the agent goes
//! to the process without a copy, a segment from the process is copied
//! once, into the message to the agent.
//!
//! A FIN is passed on as a FIN. A reset or failure of either side resets
//! the other: the process sees the pod's ECONNRESET, not a clean end.

use std::io;

use bytes::BytesMut;
use tokio_util::sync::CancellationToken;
use tpr_schema::proto::pipe::{self, wire};

use super::net::TcpStream;

/// Bytes read from a host connection at once.
const CHUNK: usize = 64 << 10;

/// Where the process's connection was dialled.
pub enum Remote {
    /// A `DialOut` stream through the agent.
    Agent(pipe::Inbound, pipe::Outbound),
    /// A connection made from this host.
    Host(tokio::net::TcpStream),
}

pub async fn run(tcp: TcpStream, remote: Remote) {
    let result = match remote {
        Remote::Agent(inbound, outbound) => agent(&tcp, inbound, outbound).await,
        Remote::Host(remote) => host(&tcp, remote).await,
    };
    if let Err(e) = result {
        tracing::debug!("outbound relay ended: {e}");
        tcp.reset();
    }
}

async fn agent(
    tcp: &TcpStream,
    mut inbound: pipe::Inbound,
    outbound: pipe::Outbound,
) -> io::Result<()> {
    let failed = CancellationToken::new();
    let up = async {
        let send = async {
            while let Some(data) = tcp.recv().await? {
                if outbound.send(wire::message(&data)).await.is_err() {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the agent's stream ended",
                    ));
                }
            }
            Ok(())
        };
        let result = pipe::guarded(send, &failed).await;
        if result.is_err() {
            // The process reset: so does the pod's connection.
            pipe::reset(outbound).await;
        } else {
            // Dropping `outbound` half-closes the stream: the pod's FIN.
            drop(outbound);
        }
        result
    };
    let down = async {
        let receive = async {
            while let Some(data) = inbound.next().await {
                tcp.send(data?).await?;
            }
            tcp.shutdown();
            Ok(())
        };
        pipe::guarded(receive, &failed).await
    };
    let (up, down) = tokio::join!(up, down);
    up.and(down)
}

async fn host(tcp: &TcpStream, remote: tokio::net::TcpStream) -> io::Result<()> {
    let failed = CancellationToken::new();
    let up = async {
        while let Some(data) = tcp.recv().await? {
            pipe::write_all(&remote, &data).await?;
        }
        rustix::net::shutdown(&remote, rustix::net::Shutdown::Write)?;
        Ok(())
    };
    let down = async {
        loop {
            // The buffer is made once data is there: a quiet connection
            // holds none.
            remote.readable().await?;
            let mut buf = BytesMut::with_capacity(CHUNK);
            match remote.try_read_buf(&mut buf) {
                Ok(0) => break,
                Ok(_) => tcp.send(buf.freeze()).await?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        tcp.shutdown();
        Ok(())
    };
    let (up, down) = tokio::join!(pipe::guarded(up, &failed), pipe::guarded(down, &failed));
    if up.is_err() || down.is_err() {
        pipe::reset_on_close(&remote);
    }
    up.and(down)
}
