//! HTTP routing on an http-intercepted port, or on a port installed for
//! http intercepts while none is active. The agent serves the downstream
//! connection itself (HTTP/1.1 or h2c) and routes every request on its
//! own: a request that matches an intercept (its headers, or its preview
//! token: see [`crate::preview`]) goes to that session's workstation
//! through a tunnel stream, the rest to the app. Each
//! destination gets one upstream connection per downstream connection,
//! speaking the downstream's protocol and reused across its requests.
//! Bodies stream through; an HTTP/1.1 upgrade is relayed as raw bytes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1 as client1, http2 as client2};
use hyper::server::conn::{http1 as server1, http2 as server2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tpr_schema::proto::{self, pipe::Pipe};
use tracing::debug;

use crate::detect::Rewind;
use crate::forward::dial_app;
use crate::preview;
use crate::registry::{Intercept, Registry, RequestRoute, TunnelError};

type Body = BoxBody<Bytes, hyper::Error>;

/// Why a request could not be forwarded; becomes a 502, or a 503 when the
/// workstation's process did not listen within its wait (it is starting or
/// restarting: the request may be sent again).
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    /// Nothing answers on the app's port.
    #[error("the app does not answer on 127.0.0.1:{port}: {source}")]
    App {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    /// The workstation could not take the request.
    #[error("intercept {name:?}: nothing answers on the workstation's localhost:{port} ({source})")]
    Workstation {
        name: String,
        port: u16,
        #[source]
        source: TunnelError,
    },
    /// The upstream connection failed to start or broke.
    #[error("upstream connection failed: {0}")]
    Upstream(#[source] hyper::Error),
}

impl ForwardError {
    fn status(&self) -> StatusCode {
        match self {
            ForwardError::Workstation {
                source: TunnelError::DialFailed(_),
                ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

pub async fn serve(io: Rewind, h2: bool, app_port: u16, registry: Arc<Registry>) {
    let conn = Arc::new(Conn {
        h2,
        app_port,
        registry,
        app: Arc::default(),
        tunnels: Mutex::default(),
    });
    let svc = service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(conn.route(req).await) }
    });
    let io = TokioIo::new(io);
    let result = if h2 {
        server2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(proto::STREAM_WINDOW)
            .initial_connection_window_size(proto::CONNECTION_WINDOW)
            .serve_connection(io, svc)
            .await
    } else {
        // As transparent as a proxy can be: header names keep their case
        // and no Date header is added to the app's answers.
        server1::Builder::new()
            .preserve_header_case(true)
            .auto_date_header(false)
            .serve_connection(io, svc)
            .with_upgrades()
            .await
    };
    if let Err(e) = result {
        debug!(app_port, "http connection ended: {e}");
    }
}

/// One downstream connection and its upstream connections.
struct Conn {
    h2: bool,
    app_port: u16,
    registry: Arc<Registry>,
    app: Arc<Upstream>,
    /// Keyed by intercept identity, so a re-created intercept gets a fresh
    /// stream.
    tunnels: Mutex<HashMap<usize, Arc<Upstream>>>,
}

impl Conn {
    async fn route(&self, mut req: Request<Incoming>) -> Response<Body> {
        let RequestRoute { intercept, preview } = self.registry.match_request(
            self.app_port,
            req.uri().path(),
            req.headers(),
            &preview::Offered::of(&req),
        );
        if intercept.is_some() {
            // The token never reaches the workstation's process.
            preview::strip(&mut req);
        }
        let set_cookie = preview.and_then(|i| {
            debug!(app_port = self.app_port, intercept = %i.name, "preview link opened");
            i.preview_cookie()
        });
        let mut resp = self.forward(req, intercept).await;
        if let Some(cookie) = set_cookie {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
        resp
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        intercept: Option<Arc<Intercept>>,
    ) -> Response<Body> {
        let downstream_upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let result = match &intercept {
            None => {
                let port = self.app_port;
                let dial = || async move {
                    let timed_out = || std::io::Error::from(std::io::ErrorKind::TimedOut);
                    tokio::time::timeout(DIAL_TIMEOUT, dial_app(port))
                        .await
                        .unwrap_or_else(|_| Err(timed_out()))
                        .map_err(|source| ForwardError::App { port, source })
                };
                self.app.send(self.h2, req, dial, None).await
            }
            Some(i) => {
                let upstream = self.tunnel(i);
                let registry = &self.registry;
                let dial = || async move {
                    match registry.hand_off(i).await {
                        Ok((inbound, outbound)) => Ok(Pipe::new(inbound, outbound)),
                        Err(source) => Err(ForwardError::Workstation {
                            name: i.name.clone(),
                            port: i.local_port,
                            source,
                        }),
                    }
                };
                upstream
                    .send(self.h2, req, dial, Some(i.ended.clone()))
                    .await
            }
        };
        match result {
            Ok(mut resp) => {
                if let Some(down) = downstream_upgrade
                    && resp.status() == StatusCode::SWITCHING_PROTOCOLS
                {
                    let up = hyper::upgrade::on(&mut resp);
                    tokio::spawn(async move {
                        if let (Ok(down), Ok(up)) = tokio::join!(down, up) {
                            let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        }
                    });
                }
                resp.map(BodyExt::boxed)
            }
            Err(e) => {
                let status = e.status();
                debug!(app_port = self.app_port, "{status}: {e}");
                let body = format!("tpr: {e}\n");
                let mut resp =
                    Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
                *resp.status_mut() = status;
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                resp
            }
        }
    }

    fn tunnel(&self, intercept: &Arc<Intercept>) -> Arc<Upstream> {
        let mut tunnels = self.tunnels.lock().unwrap_or_else(|e| e.into_inner());
        tunnels.retain(|_, u| !u.ended());
        tunnels
            .entry(Arc::as_ptr(intercept) as usize)
            .or_insert_with(|| {
                Arc::new(Upstream {
                    ended: Some(intercept.ended.clone()),
                    ..Upstream::default()
                })
            })
            .clone()
    }
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("upgrade"))
        })
}

enum Sender {
    H1(client1::SendRequest<Incoming>),
    H2(client2::SendRequest<Incoming>),
}

type ResponseFuture = Pin<
    Box<dyn Future<Output = Result<Response<Incoming>, TrySendError<Request<Incoming>>>> + Send>,
>;

impl Sender {
    async fn ready(&mut self) -> bool {
        match self {
            Sender::H1(s) => s.ready().await.is_ok(),
            Sender::H2(s) => s.ready().await.is_ok(),
        }
    }

    fn try_send(&mut self, req: Request<Incoming>) -> ResponseFuture {
        match self {
            Sender::H1(s) => Box::pin(s.try_send_request(req)),
            Sender::H2(s) => Box::pin(s.try_send_request(req)),
        }
    }
}

/// An upstream connection: its sender, and a token cancelled once its
/// connection task has ended (the dispatcher and its queue are dropped).
struct Connection {
    sender: Sender,
    closed: CancellationToken,
}

/// A lazily dialed upstream connection, dialed again when it closed.
#[derive(Default)]
struct Upstream {
    slot: tokio::sync::Mutex<Option<Connection>>,
    ended: Option<CancellationToken>,
}

/// How long dialing the app may take before the request becomes a 502 (a
/// full accept backlog drops SYNs instead of refusing).
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

impl Upstream {
    fn ended(&self) -> bool {
        self.ended
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// Sends `req` and waits for the answer. Apps close idle keep-alive
    /// connections whenever they like; when that close beats the request,
    /// hyper hands the unwritten request back and it goes once more on a
    /// new connection (a request already written is never sent twice).
    async fn send<IO, D, F>(
        &self,
        h2: bool,
        req: Request<Incoming>,
        dial: D,
        ended: Option<CancellationToken>,
    ) -> Result<Response<Incoming>, ForwardError>
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        D: Fn() -> F,
        F: Future<Output = Result<IO, ForwardError>>,
    {
        let unsent = match self.attempt(h2, req, &dial, &ended).await? {
            Ok(response) => return Ok(response),
            Err(mut e) => e.take_message().ok_or(e),
        };
        let result = match unsent {
            Ok(req) => self.attempt(h2, req, &dial, &ended).await?,
            Err(e) => Err(e),
        };
        result.map_err(|e| ForwardError::Upstream(e.into_error()))
    }

    /// One try of `req` on the current connection (dialed if needed).
    ///
    /// A request queued just as the connection task ends can be left in
    /// the dropped dispatcher's channel: hyper's queue (a tokio mpsc) frees
    /// what a send raced with the receiver's drop only when the last sender
    /// goes, and ours sits in the slot. Its answer would never come (the
    /// agent held the downstream request forever). So once the connection
    /// is gone, its sender is dropped too: the stranded request comes back
    /// unwritten and goes on a new connection.
    async fn attempt<IO, D, F>(
        &self,
        h2: bool,
        req: Request<Incoming>,
        dial: &D,
        ended: &Option<CancellationToken>,
    ) -> Result<Result<Response<Incoming>, TrySendError<Request<Incoming>>>, ForwardError>
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        D: Fn() -> F,
        F: Future<Output = Result<IO, ForwardError>>,
    {
        let (mut answer, closed) = self.dispatch(h2, req, dial, ended).await?;
        tokio::select! {
            biased;
            r = &mut answer => return Ok(r),
            () = closed.cancelled() => {}
        }
        {
            let mut slot = self.slot.lock().await;
            if slot.as_ref().is_some_and(|c| c.closed.is_cancelled()) {
                *slot = None;
            }
        }
        Ok(answer.await)
    }

    /// Hands `req` to the connection, dialing one if there is none or it
    /// closed. The lock is not held while the answer is awaited: h2
    /// requests share the connection.
    async fn dispatch<IO, D, F>(
        &self,
        h2: bool,
        req: Request<Incoming>,
        dial: &D,
        ended: &Option<CancellationToken>,
    ) -> Result<(ResponseFuture, CancellationToken), ForwardError>
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        D: Fn() -> F,
        F: Future<Output = Result<IO, ForwardError>>,
    {
        let mut slot = self.slot.lock().await;
        let reusable = match slot.as_mut() {
            Some(c) => !c.closed.is_cancelled() && c.sender.ready().await,
            None => false,
        };
        if !reusable {
            *slot = Some(handshake(h2, dial().await?, ended.clone()).await?);
        }
        let conn = slot.as_mut().expect("connected above");
        Ok((conn.sender.try_send(req), conn.closed.clone()))
    }
}

async fn handshake<IO>(
    h2: bool,
    io: IO,
    ended: Option<CancellationToken>,
) -> Result<Connection, ForwardError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let io = TokioIo::new(io);
    let ended = ended.unwrap_or_default();
    let closed = CancellationToken::new();
    let done = closed.clone();
    let sender = if h2 {
        let (sender, conn) = client2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(proto::STREAM_WINDOW)
            .initial_connection_window_size(proto::CONNECTION_WINDOW)
            .handshake(io)
            .await
            .map_err(ForwardError::Upstream)?;
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                () = ended.cancelled() => {}
            }
            // After the select: the connection (and its queue) is dropped.
            done.cancel();
        });
        Sender::H2(sender)
    } else {
        let (sender, conn) = client1::Builder::new()
            .preserve_header_case(true)
            .handshake(io)
            .await
            .map_err(ForwardError::Upstream)?;
        tokio::spawn(async move {
            tokio::select! {
                _ = conn.with_upgrades() => {}
                () = ended.cancelled() => {}
            }
            done.cancel();
        });
        Sender::H1(sender)
    };
    Ok(Connection { sender, closed })
}
