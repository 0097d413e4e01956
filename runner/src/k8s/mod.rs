//! The Kubernetes side of tpr: find a workload and the Service that reaches
//! it, install the agent into its pod template (docs/agent-contract.md),
//! roll it out, put the template back exactly, and reach the agent through
//! the API's pods/portforward.
//!
//! Pure computations (resolution, template patch, pod diagnosis) work on
//! k8s-openapi objects and are unit-tested; what talks to the API server is
//! tested on the real cluster in `runner/tests/k8s*.rs`.
//!
//! How `tpr up` uses it:
//!
//! ```no_run
//! # async fn up() -> Result<(), tpr::k8s::K8sError> {
//! use tpr::k8s::{self, AgentSpec, Cluster, ClusterOptions, InterceptTarget, RolloutOptions};
//! let cluster = Cluster::connect(&ClusterOptions { context: Some("dev".into()), ..Default::default() }).await?;
//! cluster.check().await?; // unreachable cluster: a clear error before anything else
//! let target = InterceptTarget {
//!     workload: "hello".into(), kind: None, namespace: "default".into(), service: None, port: None,
//! };
//! let resolved = k8s::resolve(&cluster, &target).await?; // all intercepts first: nothing changes on an error
//! let spinner = k8s::spinner();
//! let http = true; // an http intercept: the agent parses HTTP on the port from the start
//! k8s::install(&cluster, &resolved.workload, &[resolved.port_request(http)], &AgentSpec::default(),
//!     &RolloutOptions::default(), &spinner).await?;
//! spinner.finish_and_clear();
//! let pod = k8s::find_agent_pod(&cluster, &resolved.workload).await?;
//! let channel = k8s::agent_channel(&cluster, &pod.namespace, &pod.name, pod.grpc_port);
//! // ... the tunnel's gRPC client on `channel`; intercepts on `resolved.container_port`.
//! # let _ = channel; Ok(()) }
//! ```

mod admission;
mod agent_pod;
mod cluster;
mod diagnose;
mod drift;
mod error;
mod ingress;
mod install;
mod list;
mod port_forward;
mod progress;
mod resolve;
mod rollout;
mod template;
mod workload;

pub use agent_pod::{
    AgentPod, AgentPods, PortForwardConnector, agent_channel, agent_pods, find_agent_pod,
    ready_agent_pods, wait_for_agent_pod, wait_for_agent_pods,
};
pub use cluster::{Cluster, ClusterOptions};
pub use diagnose::{PodProblem, diagnose_pod};
pub use drift::{Drift, check as check_drift};
pub use error::{K8sError, Rollback};
pub use ingress::{IngressRoute, list_ingresses, routes_to};
pub use install::{InstallOutcome, UninstallOutcome, install, uninstall, uninstall_all};
pub use list::{Interceptable, WorkloadSummary, list, summarize, workloads};
pub use port_forward::{PortForwardStream, port_forward};
pub use progress::{Progress, spinner};
pub use resolve::{
    InterceptTarget, PortId, Resolved, ServicePortRef, get_workload, resolve, resolve_in, selects,
};
pub use rollout::RolloutOptions;
pub use template::{AgentPort, AgentSpec, PortMode, PortRequest, merge_ports, patch_template};
pub use workload::{Workload, WorkloadKind};

/// Annotation on the workload: the pod template (JSON) before the first install.
pub const ANNOTATION_ORIGINAL_TEMPLATE: &str = "tpr.dev/original-template";
/// Annotation on the workload: the agent's ports (JSON list of [`AgentPort`]).
pub const ANNOTATION_AGENT_PORTS: &str = "tpr.dev/agent-ports";
/// Label on the pod template of a workload that runs the agent.
pub const LABEL_AGENT: &str = "tpr.dev/agent";
/// Name of the agent container.
pub const AGENT_CONTAINER: &str = "tpr-agent";
/// Name of the init container that redirects ports with iptables.
pub const AGENT_INIT_CONTAINER: &str = "tpr-agent-init";
/// Prefix under which the app container's environment is copied.
pub const ENV_PREFIX: &str = "TPR_APP_";
/// UID and GID the agent runs as; the init container's rules exempt this GID.
pub const AGENT_UID_GID: i64 = 7777;
/// Default gRPC port of the agent (127.0.0.1 in the pod).
pub const DEFAULT_GRPC_PORT: u16 = 9900;
/// First port the agent listens on for forwarded traffic.
pub const FIRST_AGENT_PORT: u16 = 9901;
