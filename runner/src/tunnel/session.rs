//! A runner's session with one agent: hello, a ping every second, intercept
//! create/remove, and the connections the agent announces for this
//! workstation (dial the local target, open one stream, splice). Dropping
//! the [`Session`] ends it; the agent then reverts its intercepts.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tpr_schema::proto::{
    self, ConnectionAnnounced, CreateIntercept, DialFailed, NoticeKind, Ping, RemoveIntercept,
    SessionEvent, SessionRequest, agent_client::AgentClient, header_match, pipe, session_event,
    session_request,
};
use tracing::{debug, info, warn};

use super::TunnelError;

/// How long the agent has to answer a hello or an intercept request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long dialing the local target may take: a full accept backlog drops
/// SYNs instead of refusing, and the agent's client waits meanwhile.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Who opens the session.
#[derive(Debug, Clone)]
pub struct Hello {
    /// The per-user install id (UUID); the default http match uses it.
    pub install_id: String,
    /// Named in conflict errors, e.g. "alice@laptop".
    pub label: String,
}

/// One http header condition.
#[derive(Debug, Clone)]
pub enum HeaderMatch {
    Exact {
        name: String,
        value: String,
    },
    /// The whole value matches the regular expression.
    Regex {
        name: String,
        pattern: String,
    },
}

#[derive(Debug, Clone)]
pub enum Mechanism {
    /// Every connection to the port.
    Tcp,
    /// Requests matching all `headers` (default: `x-telepresence-intercept-id:
    /// <install id>:<name>`) and `path_prefix`.
    Http {
        headers: Vec<HeaderMatch>,
        path_prefix: Option<String>,
    },
}

/// An intercept to create.
#[derive(Debug, Clone)]
pub struct InterceptSpec {
    pub name: String,
    /// The app's container port in the pod.
    pub app_port: u16,
    pub mechanism: Mechanism,
    /// Where intercepted connections go on the workstation.
    pub target: SocketAddr,
    /// How long a connection waits for `target` to listen (a process that
    /// starts or restarts) before it is refused.
    pub wait: Duration,
    /// http only: requests carrying this preview token (query parameter or
    /// cookie `tpr_preview`) come here whatever their headers.
    pub preview: Option<PreviewToken>,
}

/// A preview link's token, as registered with an http intercept. It is a
/// bearer secret: `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct PreviewToken {
    pub token: String,
    /// The link is https: the agent's cookie gets `Secure`.
    pub secure: bool,
}

impl std::fmt::Debug for PreviewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreviewToken")
            .field("token", &"<secret>")
            .field("secure", &self.secure)
            .finish()
    }
}

/// Something the user should know, reported once per occurrence (not once
/// per request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Nothing answers on the intercept's local target: intercepted HTTP
    /// requests get 502s and tcp connections close until it does.
    WorkstationUnreachable {
        intercept: String,
        target: SocketAddr,
        error: String,
    },
    /// The local target answers again.
    WorkstationReachable {
        intercept: String,
        target: SocketAddr,
    },
    /// TLS reached an http-intercepted port and went to the app.
    TlsPassthrough {
        intercept: String,
        port: u16,
        message: String,
    },
    /// The session ended; its intercepts are gone on the agent.
    Lost { reason: String },
}

struct Target {
    addr: SocketAddr,
    /// How long a connection waits for the target to listen.
    wait: Duration,
    failing: bool,
}

/// Answers awaited from the agent, per intercept name, in request order.
type Waiting = HashMap<String, VecDeque<oneshot::Sender<Result<(), String>>>>;

#[derive(Default)]
struct Shared {
    targets: Mutex<HashMap<String, Target>>,
    waiting: Mutex<Waiting>,
    lost: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Session {
    id: String,
    pod: String,
    requests: mpsc::Sender<SessionRequest>,
    shared: Arc<Shared>,
    notices: mpsc::UnboundedReceiver<Notice>,
    task: JoinHandle<()>,
}

fn request(kind: session_request::Kind) -> SessionRequest {
    SessionRequest { kind: Some(kind) }
}

impl Session {
    /// Opens a session on an agent connection.
    pub async fn open(channel: Channel, hello: Hello) -> Result<Self, TunnelError> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(request(session_request::Kind::Hello(proto::Hello {
            install_id: hello.install_id,
            label: hello.label,
        })))
        .await
        .expect("the receiver is alive");
        let mut events = AgentClient::new(channel.clone())
            .session(ReceiverStream::new(rx))
            .await
            .map_err(|status| TunnelError::Call {
                call: "Session",
                status,
            })?
            .into_inner();
        let welcome = match tokio::time::timeout(ANSWER_TIMEOUT, events.message()).await {
            Ok(Ok(Some(SessionEvent {
                kind: Some(session_event::Kind::Welcome(w)),
            }))) => w,
            Ok(Err(status)) => {
                return Err(TunnelError::Call {
                    call: "Session",
                    status,
                });
            }
            _ => return Err(TunnelError::SessionLost("the agent sent no welcome".into())),
        };
        let shared = Arc::new(Shared::default());
        let (notices_tx, notices) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(channel, events, tx.clone(), shared.clone(), notices_tx));
        debug!(session = %welcome.session_id, pod = %welcome.pod, "session opened");
        Ok(Session {
            id: welcome.session_id,
            pod: welcome.pod,
            requests: tx,
            shared,
            notices,
            task,
        })
    }

    /// The agent's id for this session.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The pod the agent runs in (`<namespace>/<name>`).
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// Creates (or replaces) an intercept; a refusal names the reason, such
    /// as the holder of a conflicting intercept.
    pub async fn create_intercept(&self, spec: InterceptSpec) -> Result<(), TunnelError> {
        let (headers, path_prefix, mechanism) = match spec.mechanism {
            Mechanism::Tcp => (Vec::new(), String::new(), proto::Mechanism::Tcp),
            Mechanism::Http {
                headers,
                path_prefix,
            } => (
                headers.into_iter().map(wire_match).collect(),
                path_prefix.unwrap_or_default(),
                proto::Mechanism::Http,
            ),
        };
        // The target is known before the agent may announce a connection.
        let previous = lock(&self.shared.targets).insert(
            spec.name.clone(),
            Target {
                addr: spec.target,
                wait: spec.wait,
                failing: false,
            },
        );
        let create = session_request::Kind::CreateIntercept(CreateIntercept {
            name: spec.name.clone(),
            port: u32::from(spec.app_port),
            mechanism: mechanism as i32,
            headers,
            path_prefix,
            local_port: u32::from(spec.target.port()),
            preview_token: spec
                .preview
                .as_ref()
                .map(|p| p.token.clone())
                .unwrap_or_default(),
            preview_secure: spec.preview.as_ref().is_some_and(|p| p.secure),
        });
        let result = self.ask(&spec.name, create).await;
        if result.is_err() {
            let mut targets = lock(&self.shared.targets);
            match previous {
                Some(p) => targets.insert(spec.name.clone(), p),
                None => targets.remove(&spec.name),
            };
        }
        result
    }

    /// Removes an intercept of this session.
    pub async fn remove_intercept(&self, name: &str) -> Result<(), TunnelError> {
        let remove = session_request::Kind::RemoveIntercept(RemoveIntercept {
            name: name.to_owned(),
        });
        self.ask(name, remove).await?;
        lock(&self.shared.targets).remove(name);
        Ok(())
    }

    /// The next notice; `None` once the session is gone and all were read.
    pub async fn next_notice(&mut self) -> Option<Notice> {
        self.notices.recv().await
    }

    /// A notice if one is waiting.
    pub fn try_notice(&mut self) -> Option<Notice> {
        self.notices.try_recv().ok()
    }

    async fn ask(&self, name: &str, kind: session_request::Kind) -> Result<(), TunnelError> {
        if let Some(reason) = lock(&self.shared.lost).clone() {
            return Err(TunnelError::SessionLost(reason));
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.waiting)
            .entry(name.to_owned())
            .or_default()
            .push_back(tx);
        let lost = || TunnelError::SessionLost("the agent did not answer".into());
        self.requests
            .send(request(kind))
            .await
            .map_err(|_| lost())?;
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(reason))) => Err(TunnelError::Refused {
                name: name.to_owned(),
                reason,
            }),
            _ => Err(lock(&self.shared.lost)
                .clone()
                .map_or_else(lost, TunnelError::SessionLost)),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Resets the session stream: the agent ends the session at once.
        self.task.abort();
    }
}

fn wire_match(m: HeaderMatch) -> proto::HeaderMatch {
    let (name, value) = match m {
        HeaderMatch::Exact { name, value } => (name, header_match::Value::Exact(value)),
        HeaderMatch::Regex { name, pattern } => (name, header_match::Value::Regex(pattern)),
    };
    proto::HeaderMatch {
        name,
        value: Some(value),
    }
}

async fn run(
    channel: Channel,
    mut events: tonic::Streaming<SessionEvent>,
    requests: mpsc::Sender<SessionRequest>,
    shared: Arc<Shared>,
    notices: mpsc::UnboundedSender<Notice>,
) {
    let mut ping = tokio::time::interval(proto::PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            _ = ping.tick() => {
                if requests.send(request(session_request::Kind::Ping(Ping {}))).await.is_err() {
                    break "the session stream closed".to_owned();
                }
            }
            event = events.message() => match event {
                Ok(Some(SessionEvent { kind: Some(kind) })) => {
                    on_event(&channel, kind, &requests, &shared, &notices);
                }
                Ok(Some(_)) => {}
                Ok(None) => break "the agent closed the session".to_owned(),
                Err(status) => break format!("the session broke: {}", status.message()),
            }
        }
    };
    warn!("{reason}; the intercepts of this session are gone");
    *lock(&shared.lost) = Some(reason.clone());
    for (name, queue) in lock(&shared.waiting).drain() {
        for tx in queue {
            let _ = tx.send(Err(format!(
                "session lost before the agent answered for {name:?}"
            )));
        }
    }
    let _ = notices.send(Notice::Lost { reason });
}

fn on_event(
    channel: &Channel,
    kind: session_event::Kind,
    requests: &mpsc::Sender<SessionRequest>,
    shared: &Arc<Shared>,
    notices: &mpsc::UnboundedSender<Notice>,
) {
    match kind {
        session_event::Kind::Welcome(_) => {}
        session_event::Kind::InterceptResult(result) => {
            let tx = lock(&shared.waiting)
                .get_mut(&result.name)
                .and_then(VecDeque::pop_front);
            if let Some(tx) = tx {
                let _ = tx.send(if result.error.is_empty() {
                    Ok(())
                } else {
                    Err(result.error)
                });
            }
        }
        session_event::Kind::Connection(announced) => {
            tokio::spawn(take(
                channel.clone(),
                announced,
                requests.clone(),
                shared.clone(),
                notices.clone(),
            ));
        }
        session_event::Kind::Notice(notice) => {
            if notice.kind == NoticeKind::TlsPassthrough as i32 {
                warn!(intercept = %notice.intercept, "{}", notice.message);
                let _ = notices.send(Notice::TlsPassthrough {
                    intercept: notice.intercept,
                    port: u16::try_from(notice.port).unwrap_or(0),
                    message: notice.message,
                });
            }
        }
    }
}

/// Dials the local target. While nothing listens there (the process is
/// starting or restarting) the connection waits up to `wait`, trying again
/// every 25 ms, so a restart costs no connection.
async fn dial_local(addr: SocketAddr, wait: Duration) -> Result<TcpStream, String> {
    let started = std::time::Instant::now();
    loop {
        // In the processes' outbound namespaces first (their localhost).
        match tokio::time::timeout(DIAL_TIMEOUT, crate::outbound::connect_local(addr)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e))
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && started.elapsed() < wait =>
            {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Ok(Err(e)) if started.elapsed() >= wait && !wait.is_zero() => {
                return Err(format!("{e} (waited {:.1} s)", wait.as_secs_f64()));
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {DIAL_TIMEOUT:?}")),
        }
    }
}

/// Takes one announced connection: dial the local target, then splice it
/// with a `TakeConnection` stream. A refused dial is reported to the agent
/// (which answers 502 or closes) and to the user once per outage.
async fn take(
    channel: Channel,
    announced: ConnectionAnnounced,
    requests: mpsc::Sender<SessionRequest>,
    shared: Arc<Shared>,
    notices: mpsc::UnboundedSender<Notice>,
) {
    let name = announced.intercept;
    let target = lock(&shared.targets).get(&name).map(|t| (t.addr, t.wait));
    let dialed = match target {
        None => Err(format!("intercept {name:?} is not held by this session")),
        Some((addr, wait)) => dial_local(addr, wait).await,
    };
    let set_failing = |failing: bool| {
        let mut targets = lock(&shared.targets);
        let t = targets.get_mut(&name)?;
        (t.failing != failing).then(|| {
            t.failing = failing;
            t.addr
        })
    };
    let tcp = match dialed {
        Ok(tcp) => tcp,
        Err(error) => {
            let failed = DialFailed {
                conn_id: announced.conn_id,
                error: error.clone(),
            };
            let _ = requests
                .send(request(session_request::Kind::DialFailed(failed)))
                .await;
            if let Some(target) = set_failing(true) {
                warn!(
                    intercept = %name,
                    "nothing answers on {target} ({error}): intercepted requests get 502 and connections close until it does"
                );
                let _ = notices.send(Notice::WorkstationUnreachable {
                    intercept: name,
                    target,
                    error,
                });
            }
            return;
        }
    };
    // Holding the session's sender would keep its stream open after the
    // session is dropped; the connection needs it no more.
    drop(requests);
    if let Some(target) = set_failing(false) {
        info!(intercept = %name, "{target} answers again");
        let _ = notices.send(Notice::WorkstationReachable {
            intercept: name.clone(),
            target,
        });
    }
    pipe::tune_local(&tcp);
    let stream = (proto::CONN_ID_METADATA, announced.conn_id.as_str());
    match pipe::call(&channel, pipe::TAKE_CONNECTION, stream).await {
        Ok((inbound, outbound)) => {
            if let Err(e) = pipe::splice(tcp, inbound, outbound).await {
                debug!(intercept = %name, "intercepted connection ended: {e}");
            }
        }
        Err(status) => debug!(intercept = %name, "agent dropped the connection: {status}"),
    }
}
