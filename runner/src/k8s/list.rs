//! The workloads of a namespace and whether each can be intercepted.

use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{DynamicObject, ListParams};
use serde::Serialize;

use super::resolve::{list_services, selecting_services};
use super::template::AgentPort;
use super::{Cluster, K8sError, Workload, WorkloadKind};

/// Whether a workload can be intercepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Interceptable {
    /// Services with ports select its pods.
    Yes {
        /// The Services, sorted.
        services: Vec<String>,
    },
    /// It cannot be intercepted.
    No {
        /// Why not.
        reason: String,
    },
}

/// One line of `tpr list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadSummary {
    /// Its kind.
    pub kind: WorkloadKind,
    /// Its name.
    pub name: String,
    /// Whether it can be intercepted, or why not.
    pub interceptable: Interceptable,
    /// Whether the agent is installed.
    pub agent_installed: bool,
    /// The agent's ports, when installed.
    pub agent_ports: Vec<AgentPort>,
    /// Ready replicas.
    pub ready: i32,
    /// Desired replicas.
    pub replicas: i32,
}

/// The Deployments, StatefulSets and bare ReplicaSets of the namespace,
/// sorted by kind and name. ReplicaSets a Deployment owns are not listed.
pub async fn workloads(cluster: &Cluster, namespace: &str) -> Result<Vec<Workload>, K8sError> {
    let mut out = Vec::new();
    for kind in WorkloadKind::ALL {
        let api: Api<DynamicObject> =
            Api::namespaced_with(cluster.client().clone(), namespace, &kind.api_resource());
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| cluster.request("list", kind.resource(), namespace).error(e))?;
        for raw in list.items {
            let w = Workload::from_raw(kind, raw)?;
            if !w.is_owned() {
                out.push(w);
            }
        }
    }
    out.sort_by(|a, b| (a.kind(), a.name()).cmp(&(b.kind(), b.name())));
    Ok(out)
}

/// Lists the workloads of the namespace with what `tpr list` shows.
pub async fn list(cluster: &Cluster, namespace: &str) -> Result<Vec<WorkloadSummary>, K8sError> {
    let workloads = workloads(cluster, namespace).await?;
    let services = list_services(cluster, namespace).await?;
    Ok(workloads.iter().map(|w| summarize(w, &services)).collect())
}

/// One workload's summary from objects already read.
pub fn summarize(w: &Workload, services: &[Service]) -> WorkloadSummary {
    // The user's latest template, as resolution reads it.
    let interceptable = match super::drift::user_pod_template(w) {
        Err(e) => Interceptable::No {
            reason: e.to_string(),
        },
        Ok(template) => {
            let selecting = selecting_services(services, &template);
            let with_ports: Vec<String> = selecting
                .iter()
                .filter(|s| {
                    s.spec
                        .as_ref()
                        .and_then(|s| s.ports.as_ref())
                        .is_some_and(|p| !p.is_empty())
                })
                .map(|s| s.metadata.name.clone().unwrap_or_default())
                .collect();
            if !with_ports.is_empty() {
                Interceptable::Yes {
                    services: with_ports,
                }
            } else if selecting.is_empty() {
                Interceptable::No {
                    reason: "no Service selects its pods".into(),
                }
            } else {
                Interceptable::No {
                    reason: "the Services selecting it declare no ports".into(),
                }
            }
        }
    };
    WorkloadSummary {
        kind: w.kind(),
        name: w.name().into(),
        interceptable,
        agent_installed: w.has_agent(),
        agent_ports: w.agent_ports().unwrap_or_default(),
        ready: w.ready_replicas(),
        replicas: w.replicas(),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::Deployment;
    use serde_json::json;

    use super::*;

    fn dep(labels: serde_json::Value) -> Workload {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "w"},
            "spec": {"replicas": 2, "selector": {}, "template": {"metadata": {"labels": labels}}},
            "status": {"readyReplicas": 1}
        }))
        .unwrap();
        d.into()
    }

    fn svc(name: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"selector": {"app": "w"}, "ports": ports}}),
        )
        .unwrap()
    }

    #[test]
    fn summary_says_why_a_workload_cannot_be_intercepted() {
        let s = summarize(
            &dep(json!({"app": "w"})),
            &[
                svc("b", json!([{"port": 80}])),
                svc("a", json!([{"port": 81}])),
            ],
        );
        assert_eq!(
            s.interceptable,
            Interceptable::Yes {
                services: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!((s.ready, s.replicas, s.agent_installed), (1, 2, false));
        let s = summarize(
            &dep(json!({"app": "other"})),
            &[svc("a", json!([{"port": 80}]))],
        );
        assert_eq!(
            s.interceptable,
            Interceptable::No {
                reason: "no Service selects its pods".into()
            }
        );
        let s = summarize(&dep(json!({"app": "w"})), &[svc("a", json!([]))]);
        assert!(
            matches!(s.interceptable, Interceptable::No { reason } if reason.contains("no ports"))
        );
    }
}
