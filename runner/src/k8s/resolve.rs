//! From what the project file names (workload, service, port) to what the
//! installer needs: the workload object, the Service and its port, the app
//! container and port, and whether to swap port names or redirect.

use k8s_openapi::api::core::v1::{PodTemplateSpec, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{DynamicObject, ListParams};

use super::error::is_not_found;
use super::template::{PortMode, PortRequest};
use super::{AGENT_CONTAINER, Cluster, K8sError, Workload, WorkloadKind};

/// A Service port, by name or number: the project file's own type.
pub use tpr_schema::PortId;

/// What one intercept of the project file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptTarget {
    /// The workload's name.
    pub workload: String,
    /// Its kind, when the file gives it.
    pub kind: Option<WorkloadKind>,
    /// The namespace.
    pub namespace: String,
    /// The Service, needed when several select the workload.
    pub service: Option<String>,
    /// The Service port, needed when the Service has several.
    pub port: Option<PortId>,
}

/// The chosen Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortRef {
    /// Its name, if it has one.
    pub name: Option<String>,
    /// Its number.
    pub port: u16,
    /// Its targetPort (defaults to `port`).
    pub target_port: IntOrString,
}

impl ServicePortRef {
    /// How the user names this port: its name, else its number.
    pub fn identifier(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.port.to_string())
    }
}

/// Everything needed to install the agent for one intercept.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The workload.
    pub workload: Workload,
    /// The Service's name.
    pub service: String,
    /// Whether the Service is headless (clusterIP None).
    pub headless: bool,
    /// The Service port.
    pub service_port: ServicePortRef,
    /// The app container that serves the port.
    pub container: String,
    /// The container port the Service targets: intercepts register on it.
    pub container_port: u16,
    /// Port swap or redirect.
    pub mode: PortMode,
}

impl Resolved {
    /// The port to add to the agent; `http` when an http intercept wants it.
    pub fn port_request(&self, http: bool) -> PortRequest {
        PortRequest {
            container: self.container.clone(),
            app_port: self.container_port,
            mode: self.mode.clone(),
            http,
        }
    }
}

/// Finds the workload and its Service in the cluster, then [`resolve_in`].
pub async fn resolve(cluster: &Cluster, target: &InterceptTarget) -> Result<Resolved, K8sError> {
    let kinds = match target.kind {
        Some(k) => vec![k],
        None => WorkloadKind::ALL.to_vec(),
    };
    let mut candidates = Vec::new();
    for kind in kinds {
        if let Some(w) = get_workload(cluster, kind, &target.namespace, &target.workload).await? {
            candidates.push(w);
        }
    }
    let services = list_services(cluster, &target.namespace).await?;
    resolve_in(target, candidates, &services)
}

/// Reads one workload; `None` when it does not exist.
pub async fn get_workload(
    cluster: &Cluster,
    kind: WorkloadKind,
    namespace: &str,
    name: &str,
) -> Result<Option<Workload>, K8sError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(cluster.client().clone(), namespace, &kind.api_resource());
    match api.get(name).await {
        Ok(raw) => Workload::from_raw(kind, raw).map(Some),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(cluster.request("get", kind.resource(), namespace).error(e)),
    }
}

pub(crate) async fn list_services(
    cluster: &Cluster,
    namespace: &str,
) -> Result<Vec<Service>, K8sError> {
    let api: Api<Service> = Api::namespaced(cluster.client().clone(), namespace);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| cluster.request("list", "services", namespace).error(e))
}

/// Whether the Service's selector picks the pods of this template.
pub fn selects(service: &Service, template: &PodTemplateSpec) -> bool {
    let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    if selector.is_empty() {
        return false;
    }
    let labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn service_name(s: &Service) -> String {
    s.metadata.name.clone().unwrap_or_default()
}

/// The names of the Services selecting the template, sorted.
pub fn selecting_services<'a>(
    services: &'a [Service],
    template: &PodTemplateSpec,
) -> Vec<&'a Service> {
    let mut v: Vec<&Service> = services.iter().filter(|s| selects(s, template)).collect();
    v.sort_by_key(|s| service_name(s));
    v
}

fn port_label(p: &ServicePort) -> String {
    format!("{}/{}", p.name.as_deref().unwrap_or("-"), p.port)
}

/// Resolution over objects already read: `candidates` are the workloads of
/// the target's name (one per kind found), `services` those of the namespace.
pub fn resolve_in(
    target: &InterceptTarget,
    candidates: Vec<Workload>,
    services: &[Service],
) -> Result<Resolved, K8sError> {
    let ns = &target.namespace;
    let workload = match candidates.len() {
        0 => {
            return Err(K8sError::WorkloadNotFound {
                name: target.workload.clone(),
                kind: target.kind,
                namespace: ns.clone(),
            });
        }
        1 => candidates.into_iter().next().expect("one"),
        _ => {
            return Err(K8sError::AmbiguousWorkload {
                name: target.workload.clone(),
                namespace: ns.clone(),
                kinds: candidates.iter().map(Workload::kind).collect(),
            });
        }
    };
    // Resolve against the user's template (without the agent): the
    // installed agent has taken the Service's port name.
    let template = super::drift::user_pod_template(&workload)?;
    let selecting = selecting_services(services, &template);
    let selecting_names = || {
        selecting
            .iter()
            .map(|s| service_name(s))
            .collect::<Vec<_>>()
    };
    let service = match &target.service {
        Some(name) => {
            let Some(s) = services
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(name))
            else {
                return Err(K8sError::ServiceNotFound {
                    service: name.clone(),
                    workload: workload.display(),
                    namespace: ns.clone(),
                    selecting: selecting_names(),
                });
            };
            if s.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_none_or(|s| s.is_empty())
            {
                return Err(K8sError::ServiceWithoutSelector {
                    service: name.clone(),
                    namespace: ns.clone(),
                });
            }
            if !selects(s, &template) {
                return Err(K8sError::ServiceDoesNotSelect {
                    service: name.clone(),
                    workload: workload.display(),
                    selecting: selecting_names(),
                });
            }
            s
        }
        None => match selecting.as_slice() {
            [] => {
                return Err(K8sError::NoService {
                    workload: workload.display(),
                    namespace: ns.clone(),
                });
            }
            [one] => *one,
            _ => {
                return Err(K8sError::AmbiguousService {
                    workload: workload.display(),
                    services: selecting_names(),
                });
            }
        },
    };
    let name = service_name(service);
    let spec = service.spec.clone().unwrap_or_default();
    let ports = spec.ports.clone().unwrap_or_default();
    let labels = || ports.iter().map(port_label).collect::<Vec<_>>();
    let port = match &target.port {
        None => match ports.as_slice() {
            [] => return Err(K8sError::ServiceWithoutPorts { service: name }),
            [one] => one,
            _ => {
                return Err(K8sError::AmbiguousPort {
                    service: name,
                    ports: labels(),
                });
            }
        },
        Some(id) => {
            let found = ports.iter().find(|p| match id {
                PortId::Name(n) => p.name.as_deref() == Some(n),
                PortId::Number(n) => p.port == i32::from(*n),
            });
            match found {
                Some(p) => p,
                None => {
                    return Err(K8sError::PortNotFound {
                        service: name,
                        port: id.to_string(),
                        ports: labels(),
                    });
                }
            }
        }
    };
    let service_port = ServicePortRef {
        name: port.name.clone(),
        port: u16::try_from(port.port).unwrap_or_default(),
        target_port: port
            .target_port
            .clone()
            .unwrap_or(IntOrString::Int(port.port)),
    };
    let containers = template
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let app_containers = || containers.iter().filter(|c| c.name != AGENT_CONTAINER);
    let declared = |pred: &dyn Fn(&k8s_openapi::api::core::v1::ContainerPort) -> bool| {
        app_containers().find_map(|c| {
            c.ports
                .iter()
                .flatten()
                .find(|p| pred(p))
                .map(|p| (c.name.clone(), p.container_port))
        })
    };
    let (container, container_port) = match &service_port.target_port {
        IntOrString::String(tp) => {
            declared(&|p| p.name.as_deref() == Some(tp)).ok_or_else(|| {
                K8sError::TargetPortNotFound {
                    service: name.clone(),
                    target_port: tp.clone(),
                    workload: workload.display(),
                }
            })?
        }
        // A number need not be declared: the app may listen without saying so;
        // then it is the first container's.
        IntOrString::Int(n) => match declared(&|p| p.container_port == *n) {
            Some(found) => found,
            None => {
                let first = app_containers()
                    .next()
                    .ok_or_else(|| K8sError::NoContainer {
                        workload: workload.display(),
                    })?;
                (first.name.clone(), *n)
            }
        },
    };
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let mode = match (&service_port.target_port, headless) {
        (IntOrString::String(n), false) => PortMode::Swap { name: n.clone() },
        _ => PortMode::Redirect,
    };
    Ok(Resolved {
        workload,
        service: name,
        headless,
        service_port,
        container,
        container_port: u16::try_from(container_port).unwrap_or_default(),
        mode,
    })
}

#[cfg(test)]
mod tests;
