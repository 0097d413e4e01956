//! The connection to one workload's agents: one session per ready agent pod
//! (every replica routes), the intercepts registered in each, the `to_pod`
//! listeners (dialled through one of the pods) and the pod's environment.
//! The manager reads the workload's pods now and then and [`Link::follow`]s
//! them: a new pod (scale-up, rollout, eviction) gets a session and the
//! intercepts, a pod that went away is dropped.

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

/// How long opening a session with one pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The session with one agent pod.
struct PodLink {
    pod: AgentPod,
    channel: Channel,
    session: Session,
}

impl PodLink {
    async fn open(cluster: &Cluster, pod: AgentPod, hello: Hello) -> Result<Self, UpError> {
        let connect = async {
            let channel = channel(cluster, &pod).await?;
            let session = Session::open(channel.clone(), hello)
                .await
                .map_err(|e| UpError::agent(&pod, e))?;
            Ok::<_, UpError>((channel, session))
        };
        let (channel, session) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| UpError::NotConnected {
                pod: pod.name.clone(),
            })??;
        Ok(PodLink {
            pod,
            channel,
            session,
        })
    }

    /// Registers (or replaces) an intercept; a refusal by a session of our
    /// own install id that is still dying is retried for a few seconds.
    async fn create(&self, spec: &InterceptSpec, install_id: &str) -> Result<(), UpError> {
        let started = Instant::now();
        loop {
            match self.session.create_intercept(spec.clone()).await {
                Ok(()) => return Ok(()),
                Err(TunnelError::Refused { reason, .. })
                    if reason.contains(install_id) && started.elapsed() < STALE_SESSION_GRACE =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(UpError::agent(&self.pod, e)),
            }
        }
    }
}

/// What [`Link::follow`] changed.
#[derive(Debug, Default)]
pub struct Followed {
    /// Pods that route here now and did not before.
    pub joined: Vec<String>,
    /// Pods that went away (scaled down, replaced, deleted).
    pub left: Vec<String>,
    /// Ready pods that could not be connected, and why.
    pub failed: Vec<(String, String)>,
    /// The link had no pod and has one again.
    pub restored: bool,
}

/// One workload's agents.
pub struct Link {
    pub workload: Workload,
    /// Pods with a session, by name.
    pods: BTreeMap<String, PodLink>,
    /// Ready agent pods without a session (yet), and why.
    pending: BTreeMap<String, String>,
    /// Agent-side intercept name -> what was registered (in every pod).
    pub intercepts: BTreeMap<String, InterceptSpec>,
    /// The `to_pod` ports, and the relays with the pod they dial through.
    to_pod_ports: Vec<u16>,
    to_pod: Option<(String, BTreeMap<u16, ToPod>)>,
    /// The app container's environment (values are secrets: never logged),
    /// as the agent of `env_pod` reports it.
    pub env: BTreeMap<String, String>,
    env_pod: Option<String>,
    hello: Hello,
    /// Set while no pod has a session.
    pub lost_since: Option<Instant>,
}

impl Link {
    /// Waits for a ready agent pod of the workload and opens a session with
    /// every ready one.
    pub async fn open(
        cluster: &Cluster,
        workload: Workload,
        hello: Hello,
    ) -> Result<Self, UpError> {
        // An installed agent's pod may be restarting: wait for it a while.
        let found = k8s::wait_for_agent_pods(cluster, &workload, Duration::from_secs(60)).await?;
        let first = found.pods[0].clone();
        let pod = PodLink::open(cluster, first.clone(), hello.clone()).await?;
        let env = tunnel::get_env(pod.channel.clone())
            .await
            .map_err(|e| UpError::agent(&first, e))?;
        let mut link = Link {
            workload: found.workload,
            pods: BTreeMap::from([(first.name.clone(), pod)]),
            pending: BTreeMap::new(),
            intercepts: BTreeMap::new(),
            to_pod_ports: Vec::new(),
            to_pod: None,
            env,
            env_pod: Some(first.name),
            hello,
            lost_since: None,
        };
        // The other replicas; one that fails now is retried by `follow`.
        link.follow(cluster, &found.pods).await?;
        Ok(link)
    }

    /// The pod the environment comes from and its channel: the pod whose
    /// mounted files are copied too.
    pub fn env_source(&self) -> Option<(String, Channel)> {
        let pod = self.pods.get(self.env_pod.as_ref()?)?;
        Some((pod.pod.name.clone(), pod.channel.clone()))
    }

    /// Whether at least one pod routes here.
    pub fn connected(&self) -> bool {
        !self.pods.is_empty()
    }

    /// The pods with a session.
    pub fn pod_names(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }

    /// Ready pods without a session, and why.
    pub fn pending(&self) -> &BTreeMap<String, String> {
        &self.pending
    }

    /// Registers (or replaces) an intercept in every pod. A refusal (a
    /// conflict) fails; a pod that fails otherwise is dropped and picked up
    /// again by the next [`follow`](Self::follow).
    pub async fn create(&mut self, spec: InterceptSpec) -> Result<(), UpError> {
        let mut dropped = Vec::new();
        for (name, pod) in &self.pods {
            match pod.create(&spec, &self.hello.install_id).await {
                Ok(()) => {}
                Err(
                    e @ UpError::Agent {
                        source: TunnelError::Refused { .. },
                        ..
                    },
                ) => return Err(e),
                Err(e) => dropped.push((name.clone(), e)),
            }
        }
        for (name, error) in dropped {
            self.drop_pod(&name, error.to_string());
            if self.pods.is_empty() {
                return Err(error);
            }
        }
        if self.pods.is_empty() {
            return Err(UpError::NotConnected {
                pod: self.workload.display(),
            });
        }
        self.intercepts.insert(spec.name.clone(), spec);
        Ok(())
    }

    /// Removes an intercept from every pod (the agent of a lost session has
    /// reverted it already).
    pub async fn remove(&mut self, name: &str) -> Result<(), UpError> {
        self.intercepts.remove(name);
        for pod in self.pods.values() {
            pod.session
                .remove_intercept(name)
                .await
                .map_err(|e| UpError::agent(&pod.pod, e))?;
        }
        Ok(())
    }

    /// Makes the `to_pod` listeners exactly `ports`, dialled through the
    /// first connected pod.
    pub async fn set_to_pod(&mut self, ports: &[u16]) -> Result<(), UpError> {
        self.to_pod_ports = ports.to_vec();
        self.sync_to_pod().await
    }

    async fn sync_to_pod(&mut self) -> Result<(), UpError> {
        let Some(via) = self.pods.values().next() else {
            self.to_pod = None;
            return Ok(());
        };
        if self
            .to_pod
            .as_ref()
            .is_some_and(|(pod, _)| *pod != via.pod.name)
        {
            // Its pod left: listen again through another one.
            self.to_pod = None;
        }
        let (_, relays) = self
            .to_pod
            .get_or_insert_with(|| (via.pod.name.clone(), BTreeMap::new()));
        relays.retain(|p, _| self.to_pod_ports.contains(p));
        for &port in &self.to_pod_ports {
            if relays.contains_key(&port) {
                continue;
            }
            let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let relay = ToPod::start(via.channel.clone(), listen, port)
                .await
                .map_err(|source| UpError::ToPodListen { port, source })?;
            relays.insert(port, relay);
        }
        Ok(())
    }

    /// The `to_pod` ports asked for.
    pub fn to_pod_ports(&self) -> Vec<u16> {
        self.to_pod_ports.clone()
    }

    /// The pods whose session was lost since the last call, with the reason.
    /// The agents' other notices go to `events`.
    pub fn take_lost(&mut self, events: Events) -> Vec<(String, String)> {
        let mut lost = Vec::new();
        for (name, pod) in self.pods.iter_mut() {
            while let Some(n) = pod.session.try_notice() {
                match n {
                    Notice::Lost { reason } => lost.push((name.clone(), reason)),
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
        }
        for (name, reason) in &lost {
            self.drop_pod(name, reason.clone());
        }
        lost
    }

    /// Forgets a pod's session; it stays pending while it is listed ready.
    fn drop_pod(&mut self, name: &str, reason: String) {
        if self.pods.remove(name).is_some() {
            self.pending.insert(name.to_owned(), reason);
        }
        if self.pods.is_empty() && self.lost_since.is_none() {
            self.lost_since = Some(Instant::now());
        }
    }

    /// Makes the sessions match `ready`, the workload's ready agent pods
    /// now: pods that went away are dropped, new ones (and pending ones)
    /// get a session and every intercept. The environment is read again
    /// when the pod it came from left.
    pub async fn follow(
        &mut self,
        cluster: &Cluster,
        ready: &[AgentPod],
    ) -> Result<Followed, UpError> {
        let mut followed = Followed::default();
        let was_connected = self.connected();
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|n| !ready.iter().any(|p| &p.name == *n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(pod) = self.pods.remove(&name) {
                close(pod, &self.intercepts).await;
                followed.left.push(name);
            }
        }
        self.pending
            .retain(|n, _| ready.iter().any(|p| &p.name == n));
        let new: Vec<&AgentPod> = ready
            .iter()
            .filter(|p| !self.pods.contains_key(&p.name))
            .collect();
        let opened = futures::future::join_all(new.iter().map(|p| {
            let (pod, hello, specs) = ((*p).clone(), self.hello.clone(), &self.intercepts);
            let hello_id = hello.install_id.clone();
            async move {
                let link = PodLink::open(cluster, pod, hello).await?;
                for spec in specs.values() {
                    link.create(spec, &hello_id).await?;
                }
                Ok::<_, UpError>(link)
            }
        }))
        .await;
        for (pod, result) in new.iter().zip(opened) {
            match result {
                Ok(link) => {
                    self.pending.remove(&pod.name);
                    self.pods.insert(pod.name.clone(), link);
                    followed.joined.push(pod.name.clone());
                }
                Err(
                    e @ UpError::Agent {
                        source: TunnelError::Refused { .. },
                        ..
                    },
                ) => return Err(e),
                Err(e) => {
                    // Said once per pod, not on every retry.
                    if self
                        .pending
                        .insert(pod.name.clone(), e.to_string())
                        .is_none()
                    {
                        followed.failed.push((pod.name.clone(), e.to_string()));
                    }
                }
            }
        }
        if self.connected() {
            self.lost_since = None;
            followed.restored = !was_connected;
        } else if was_connected {
            self.lost_since = Some(Instant::now());
        }
        let env_pod_left = self
            .env_pod
            .as_ref()
            .is_none_or(|p| !self.pods.contains_key(p));
        if env_pod_left && let Some(pod) = self.pods.values().next() {
            self.env = tunnel::get_env(pod.channel.clone())
                .await
                .map_err(|e| UpError::agent(&pod.pod, e))?;
            self.env_pod = Some(pod.pod.name.clone());
        }
        self.sync_to_pod().await?;
        Ok(followed)
    }

    /// Ends every session now (the agents revert their intercepts at once).
    pub async fn close(mut self) {
        self.to_pod = None;
        for (_, pod) in std::mem::take(&mut self.pods) {
            close(pod, &self.intercepts).await;
        }
    }
}

async fn close(pod: PodLink, intercepts: &BTreeMap<String, InterceptSpec>) {
    for name in intercepts.keys() {
        let _ = pod.session.remove_intercept(name).await;
    }
}
