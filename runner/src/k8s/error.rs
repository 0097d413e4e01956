//! Errors of the Kubernetes side, each saying what went wrong and what to do.

use std::fmt;
use std::time::Duration;

use super::WorkloadKind;

/// What happened to the workload after an install failed half-way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollback {
    /// Nothing had been written yet.
    NothingChanged,
    /// The previous pod template was put back.
    Restored,
    /// Uninstall put the original template back, but its rollout failed.
    Uninstalled,
    /// Putting the previous template back failed too: the user must act.
    Failed(String),
}

impl fmt::Display for Rollback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rollback::NothingChanged => write!(f, "nothing was changed"),
            Rollback::Restored => write!(f, "the previous pod template was restored"),
            Rollback::Uninstalled => {
                write!(
                    f,
                    "the original pod template is back in place, but its pods are not ready"
                )
            }
            Rollback::Failed(e) => write!(
                f,
                "restoring the previous pod template failed too ({e}); run `tpr uninstall` to restore it"
            ),
        }
    }
}

/// Everything that can go wrong between tpr and the cluster.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// The kubeconfig file could not be read or parsed.
    #[error("cannot load the kubeconfig{}: {cause}; set KUBECONFIG or pass the file", path.as_deref().map(|p| format!(" {p}")).unwrap_or_default())]
    Kubeconfig {
        /// The file, when one was named.
        path: Option<String>,
        /// Why it failed.
        cause: String,
    },

    /// The requested context is not in the kubeconfig.
    #[error(
        "context `{context}` is not in the kubeconfig; its contexts are: {}",
        list(available)
    )]
    UnknownContext {
        /// The context asked for.
        context: String,
        /// The contexts the kubeconfig has.
        available: Vec<String>,
    },

    /// The API server did not answer (connection refused, timeout, TLS).
    #[error(
        "cannot reach the cluster at {url} (context {context}): {cause}; check kubeconfig/context"
    )]
    Unreachable {
        /// The API server URL from the kubeconfig.
        url: String,
        /// The kubeconfig context in use.
        context: String,
        /// The transport error, innermost cause included.
        cause: String,
    },

    /// RBAC refused a request: names the verb and resource so the fix is clear.
    #[error(
        "forbidden: tpr needs `{verb}` on `{resource}` in namespace `{namespace}`; an admin can grant it with `kubectl -n {namespace} create role tpr-{verb} --verb={verb} --resource={resource}` and a RoleBinding to your user, or with the Role in docs/rbac.yaml (API server: {message})"
    )]
    Forbidden {
        /// The verb RBAC refused (get, list, update, delete, create).
        verb: String,
        /// The resource, with its API group (`deployments.apps`, `pods/portforward`).
        resource: String,
        /// The namespace of the request.
        namespace: String,
        /// The API server's own message.
        message: String,
    },

    /// Any other error answer from the API server.
    #[error("{verb} {resource} in namespace `{namespace}` failed: {message} ({code} {reason})")]
    Api {
        /// The verb of the failed request.
        verb: &'static str,
        /// The resource of the failed request.
        resource: &'static str,
        /// The namespace of the request.
        namespace: String,
        /// HTTP status code.
        code: u16,
        /// The API server's reason (`Conflict`, `Invalid`, ...).
        reason: String,
        /// The API server's message.
        message: String,
    },

    /// A client-side failure talking to the API (bad response, TLS setup).
    #[error("{verb} {resource} in namespace `{namespace}` failed: {cause}")]
    Client {
        /// The verb of the failed request.
        verb: &'static str,
        /// The resource of the failed request.
        resource: &'static str,
        /// The namespace of the request.
        namespace: String,
        /// What kube-rs reported.
        cause: String,
    },

    /// No Deployment, ReplicaSet or StatefulSet has this name.
    #[error("no {} named `{name}` in namespace `{namespace}`; run `tpr list` to see the workloads there", kind.map(|k| k.to_string()).unwrap_or_else(|| "deployment, replicaset or statefulset".into()))]
    WorkloadNotFound {
        /// The name looked for.
        name: String,
        /// The kind, when one was given.
        kind: Option<WorkloadKind>,
        /// The namespace searched.
        namespace: String,
    },

    /// Workloads of several kinds share the name.
    #[error(
        "`{name}` in namespace `{namespace}` names several workloads ({}); set the kind in the file",
        list(kinds)
    )]
    AmbiguousWorkload {
        /// The name looked for.
        name: String,
        /// The namespace searched.
        namespace: String,
        /// The kinds that have it.
        kinds: Vec<WorkloadKind>,
    },

    /// No Service selects the workload's pods.
    #[error(
        "no Service in namespace `{namespace}` selects the pods of {workload}, so it cannot be intercepted; create a Service whose selector matches its pod labels"
    )]
    NoService {
        /// `kind/name`.
        workload: String,
        /// The namespace.
        namespace: String,
    },

    /// The named Service does not exist.
    #[error(
        "no Service named `{service}` in namespace `{namespace}`; Services selecting {workload}: {}",
        list(selecting)
    )]
    ServiceNotFound {
        /// The Service asked for.
        service: String,
        /// `kind/name` of the workload.
        workload: String,
        /// The namespace.
        namespace: String,
        /// The Services that do select the workload.
        selecting: Vec<String>,
    },

    /// A Service without a selector has no pods tpr could patch.
    #[error(
        "Service `{service}` in namespace `{namespace}` has no selector (its endpoints are managed by hand), so it cannot be intercepted"
    )]
    ServiceWithoutSelector {
        /// The Service.
        service: String,
        /// The namespace.
        namespace: String,
    },

    /// Several Services select the workload and none was chosen.
    #[error(
        "several Services select {workload}: {}; set `service` to one of them",
        list(services)
    )]
    AmbiguousService {
        /// `kind/name` of the workload.
        workload: String,
        /// The Services selecting it.
        services: Vec<String>,
    },

    /// The named Service exists but does not select the workload.
    #[error(
        "Service `{service}` does not select the pods of {workload}; Services that do: {}",
        list(selecting)
    )]
    ServiceDoesNotSelect {
        /// The Service asked for.
        service: String,
        /// `kind/name` of the workload.
        workload: String,
        /// The Services that do select it.
        selecting: Vec<String>,
    },

    /// The Service declares no ports.
    #[error("Service `{service}` declares no ports, so there is nothing to intercept")]
    ServiceWithoutPorts {
        /// The Service.
        service: String,
    },

    /// The Service has several ports and none was chosen.
    #[error(
        "Service `{service}` has several ports ({}); choose one in `port` as `LOCAL:NAME` or `LOCAL:NUMBER`",
        list(ports)
    )]
    AmbiguousPort {
        /// The Service.
        service: String,
        /// Its ports as `name/port`.
        ports: Vec<String>,
    },

    /// The port identifier matches no port of the Service.
    #[error(
        "Service `{service}` has no port `{port}`; its ports are: {}",
        list(ports)
    )]
    PortNotFound {
        /// The Service.
        service: String,
        /// The identifier asked for.
        port: String,
        /// Its ports as `name/port`.
        ports: Vec<String>,
    },

    /// The Service's named targetPort is not declared by any container.
    #[error(
        "Service `{service}` targets port `{target_port}` by name, but no container of {workload} declares a port with that name"
    )]
    TargetPortNotFound {
        /// The Service.
        service: String,
        /// The named targetPort.
        target_port: String,
        /// `kind/name` of the workload.
        workload: String,
    },

    /// The pod template has no container to attach the agent to.
    #[error("{workload} has no containers")]
    NoContainer {
        /// `kind/name` of the workload.
        workload: String,
    },

    /// A tpr annotation on the workload cannot be read (edited by hand?).
    #[error(
        "annotation `{annotation}` on {workload} is not valid ({cause}); remove it by hand or restore the workload from its manifest"
    )]
    BadAnnotation {
        /// `kind/name` of the workload.
        workload: String,
        /// The annotation.
        annotation: &'static str,
        /// Why it cannot be parsed.
        cause: String,
    },

    /// The API server returned an object this client cannot read.
    #[error("{workload} as returned by the API server cannot be read: {cause}")]
    BadObject {
        /// `kind/name` of the workload.
        workload: String,
        /// The parse error.
        cause: String,
    },

    /// The workload changed between tpr's read and write.
    #[error(
        "{workload} was changed by someone else while tpr was updating it; run the command again"
    )]
    Conflict {
        /// `kind/name` of the workload.
        workload: String,
    },

    /// The namespace's Pod Security level forbids the init container that
    /// redirected ports need; found before anything was changed.
    #[error(
        "namespace `{namespace}` enforces the `{level}` Pod Security Standard, which forbids the NET_ADMIN init container tpr needs to redirect port {port} of {workload} (the Service's targetPort is a number, or the Service is headless); nothing was changed. Instead, name the container port and set the Service's targetPort to that name (on a Service with a cluster IP): tpr then swaps port names and needs no privileges"
    )]
    PodSecurity {
        /// The namespace.
        namespace: String,
        /// The enforced level (`baseline` or `restricted`).
        level: String,
        /// `kind/name` of the workload.
        workload: String,
        /// The app port that would be redirected.
        port: u16,
    },

    /// A pod of the rollout cannot start; waiting longer would not help.
    #[error("rollout of {workload} is stuck: pod {pod}: {problem}; {rollback}")]
    Stuck {
        /// `kind/name` of the workload.
        workload: String,
        /// The pod that shows the problem.
        pod: String,
        /// The pod's own reason and message.
        problem: Box<super::PodProblem>,
        /// What was done about the template.
        rollback: Rollback,
    },

    /// The rollout did not finish in time.
    #[error("rollout of {workload} did not finish in {waited:?} (last state: {last}); {rollback}")]
    RolloutTimeout {
        /// `kind/name` of the workload.
        workload: String,
        /// How long tpr waited.
        waited: Duration,
        /// The last progress message.
        last: String,
        /// What was done about the template.
        rollback: Rollback,
    },

    /// Ctrl-C or SIGTERM while the rollout ran.
    #[error("interrupted while rolling out {workload}; {rollback}")]
    Interrupted {
        /// `kind/name` of the workload.
        workload: String,
        /// What was done about the template.
        rollback: Rollback,
    },

    /// The Deployment controller gave up (progressDeadlineSeconds).
    #[error("rollout of {workload} failed: {message}; {rollback}")]
    RolloutFailed {
        /// `kind/name` of the workload.
        workload: String,
        /// The controller's message.
        message: String,
        /// What was done about the template.
        rollback: Rollback,
    },

    /// No ready pod runs the current agent.
    #[error("no ready pod of {workload} in namespace `{namespace}` runs the tpr agent{}; run `tpr up` to install it", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    NoAgentPod {
        /// `kind/name` of the workload.
        workload: String,
        /// The namespace.
        namespace: String,
        /// What was found instead.
        detail: Option<String>,
    },

    /// The port-forward to a pod failed.
    #[error("port-forward to pod {pod} port {port} in namespace `{namespace}` failed: {cause}")]
    PortForward {
        /// The pod.
        pod: String,
        /// The pod port.
        port: u16,
        /// The namespace.
        namespace: String,
        /// What failed.
        cause: String,
    },
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a request was going: turns a kube error into a [`K8sError`] that
/// names the verb and resource (for RBAC) or the cluster (when unreachable).
#[derive(Clone, Copy)]
pub(crate) struct Request<'a> {
    pub verb: &'static str,
    pub resource: &'static str,
    pub namespace: &'a str,
    pub url: &'a str,
    pub context: &'a str,
}

impl Request<'_> {
    fn unreachable(&self, cause: String) -> K8sError {
        K8sError::Unreachable {
            url: self.url.to_string(),
            context: self.context.to_string(),
            cause,
        }
    }

    pub(crate) fn error(&self, err: kube::Error) -> K8sError {
        match err {
            kube::Error::Api(status) if status.code == 403 => {
                // The API server says which verb and resource it checked
                // (a WebSocket port-forward is checked as `get`, not
                // `create`); fall back to the request's own.
                let (verb, resource) = refused(&status.message)
                    .unwrap_or_else(|| (self.verb.to_string(), self.resource.to_string()));
                K8sError::Forbidden {
                    verb,
                    resource,
                    namespace: self.namespace.to_string(),
                    message: status.message.clone(),
                }
            }
            kube::Error::Api(status) => K8sError::Api {
                verb: self.verb,
                resource: self.resource,
                namespace: self.namespace.to_string(),
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
            kube::Error::HyperError(e) => self.unreachable(chain(&e)),
            kube::Error::Service(e) => self.unreachable(chain(e.as_ref())),
            e => K8sError::Client {
                verb: self.verb,
                resource: self.resource,
                namespace: self.namespace.to_string(),
                cause: chain(&e),
            },
        }
    }
}

/// The verb and resource of an RBAC refusal, from the API server's message:
/// `... cannot get resource "pods/portforward" in API group "" in the namespace ...`.
fn refused(message: &str) -> Option<(String, String)> {
    let rest = &message[message.find(" cannot ")? + 8..];
    let (verb, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("resource \"")?;
    let (resource, rest) = rest.split_once('"')?;
    let group = rest
        .strip_prefix(" in API group \"")
        .and_then(|g| g.split_once('"'))
        .map(|(g, _)| g)
        .unwrap_or("");
    let resource = match group {
        "" => resource.to_string(),
        g => match resource.split_once('/') {
            Some((r, sub)) => format!("{r}.{g}/{sub}"),
            None => format!("{resource}.{g}"),
        },
    };
    Some((verb.to_string(), resource))
}

/// An error and its causes on one line, without repeating a cause that the
/// outer message already includes.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// True for a 404 answer (idempotent deletes and lookups).
pub(crate) fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 404)
}

/// True for a 409 answer (resourceVersion precondition failed).
pub(crate) fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
mod tests;
