//! The connection to one workload's agent: the pod, a gRPC channel through
//! the API's pods/portforward, one session, the intercepts registered in it,
//! the `to_pod` listeners and the pod's environment. A lost session (the pod
//! restarted, the port-forward dropped) is re-opened on the workload's new
//! agent pod and the intercepts restored.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use crate::k8s::{self, AgentPod, Cluster, PortForwardConnector, Workload};
use crate::tunnel::{self, Hello, InterceptSpec, Notice, Session, ToPod, TunnelError};

use super::UpError;
use super::event::{Events, UpEvent};

/// How long a refusal by our own dying session (same install id, e.g. after
/// a crash) is retried: the agent drops a silent session after 2.5 s.
const STALE_SESSION_GRACE: Duration = Duration::from_secs(4);

/// One connected agent.
pub struct Link {
    pub workload: Workload,
    pub pod: AgentPod,
    channel: Channel,
    session: Option<Session>,
    /// Agent-side intercept name -> what was registered.
    pub intercepts: BTreeMap<String, InterceptSpec>,
    to_pod: BTreeMap<u16, ToPod>,
    /// The app container's environment (values are secrets: never logged).
    pub env: BTreeMap<String, String>,
    hello: Hello,
    /// Set while the session is lost: when the last reconnect was tried.
    pub lost_since: Option<Instant>,
    last_attempt: Option<Instant>,
}

/// A gRPC channel to the agent in `pod`, over a port-forward, with the
/// tunnel's keepalive and window settings. Connects now, so a failure shows.
pub async fn channel(cluster: &Cluster, pod: &AgentPod) -> Result<Channel, UpError> {
    let connector =
        PortForwardConnector::new(cluster.clone(), &pod.namespace, &pod.name, pod.grpc_port);
    tunnel::endpoint("http://tpr-agent.invalid")
        .map_err(|e| UpError::agent(pod, e))?
        .connect_with_connector(connector)
        .await
        .map_err(|e| UpError::agent(pod, TunnelError::Connect(e)))
}

impl Link {
    /// Finds the workload's ready agent pod and opens a session there.
    pub async fn open(
        cluster: &Cluster,
        workload: Workload,
        hello: Hello,
    ) -> Result<Self, UpError> {
        // An installed agent's pod may be restarting: wait for it a while.
        let pod = k8s::wait_for_agent_pod(cluster, &workload, Duration::from_secs(60)).await?;
        let channel = channel(cluster, &pod).await?;
        let session = Session::open(channel.clone(), hello.clone())
            .await
            .map_err(|e| UpError::agent(&pod, e))?;
        let env = tunnel::get_env(channel.clone())
            .await
            .map_err(|e| UpError::agent(&pod, e))?;
        Ok(Link {
            workload,
            pod,
            channel,
            session: Some(session),
            intercepts: BTreeMap::new(),
            to_pod: BTreeMap::new(),
            env,
            hello,
            lost_since: None,
            last_attempt: None,
        })
    }

    /// Whether the session is up.
    pub fn connected(&self) -> bool {
        self.lost_since.is_none()
    }

    /// Registers (or replaces) an intercept; a refusal by a session of our
    /// own install id that is still dying is retried for a few seconds.
    pub async fn create(&mut self, spec: InterceptSpec) -> Result<(), UpError> {
        let session = self.session.as_ref().ok_or_else(|| UpError::NotConnected {
            pod: self.pod.name.clone(),
        })?;
        let started = Instant::now();
        loop {
            match session.create_intercept(spec.clone()).await {
                Ok(()) => break,
                Err(TunnelError::Refused { reason, .. })
                    if reason.contains(&self.hello.install_id)
                        && started.elapsed() < STALE_SESSION_GRACE =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(UpError::agent(&self.pod, e)),
            }
        }
        self.intercepts.insert(spec.name.clone(), spec);
        Ok(())
    }

    /// Removes an intercept (gone already when the session is lost).
    pub async fn remove(&mut self, name: &str) -> Result<(), UpError> {
        self.intercepts.remove(name);
        if let Some(session) = &self.session
            && self.lost_since.is_none()
        {
            session
                .remove_intercept(name)
                .await
                .map_err(|e| UpError::agent(&self.pod, e))?;
        }
        Ok(())
    }

    /// Makes the `to_pod` listeners exactly `ports`.
    pub async fn set_to_pod(&mut self, ports: &[u16]) -> Result<(), UpError> {
        self.to_pod.retain(|p, _| ports.contains(p));
        for &port in ports {
            if self.to_pod.contains_key(&port) {
                continue;
            }
            let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let relay = ToPod::start(self.channel.clone(), listen, port)
                .await
                .map_err(|e| UpError::agent(&self.pod, e))?;
            self.to_pod.insert(port, relay);
        }
        Ok(())
    }

    /// The `to_pod` ports listened on.
    pub fn to_pod_ports(&self) -> Vec<u16> {
        self.to_pod.keys().copied().collect()
    }

    /// Whether the session was lost since the last call; the reason if so.
    /// The agent's other notices go to `events`.
    pub fn take_lost(&mut self, events: Events) -> Option<String> {
        let session = self.session.as_mut()?;
        let mut lost = None;
        while let Some(n) = session.try_notice() {
            match n {
                Notice::Lost { reason } => lost = Some(reason),
                Notice::WorkstationUnreachable {
                    intercept,
                    target,
                    error,
                } => events.emit(UpEvent::LocalUnreachable {
                    intercept,
                    target: target.to_string(),
                    error,
                }),
                Notice::WorkstationReachable { intercept, target } => {
                    events.emit(UpEvent::LocalReachable {
                        intercept,
                        target: target.to_string(),
                    })
                }
                Notice::TlsPassthrough {
                    intercept, message, ..
                } => events.emit(UpEvent::AgentNotice { intercept, message }),
            }
        }
        if lost.is_some() {
            self.session = None;
            self.lost_since = Some(Instant::now());
        }
        lost
    }

    /// Ends the session now (the agent reverts its intercepts at once).
    pub async fn close(mut self) {
        if let Some(session) = &self.session
            && self.lost_since.is_none()
        {
            for name in self.intercepts.keys() {
                let _ = session.remove_intercept(name).await;
            }
        }
        self.to_pod.clear();
        self.session = None;
    }

    /// One reconnect attempt, at most every second: the workload's current
    /// agent pod, a new session, the intercepts and relays restored.
    pub async fn try_reconnect(&mut self, cluster: &Cluster) -> Option<Result<(), UpError>> {
        if self
            .last_attempt
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return None;
        }
        self.last_attempt = Some(Instant::now());
        let attempt = async {
            let pod = k8s::find_agent_pod(cluster, &self.workload).await?;
            let channel = tokio::time::timeout(Duration::from_secs(5), channel(cluster, &pod))
                .await
                .map_err(|_| UpError::NotConnected {
                    pod: pod.name.clone(),
                })??;
            let session = Session::open(channel.clone(), self.hello.clone())
                .await
                .map_err(|e| UpError::agent(&pod, e))?;
            Ok::<_, UpError>((pod, channel, session))
        };
        let (pod, channel, session) = match attempt.await {
            Ok(v) => v,
            Err(e) => return Some(Err(e)),
        };
        self.pod = pod;
        self.channel = channel;
        self.session = Some(session);
        self.lost_since = None;
        if let Err(e) = self.restore().await {
            // Try again on the next attempt, from a fresh session.
            self.session = None;
            self.lost_since = Some(Instant::now());
            return Some(Err(e));
        }
        Some(Ok(()))
    }

    /// Registers the intercepts and relays again on a new session.
    async fn restore(&mut self) -> Result<(), UpError> {
        let specs: Vec<InterceptSpec> = self.intercepts.values().cloned().collect();
        for spec in specs {
            self.create(spec).await?;
        }
        let ports = self.to_pod_ports();
        self.to_pod.clear();
        self.set_to_pod(&ports).await?;
        self.env = tunnel::get_env(self.channel.clone())
            .await
            .map_err(|e| UpError::agent(&self.pod, e))?;
        Ok(())
    }
}
