//! Reaching the agent: the ready pod that runs the current agent, a
//! port-forward stream to it through the API, and a tonic channel whose
//! every connection is a new port-forward.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Container;
use tonic::transport::{Channel, Endpoint, Uri};

use super::port_forward::{PortForwardStream, port_forward};
use super::rollout::pods_of;
use super::template::AgentPort;
use super::{AGENT_CONTAINER, Cluster, K8sError, Workload};

/// A pod that runs the workload's current agent and is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPod {
    /// The pod's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The agent's gRPC port.
    pub grpc_port: u16,
    /// The ports the agent forwards.
    pub ports: Vec<AgentPort>,
}

/// What identifies the current agent in a pod: its image and settings.
fn agent_identity(c: &Container) -> (Option<String>, serde_json::Value) {
    (
        c.image.clone(),
        serde_json::to_value(&c.env).unwrap_or_default(),
    )
}

fn agent_of(containers: &[Container]) -> Option<&Container> {
    containers.iter().find(|c| c.name == AGENT_CONTAINER)
}

/// A workload as it is now and its pods that are ready with its current
/// agent (sorted by name; empty while the template has no agent).
#[derive(Debug, Clone)]
pub struct AgentPods {
    pub workload: Workload,
    pub pods: Vec<AgentPod>,
    /// Every pod of the workload, ready or not.
    pub total: usize,
}

/// Reads the workload and finds its ready pods whose agent container
/// matches the template (so not pods of an older template still terminating).
pub async fn agent_pods(cluster: &Cluster, workload: &Workload) -> Result<AgentPods, K8sError> {
    let ns = workload.metadata().namespace.clone().unwrap_or_default();
    let w = super::resolve::get_workload(cluster, workload.kind(), &ns, workload.name())
        .await?
        .ok_or_else(|| K8sError::WorkloadNotFound {
            name: workload.name().into(),
            kind: Some(workload.kind()),
            namespace: ns.clone(),
        })?;
    let template_spec = w.template().spec.clone().unwrap_or_default();
    let Some(agent) = agent_of(&template_spec.containers).filter(|_| w.has_agent()) else {
        return Ok(AgentPods {
            workload: w,
            pods: Vec::new(),
            total: 0,
        });
    };
    let wanted = agent_identity(agent);
    let grpc_port = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "TPR_AGENT_GRPC_PORT")
        .and_then(|e| e.value.as_deref()?.parse().ok())
        .unwrap_or(super::DEFAULT_GRPC_PORT);
    let all = pods_of(cluster, &w).await?;
    let ports = w.agent_ports()?;
    let mut pods: Vec<AgentPod> = all
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| agent_of(&s.containers))
                .map(agent_identity)
                .as_ref()
                == Some(&wanted)
        })
        .map(|p| AgentPod {
            name: p.metadata.name.clone().unwrap_or_default(),
            namespace: ns.clone(),
            grpc_port,
            ports: ports.clone(),
        })
        .collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(AgentPods {
        workload: w,
        pods,
        total: all.len(),
    })
}

/// Finds one ready pod of the workload with its current agent.
pub async fn find_agent_pod(cluster: &Cluster, workload: &Workload) -> Result<AgentPod, K8sError> {
    Ok(ready_agent_pods(cluster, workload).await?.pods.remove(0))
}

/// [`agent_pods`], failing with [`K8sError::NoAgentPod`] (saying why) when
/// none is ready.
pub async fn ready_agent_pods(
    cluster: &Cluster,
    workload: &Workload,
) -> Result<AgentPods, K8sError> {
    let found = agent_pods(cluster, workload).await?;
    let w = &found.workload;
    let no_pod = |detail: String| K8sError::NoAgentPod {
        workload: w.display(),
        namespace: w.metadata().namespace.clone().unwrap_or_default(),
        detail: Some(detail),
    };
    let installed = w.has_agent()
        && agent_of(&w.template().spec.clone().unwrap_or_default().containers).is_some();
    if !installed {
        return Err(no_pod("the agent is not installed".into()));
    }
    if found.pods.is_empty() {
        return Err(no_pod(format!(
            "{} pods, none ready with the current agent",
            found.total
        )));
    }
    Ok(found)
}

/// Waits up to `timeout` for a ready pod with the current agent, e.g. after
/// the agent's pod was restarted or replaced; other errors end the wait.
pub async fn wait_for_agent_pod(
    cluster: &Cluster,
    workload: &Workload,
    timeout: std::time::Duration,
) -> Result<AgentPod, K8sError> {
    Ok(wait_for_agent_pods(cluster, workload, timeout)
        .await?
        .pods
        .remove(0))
}

/// [`wait_for_agent_pod`], with the workload and all its ready agent pods.
pub async fn wait_for_agent_pods(
    cluster: &Cluster,
    workload: &Workload,
    timeout: std::time::Duration,
) -> Result<AgentPods, K8sError> {
    let start = std::time::Instant::now();
    loop {
        match ready_agent_pods(cluster, workload).await {
            Err(K8sError::NoAgentPod { detail, .. })
                if start.elapsed() < timeout
                    && detail.as_deref() != Some("the agent is not installed") =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

/// A tower connector for tonic: every connection the channel opens is a new
/// port-forward to the same pod port.
#[derive(Clone)]
pub struct PortForwardConnector {
    cluster: Cluster,
    namespace: String,
    pod: String,
    port: u16,
}

impl PortForwardConnector {
    /// A connector to `pod:port` in `namespace`.
    pub fn new(cluster: Cluster, namespace: &str, pod: &str, port: u16) -> Self {
        Self {
            cluster,
            namespace: namespace.into(),
            pod: pod.into(),
            port,
        }
    }
}

impl tower::Service<Uri> for PortForwardConnector {
    type Response = TokioIo<PortForwardStream>;
    type Error = K8sError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, K8sError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), K8sError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            port_forward(&this.cluster, &this.namespace, &this.pod, this.port)
                .await
                .map(TokioIo::new)
        })
    }
}

/// A gRPC channel to the agent in `pod`, connecting lazily (the first call
/// opens the port-forward; a dropped connection is reopened by the next call).
pub fn agent_channel(cluster: &Cluster, namespace: &str, pod: &str, port: u16) -> Channel {
    // The URI only sets :authority; the connector decides where bytes go.
    Endpoint::from_static("http://tpr-agent.invalid").connect_with_connector_lazy(
        PortForwardConnector::new(cluster.clone(), namespace, pod, port),
    )
}
