//! The forwarded ports: accept, then per connection either relay raw bytes
//! to the app, hand the connection to a tcp intercept's workstation, or
//! detect the protocol and route HTTP requests one by one.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tpr_schema::proto::pipe;
use tracing::{debug, warn};

use crate::config::Forward;
use crate::detect::{self, Protocol};
use crate::http;
use crate::registry::{Intercept, Registry, Route};
use crate::relay;

pub async fn serve(listener: TcpListener, forward: Forward, registry: Arc<Registry>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                warn!(port = forward.agent_port, "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let registry = registry.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(tcp, peer, forward, registry).await {
                debug!(%peer, port = forward.app_port, "connection ended: {e}");
            }
        });
    }
}

async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    forward: Forward,
    registry: Arc<Registry>,
) -> io::Result<()> {
    let app_port = forward.app_port;
    let route = match registry.route(app_port) {
        // A port made for http intercepts parses HTTP from the start, so a
        // keep-alive connection opened now is routed by intercepts made later.
        Route::App if forward.http => Route::Http,
        route => route,
    };
    match route {
        Route::App => relay_to_app(tcp, &[], app_port).await,
        Route::Tcp(intercept) => to_workstation(tcp, &intercept, &registry).await,
        Route::Http => {
            let (protocol, io) = detect::detect(tcp).await?;
            match protocol {
                Protocol::Http1 | Protocol::Http2 => {
                    http::serve(io, protocol == Protocol::Http2, app_port, registry).await;
                    Ok(())
                }
                Protocol::Tls => {
                    for intercept in registry.http_intercepts(app_port) {
                        intercept.notice_tls();
                    }
                    debug!(%peer, app_port, "TLS on an http-intercepted port: passed to the app");
                    let (read, tcp) = io.into_parts();
                    relay_to_app(tcp, &read, app_port).await
                }
                Protocol::Opaque => {
                    let (read, tcp) = io.into_parts();
                    relay_to_app(tcp, &read, app_port).await
                }
            }
        }
    }
}

pub async fn dial_app(app_port: u16) -> io::Result<TcpStream> {
    // A socket address, not a host name: the static binary has no resolver.
    let app = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], app_port))).await?;
    pipe::tune_local(&app);
    Ok(app)
}

/// Relays to the app, after replaying the bytes that detection read.
async fn relay_to_app(downstream: TcpStream, already_read: &[u8], app_port: u16) -> io::Result<()> {
    let mut app = dial_app(app_port).await?;
    app.write_all(already_read).await?;
    relay::relay(downstream, app).await
}

/// A tcp intercept: the whole connection goes to the workstation; it closes
/// when the workstation refuses or the intercept ends.
async fn to_workstation(
    tcp: TcpStream,
    intercept: &Intercept,
    registry: &Registry,
) -> io::Result<()> {
    let (inbound, outbound) = registry
        .hand_off(intercept)
        .await
        .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e.to_string()))?;
    tokio::select! {
        r = pipe::splice(tcp, inbound, outbound) => r,
        () = intercept.ended.cancelled() => Ok(()),
    }
}
