//! The agent's gRPC service: sessions, connections handed to the
//! workstation, `to_pod` dials, the environment and health.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::{Request, Response, Status, Streaming};
use tpr_schema::proto::{
    self, Chunk, GetEnvRequest, GetEnvResponse, HealthRequest, HealthResponse, InterceptResult,
    NetworkInfoRequest, NetworkInfoResponse, ResolveRequest, ResolveResponse, SessionEvent,
    SessionRequest, Welcome,
    agent_server::{Agent, AgentServer},
    pipe, session_event, session_request,
};
use tracing::{debug, info, warn};

use crate::outbound;
use crate::registry::{Registry, TunnelError};

type EventStream = Pin<Box<dyn Stream<Item = Result<SessionEvent, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, Status>> + Send>>;

pub struct AgentService {
    pub registry: Arc<Registry>,
    pub pod: String,
    pub app_env: BTreeMap<String, String>,
    /// The app container's mounts (`TPR_AGENT_VOLUMES`), read under
    /// `volumes_root`.
    pub mounts: Vec<proto::mounts::Mount>,
    pub volumes_root: std::path::PathBuf,
}

fn event(kind: session_event::Kind) -> SessionEvent {
    SessionEvent { kind: Some(kind) }
}

fn metadata<'a>(req: &'a http::Request<Body>, key: &str) -> Result<&'a str, Status> {
    req.headers()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Status::invalid_argument(format!("missing request metadata {key}")))
}

/// The gRPC service: the byte-stream calls (`TakeConnection`, `DialPod`) go
/// to their zero-copy handlers ([`pipe`]), everything else to the generated
/// server.
#[derive(Clone)]
pub struct Router {
    service: Arc<AgentService>,
    generated: AgentServer<AgentService>,
}

impl Router {
    pub fn new(service: AgentService) -> Self {
        let service = Arc::new(service);
        Router {
            generated: AgentServer::from_arc(service.clone()),
            service,
        }
    }
}

type RouterFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl Service<http::Request<Body>> for Router {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = RouterFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> RouterFuture {
        let service = self.service.clone();
        let answer =
            |r: Result<http::Response<Body>, Status>| Ok(r.unwrap_or_else(Status::into_http));
        match req.uri().path() {
            pipe::TAKE_CONNECTION => Box::pin(async move { answer(service.take_connection(req)) }),
            pipe::DIAL_POD => Box::pin(async move { answer(service.dial_pod(req).await) }),
            pipe::DIAL_OUT => Box::pin(async move { answer(service.dial_out(req).await) }),
            _ => self.generated.call(req),
        }
    }
}

impl AgentService {
    /// The runner takes an announced connection: its stream joins the
    /// connection waiting in the registry.
    fn take_connection(&self, req: http::Request<Body>) -> Result<http::Response<Body>, Status> {
        let conn_id = metadata(&req, proto::CONN_ID_METADATA)?.to_owned();
        let (tx, body) = pipe::outbound();
        let inbound = pipe::Inbound::new(req.into_body());
        if !self.registry.complete(&conn_id, Ok((inbound, tx))) {
            return Err(Status::not_found(format!(
                "no pending connection {conn_id}"
            )));
        }
        Ok(pipe::respond(body))
    }

    /// `to_pod`: dials a port inside the pod and relays it.
    async fn dial_pod(&self, req: http::Request<Body>) -> Result<http::Response<Body>, Status> {
        let port: u16 = metadata(&req, proto::PORT_METADATA)?
            .parse()
            .map_err(|_| Status::invalid_argument("tpr-port is not a port"))?;
        let tcp = TcpStream::connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "nothing answers on 127.0.0.1:{port} in the pod: {e}"
                ))
            })?;
        pipe::tune_local(&tcp);
        let (tx, body) = pipe::outbound();
        let inbound = pipe::Inbound::new(req.into_body());
        tokio::spawn(async move {
            if let Err(e) = pipe::splice(tcp, inbound, tx).await {
                debug!(port, "to_pod relay ended: {e}");
            }
        });
        Ok(pipe::respond(body))
    }

    /// Outbound: dials a destination from the pod for the workstation's
    /// process and relays it.
    async fn dial_out(&self, req: http::Request<Body>) -> Result<http::Response<Body>, Status> {
        let dest: std::net::SocketAddr = metadata(&req, proto::DEST_METADATA)?
            .parse()
            .map_err(|_| Status::invalid_argument("tpr-dest is not an IP socket address"))?;
        let tcp = outbound::dial(dest).await?;
        let (tx, body) = pipe::outbound();
        let inbound = pipe::Inbound::new(req.into_body());
        tokio::spawn(async move {
            if let Err(e) = pipe::splice(tcp, inbound, tx).await {
                debug!(%dest, "outbound relay ended: {e}");
            }
        });
        Ok(pipe::respond(body))
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    type SessionStream = EventStream;
    type TakeConnectionStream = ChunkStream;
    type DialPodStream = ChunkStream;
    type VolumesStream =
        tokio_stream::wrappers::ReceiverStream<Result<proto::VolumesEvent, Status>>;
    type DialOutStream = ChunkStream;
    type DialUdpStream = ChunkStream;

    async fn session(
        &self,
        req: Request<Streaming<SessionRequest>>,
    ) -> Result<Response<EventStream>, Status> {
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(proto::SESSION_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(SessionRequest {
                kind: Some(session_request::Kind::Hello(hello)),
            }))) => hello,
            _ => return Err(Status::invalid_argument("a session starts with a hello")),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (id, ended) =
            self.registry
                .open_session(hello.install_id.clone(), hello.label.clone(), tx.clone());
        info!(session = %id, holder = %hello.label, "session opened");
        let _ = tx.send(event(session_event::Kind::Welcome(Welcome {
            session_id: id.clone(),
            pod: self.pod.clone(),
        })));
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let reason = loop {
                let next = tokio::select! {
                    next = tokio::time::timeout(proto::SESSION_TIMEOUT, inbound.message()) => next,
                    () = ended.cancelled() => break "ended",
                };
                let kind = match next {
                    Err(_) => break "no keepalive",
                    Ok(Err(_)) => break "stream broken",
                    Ok(Ok(None)) => break "closed by the runner",
                    Ok(Ok(Some(SessionRequest { kind: Some(kind) }))) => kind,
                    Ok(Ok(Some(_))) => continue,
                };
                handle(&registry, &id, &tx, kind);
            };
            registry.close_session(&id);
            info!(session = %id, reason, "session ended; its intercepts are removed");
        });
        Ok(Response::new(Box::pin(
            UnboundedReceiverStream::new(rx).map(Ok),
        )))
    }

    // The byte-stream calls are served by [`Router`] without tonic's codec;
    // these generated entry points are never reached.
    async fn take_connection(
        &self,
        _: Request<Streaming<Chunk>>,
    ) -> Result<Response<ChunkStream>, Status> {
        Err(Status::internal("TakeConnection is served by the router"))
    }

    async fn dial_pod(
        &self,
        _: Request<Streaming<Chunk>>,
    ) -> Result<Response<ChunkStream>, Status> {
        Err(Status::internal("DialPod is served by the router"))
    }

    async fn dial_out(
        &self,
        _: Request<Streaming<Chunk>>,
    ) -> Result<Response<ChunkStream>, Status> {
        Err(Status::internal("DialOut is served by the router"))
    }

    async fn dial_udp(
        &self,
        req: Request<Streaming<Chunk>>,
    ) -> Result<Response<ChunkStream>, Status> {
        let dest: std::net::SocketAddr = req
            .metadata()
            .get(proto::DEST_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Status::invalid_argument("tpr-dest is not an IP socket address"))?;
        let socket = outbound::dial_udp(dest).await?;
        let (tx, rx) = mpsc::channel(outbound::UDP_QUEUE);
        tokio::spawn(outbound::relay_udp(socket, req.into_inner(), tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn resolve(
        &self,
        req: Request<ResolveRequest>,
    ) -> Result<Response<ResolveResponse>, Status> {
        let answer =
            outbound::resolve(outbound::ResolvConf::pod(), &req.into_inner().query).await?;
        Ok(Response::new(ResolveResponse { answer }))
    }

    async fn network_info(
        &self,
        _: Request<NetworkInfoRequest>,
    ) -> Result<Response<NetworkInfoResponse>, Status> {
        Ok(Response::new(outbound::network_info(
            outbound::ResolvConf::pod(),
            self.app_env.iter(),
        )))
    }

    async fn get_env(&self, _: Request<GetEnvRequest>) -> Result<Response<GetEnvResponse>, Status> {
        Ok(Response::new(GetEnvResponse {
            env: self.app_env.clone().into_iter().collect(),
        }))
    }

    async fn volumes(
        &self,
        req: Request<proto::VolumesRequest>,
    ) -> Result<Response<Self::VolumesStream>, Status> {
        let rx = crate::volumes::serve(
            self.mounts.clone(),
            self.volumes_root.clone(),
            req.into_inner(),
        );
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            sessions: u32::try_from(self.registry.session_count()).unwrap_or(u32::MAX),
            intercepts: self
                .registry
                .intercepts()
                .into_iter()
                .map(|(name, port, tcp, holder)| proto::InterceptInfo {
                    name,
                    port: u32::from(port),
                    mechanism: if tcp {
                        proto::Mechanism::Tcp
                    } else {
                        proto::Mechanism::Http
                    } as i32,
                    holder,
                })
                .collect(),
        }))
    }
}

/// One message of a live session.
fn handle(
    registry: &Registry,
    session: &str,
    tx: &mpsc::UnboundedSender<SessionEvent>,
    kind: session_request::Kind,
) {
    let result = |name: String, error: String| {
        let _ = tx.send(event(session_event::Kind::InterceptResult(
            InterceptResult { name, error },
        )));
    };
    match kind {
        session_request::Kind::Ping(_) | session_request::Kind::Hello(_) => {}
        session_request::Kind::CreateIntercept(create) => {
            let name = create.name.clone();
            // Whether it has a preview link; never the token.
            let preview = !create.preview_token.is_empty();
            match registry.create_intercept(session, create) {
                Ok(()) => {
                    info!(session, intercept = %name, preview, "intercept active");
                    result(name, String::new());
                }
                Err(e) => {
                    warn!(session, intercept = %name, "intercept refused: {e}");
                    result(name, e.to_string());
                }
            }
        }
        session_request::Kind::RemoveIntercept(remove) => {
            let existed = registry.remove_intercept(session, &remove.name);
            let error = if existed {
                info!(session, intercept = %remove.name, "intercept removed");
                String::new()
            } else {
                format!("no intercept {:?} in this session", remove.name)
            };
            result(remove.name, error);
        }
        session_request::Kind::DialFailed(failed) => {
            registry.complete(&failed.conn_id, Err(TunnelError::DialFailed(failed.error)));
        }
    }
}
