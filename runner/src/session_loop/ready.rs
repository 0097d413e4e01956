//! A process's readiness check (`[process.ready]`): it accepts connections
//! on its port, or answers an HTTP path there with a 2xx or 3xx. Probed
//! every 100 ms from each start until it passes or the run ends.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What "ready" means for one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// The port on 127.0.0.1 the process listens on.
    pub port: u16,
    /// An HTTP path to GET; `None`: a TCP connect is enough.
    pub path: Option<String>,
}

const EVERY: Duration = Duration::from_millis(100);
/// One probe's limit: a process that accepts but never answers is not ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits until the check passes while `alive` says the run goes on;
/// returns how long it took, or `None` when the run ended first.
pub async fn wait_ready(check: &Readiness, alive: impl Fn() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if !alive() {
            return None;
        }
        if tokio::time::timeout(PROBE_TIMEOUT, probe(check))
            .await
            .unwrap_or(false)
        {
            return Some(started.elapsed());
        }
        tokio::time::sleep(EVERY).await;
    }
}

async fn probe(check: &Readiness) -> bool {
    // Where the process listens: its outbound namespace's localhost, if it
    // runs in one, else the host's.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], check.port));
    let Ok(mut tcp) = crate::outbound::connect_local(addr).await else {
        return false;
    };
    let Some(path) = &check.path else {
        return true;
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        check.port
    );
    if tcp.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    // The status line is all that matters: "HTTP/1.1 200 OK".
    let mut head = [0u8; 12];
    if tcp.read_exact(&mut head).await.is_err() {
        return false;
    }
    head.starts_with(b"HTTP/1.") && matches!(head[9], b'2' | b'3')
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    async fn answering(status: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        port
    }

    #[tokio::test]
    async fn a_port_that_accepts_is_ready_and_an_http_path_needs_a_2xx_or_3xx() {
        let ok = answering("204 No Content").await;
        let bad = answering("503 Service Unavailable").await;
        let tcp = Readiness {
            port: bad,
            path: None,
        };
        assert!(probe(&tcp).await);
        let http = |port| Readiness {
            port,
            path: Some("/healthz".into()),
        };
        assert!(probe(&http(ok)).await);
        assert!(!probe(&http(bad)).await);
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(
            !probe(&Readiness {
                port: closed,
                path: None
            })
            .await
        );
    }

    #[tokio::test]
    async fn waiting_ends_when_the_run_ends() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let check = Readiness {
            port: closed,
            path: None,
        };
        assert_eq!(wait_ready(&check, || false).await, None);
    }
}
