//! Who intercepts what: sessions, their intercepts per app port, and the
//! announced connections waiting for the runner's `TakeConnection`. One mutex with
//! short critical sections (no await while held).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use regex::Regex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tpr_schema::proto::{
    self, ConnectionAnnounced, CreateIntercept, HeaderMatch, Mechanism, Notice, NoticeKind,
    SessionEvent, header_match, pipe, session_event,
};

use crate::preview;

/// How long an announced connection waits for the runner.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an intercept was refused.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    /// Another intercept holds the port in a way that excludes this one.
    #[error("port {port} is already intercepted by {holder}")]
    Conflict { port: u16, holder: String },
    /// Another intercept on the port holds the same preview token.
    #[error("port {port}: the preview token is already held by {holder}")]
    PreviewTokenInUse { port: u16, holder: String },
    /// The preview token is malformed (the token itself is not shown).
    #[error("intercept {name:?}: {source}")]
    BadPreviewToken {
        name: String,
        #[source]
        source: preview::BadToken,
    },
    /// The port is not one the agent forwards.
    #[error("port {port} is not forwarded by this agent (it forwards app ports {forwarded})")]
    UnknownPort { port: u16, forwarded: String },
    /// A header regex does not compile.
    #[error("header {name:?}: bad regex: {source}")]
    BadRegex {
        name: String,
        #[source]
        source: regex::Error,
    },
    /// A header name is not a valid HTTP header name.
    #[error("{0:?} is not a valid HTTP header name")]
    BadHeaderName(String),
    /// The mechanism is missing.
    #[error("intercept {0:?}: mechanism must be tcp or http")]
    NoMechanism(String),
    /// The session ended while the request was handled.
    #[error("the session ended")]
    SessionEnded,
}

/// Why a connection could not be handed to the workstation.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The runner could not dial its local port.
    #[error("{0}")]
    DialFailed(String),
    /// The runner did not open the connection in time.
    #[error("the workstation did not take the connection within {ANNOUNCE_TIMEOUT:?}")]
    Timeout,
    /// The session ended meanwhile.
    #[error("the intercept ended")]
    Ended,
}

/// What the runner sent for an announced connection.
pub type Handoff = Result<(pipe::Inbound, pipe::Outbound), TunnelError>;

/// A header condition, compiled.
#[derive(Debug, Clone, PartialEq)]
enum ValueMatch {
    Exact(String),
    Regex(String),
}

#[derive(Debug)]
struct HeaderRule {
    name: http::HeaderName,
    value: ValueMatch,
    regex: Option<Regex>,
}

impl HeaderRule {
    fn matches(&self, headers: &HeaderMap) -> bool {
        headers.get_all(&self.name).iter().any(|v| {
            let Ok(v) = v.to_str() else { return false };
            match (&self.value, &self.regex) {
                (ValueMatch::Exact(want), _) => v == want,
                (_, Some(re)) => re.is_match(v),
                _ => false,
            }
        })
    }
}

/// One active intercept.
#[derive(Debug)]
pub struct Intercept {
    pub name: String,
    pub port: u16,
    pub local_port: u16,
    pub tcp: bool,
    session_id: String,
    holder: String,
    headers: Vec<HeaderRule>,
    path_prefix: String,
    /// http only: the preview token, an alternative to the header match.
    preview: Option<preview::Token>,
    events: mpsc::UnboundedSender<SessionEvent>,
    /// Cancelled when the intercept or its session ends: its connections close.
    pub ended: CancellationToken,
    tls_noticed: std::sync::atomic::AtomicBool,
}

impl Intercept {
    /// Does this http intercept take the request? Its path prefix must hold,
    /// and its header match or, as the other way in, its preview token.
    pub fn matches(&self, path: &str, headers: &HeaderMap, offered: &[&[u8]]) -> bool {
        path.starts_with(&self.path_prefix)
            && (self.headers.iter().all(|h| h.matches(headers)) || self.previewed_by(offered))
    }

    /// Is this intercept's preview token among `offered`?
    fn previewed_by(&self, offered: &[&[u8]]) -> bool {
        self.preview.as_ref().is_some_and(|p| p.offered_in(offered))
    }

    /// The answer header that stores this intercept's preview token in the
    /// browser, if it has one.
    pub fn preview_cookie(&self) -> Option<http::HeaderValue> {
        self.preview.as_ref().map(preview::Token::set_cookie)
    }

    fn same_match(&self, other: &Intercept) -> bool {
        self.path_prefix == other.path_prefix
            && self.headers.len() == other.headers.len()
            && self
                .headers
                .iter()
                .zip(&other.headers)
                .all(|(a, b)| a.name == b.name && a.value == b.value)
    }

    fn describe(&self) -> String {
        format!("intercept {:?} of {}", self.name, self.holder)
    }

    /// Tells the holder, once, that TLS on this port bypasses the intercept.
    pub fn notice_tls(&self) {
        if self
            .tls_noticed
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let message = format!(
            "a TLS connection reached http-intercepted port {}: its requests cannot be matched, so it went to the app",
            self.port
        );
        let _ = self.events.send(event(session_event::Kind::Notice(Notice {
            kind: NoticeKind::TlsPassthrough as i32,
            intercept: self.name.clone(),
            port: u32::from(self.port),
            message,
        })));
    }
}

fn event(kind: session_event::Kind) -> SessionEvent {
    SessionEvent { kind: Some(kind) }
}

struct Session {
    install_id: String,
    label: String,
    events: mpsc::UnboundedSender<SessionEvent>,
    ended: CancellationToken,
}

#[derive(Default)]
struct Port {
    intercepts: Vec<Arc<Intercept>>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Session>,
    ports: HashMap<u16, Port>,
    pending: HashMap<String, oneshot::Sender<Handoff>>,
}

/// Where a request goes.
#[derive(Debug, Default)]
pub struct RequestRoute {
    /// The http intercept that takes it; `None`: the app.
    pub intercept: Option<Arc<Intercept>>,
    /// The intercept whose preview token the query carries: the answer sets
    /// its cookie (wherever the request went, so a link to a page outside
    /// the path prefix still starts the preview).
    pub preview: Option<Arc<Intercept>>,
}

/// How a new connection on a forwarded port is handled.
pub enum Route {
    /// Straight to the app.
    App,
    /// Every byte to this tcp intercept's workstation.
    Tcp(Arc<Intercept>),
    /// Parse HTTP and route each request.
    Http,
}

pub struct Registry {
    inner: Mutex<Inner>,
    app_ports: Vec<u16>,
}

impl Registry {
    pub fn new(app_ports: Vec<u16>) -> Self {
        let mut inner = Inner::default();
        for p in &app_ports {
            inner.ports.insert(*p, Port::default());
        }
        Registry {
            inner: Mutex::new(inner),
            app_ports,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Every active intercept: name, port, tcp or not, holder; by port.
    pub fn intercepts(&self) -> Vec<(String, u16, bool, String)> {
        let inner = self.lock();
        let mut out: Vec<_> = inner
            .ports
            .values()
            .flat_map(|p| &p.intercepts)
            .map(|i| (i.name.clone(), i.port, i.tcp, i.holder.clone()))
            .collect();
        out.sort();
        out
    }

    /// Registers a session; returns its id and the token that ends it.
    pub fn open_session(
        &self,
        install_id: String,
        label: String,
        events: mpsc::UnboundedSender<SessionEvent>,
    ) -> (String, CancellationToken) {
        let id = uuid::Uuid::new_v4().to_string();
        let ended = CancellationToken::new();
        self.lock().sessions.insert(
            id.clone(),
            Session {
                install_id,
                label,
                events,
                ended: ended.clone(),
            },
        );
        (id, ended)
    }

    /// Ends a session: its intercepts go, their connections close.
    pub fn close_session(&self, id: &str) {
        let mut inner = self.lock();
        if let Some(session) = inner.sessions.remove(id) {
            session.ended.cancel();
        }
        for port in inner.ports.values_mut() {
            port.intercepts.retain(|i| {
                let keep = i.session_id != id;
                if !keep {
                    i.ended.cancel();
                }
                keep
            });
        }
    }

    pub fn create_intercept(
        &self,
        session_id: &str,
        req: CreateIntercept,
    ) -> Result<(), InterceptError> {
        let port = u16::try_from(req.port).unwrap_or(0);
        if !self.app_ports.contains(&port) {
            let forwarded = self
                .app_ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(InterceptError::UnknownPort { port, forwarded });
        }
        let tcp = match Mechanism::try_from(req.mechanism) {
            Ok(Mechanism::Tcp) => true,
            Ok(Mechanism::Http) => false,
            _ => return Err(InterceptError::NoMechanism(req.name)),
        };
        let mut inner = self.lock();
        let Some(session) = inner.sessions.get(session_id) else {
            return Err(InterceptError::SessionEnded);
        };
        let mut matches = req.headers;
        if matches.is_empty() && !tcp {
            matches.push(HeaderMatch {
                name: proto::INTERCEPT_ID_HEADER.to_owned(),
                value: Some(header_match::Value::Exact(format!(
                    "{}:{}",
                    session.install_id, req.name
                ))),
            });
        }
        let headers = if tcp { Vec::new() } else { compile(matches)? };
        let preview = (!tcp && !req.preview_token.is_empty())
            .then(|| preview::Token::new(&req.preview_token, req.preview_secure))
            .transpose()
            .map_err(|source| InterceptError::BadPreviewToken {
                name: req.name.clone(),
                source,
            })?;
        let intercept = Intercept {
            name: req.name,
            port,
            local_port: u16::try_from(req.local_port).unwrap_or(0),
            tcp,
            session_id: session_id.to_owned(),
            holder: format!("{} (install id {})", session.label, session.install_id),
            headers,
            path_prefix: if tcp { String::new() } else { req.path_prefix },
            preview,
            events: session.events.clone(),
            ended: session.ended.child_token(),
            tls_noticed: Default::default(),
        };
        let slot = inner.ports.entry(port).or_default();
        let is_replaced = |i: &Intercept| i.session_id == session_id && i.name == intercept.name;
        let conflict = slot.intercepts.iter().find(|i| {
            !is_replaced(i)
                && (i.tcp
                    || intercept.tcp
                    || (i.session_id != session_id && i.same_match(&intercept)))
        });
        if let Some(holder) = conflict {
            return Err(InterceptError::Conflict {
                port,
                holder: holder.describe(),
            });
        }
        // A token names one intercept.
        if let Some(token) = &intercept.preview {
            let taken = slot
                .intercepts
                .iter()
                .find(|i| !is_replaced(i) && i.preview.as_ref().is_some_and(|p| p.same(token)));
            if let Some(holder) = taken {
                return Err(InterceptError::PreviewTokenInUse {
                    port,
                    holder: holder.describe(),
                });
            }
        }
        slot.intercepts.retain(|i| {
            let replaced = is_replaced(i);
            if replaced {
                i.ended.cancel();
            }
            !replaced
        });
        slot.intercepts.push(Arc::new(intercept));
        Ok(())
    }

    /// Removes one intercept of a session; true when it existed.
    pub fn remove_intercept(&self, session_id: &str, name: &str) -> bool {
        let mut found = false;
        for port in self.lock().ports.values_mut() {
            port.intercepts.retain(|i| {
                let gone = i.session_id == session_id && i.name == name;
                if gone {
                    i.ended.cancel();
                    found = true;
                }
                !gone
            });
        }
        found
    }

    /// How to handle a new connection on this app port.
    pub fn route(&self, port: u16) -> Route {
        let inner = self.lock();
        let Some(slot) = inner.ports.get(&port) else {
            return Route::App;
        };
        match slot.intercepts.first() {
            None => Route::App,
            Some(i) if i.tcp => Route::Tcp(i.clone()),
            Some(_) => Route::Http,
        }
    }

    /// Where this request goes: the first http intercept (in order of
    /// creation) that takes it, else the app.
    pub fn match_request(
        &self,
        port: u16,
        path: &str,
        headers: &HeaderMap,
        offered: &preview::Offered<'_>,
    ) -> RequestRoute {
        let all = offered.all();
        let inner = self.lock();
        let Some(slot) = inner.ports.get(&port) else {
            return RequestRoute::default();
        };
        let http = || slot.intercepts.iter().filter(|i| !i.tcp);
        RequestRoute {
            intercept: http().find(|i| i.matches(path, headers, &all)).cloned(),
            preview: http().find(|i| i.previewed_by(&offered.query)).cloned(),
        }
    }

    /// The http intercepts on a port (for notices).
    pub fn http_intercepts(&self, port: u16) -> Vec<Arc<Intercept>> {
        let inner = self.lock();
        inner
            .ports
            .get(&port)
            .map(|s| s.intercepts.iter().filter(|i| !i.tcp).cloned().collect())
            .unwrap_or_default()
    }

    /// Announces a connection to the intercept's session and waits for the
    /// runner to open it (or to report that its local port refused).
    pub async fn hand_off(&self, intercept: &Intercept) -> Handoff {
        let conn_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.lock().pending.insert(conn_id.clone(), tx);
        let announced = intercept.events.send(event(session_event::Kind::Connection(
            ConnectionAnnounced {
                conn_id: conn_id.clone(),
                intercept: intercept.name.clone(),
                port: u32::from(intercept.port),
            },
        )));
        let outcome = if announced.is_err() {
            Err(TunnelError::Ended)
        } else {
            tokio::select! {
                r = tokio::time::timeout(ANNOUNCE_TIMEOUT, rx) => match r {
                    Ok(Ok(handoff)) => handoff,
                    Ok(Err(_)) => Err(TunnelError::Ended),
                    Err(_) => Err(TunnelError::Timeout),
                },
                () = intercept.ended.cancelled() => Err(TunnelError::Ended),
            }
        };
        self.lock().pending.remove(&conn_id);
        outcome
    }

    /// The runner's answer for an announced connection; false when unknown.
    pub fn complete(&self, conn_id: &str, handoff: Handoff) -> bool {
        match self.lock().pending.remove(conn_id) {
            Some(tx) => tx.send(handoff).is_ok(),
            None => false,
        }
    }
}

fn compile(matches: Vec<HeaderMatch>) -> Result<Vec<HeaderRule>, InterceptError> {
    matches
        .into_iter()
        .map(|m| {
            let name = http::HeaderName::from_bytes(m.name.to_ascii_lowercase().as_bytes())
                .map_err(|_| InterceptError::BadHeaderName(m.name.clone()))?;
            let (value, regex) = match m.value {
                Some(header_match::Value::Regex(re)) => {
                    let compiled = Regex::new(&format!("^(?:{re})$")).map_err(|source| {
                        InterceptError::BadRegex {
                            name: m.name.clone(),
                            source,
                        }
                    })?;
                    (ValueMatch::Regex(re), Some(compiled))
                }
                Some(header_match::Value::Exact(v)) => (ValueMatch::Exact(v), None),
                None => (
                    ValueMatch::Regex(".*".into()),
                    Some(Regex::new(".*").expect("valid")),
                ),
            };
            Ok(HeaderRule { name, value, regex })
        })
        .collect()
}

#[cfg(test)]
mod tests;
