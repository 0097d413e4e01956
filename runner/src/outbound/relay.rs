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
use tokio::io::AsyncWriteExt;
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
    let up = async move {
        while let Some(data) = tcp.recv().await? {
            if outbound.send(wire::message(&data)).await.is_err() {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the agent's stream ended",
                ));
            }
        }
        // Dropping `outbound` half-closes the stream: the pod's FIN.
        Ok(())
    };
    let down = async {
        while let Some(data) = inbound.next().await {
            tcp.send(data?).await?;
        }
        tcp.shutdown();
        Ok(())
    };
    tokio::try_join!(up, down).map(|_| ())
}

async fn host(tcp: &TcpStream, remote: tokio::net::TcpStream) -> io::Result<()> {
    let (reader, mut writer) = remote.into_split();
    let up = async move {
        while let Some(data) = tcp.recv().await? {
            writer.write_all(&data).await?;
        }
        writer.shutdown().await
    };
    let down = async {
        loop {
            // The buffer is made once data is there: a quiet connection
            // holds none.
            reader.readable().await?;
            let mut buf = BytesMut::with_capacity(CHUNK);
            match reader.try_read_buf(&mut buf) {
                Ok(0) => break,
                Ok(_) => tcp.send(buf.freeze()).await?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        tcp.shutdown();
        Ok(())
    };
    tokio::try_join!(up, down).map(|_| ())
}
