//! What the namespace's admission lets in, read before anything changes:
//! the Pod Security Standard it enforces. `baseline` and `restricted` forbid
//! the NET_ADMIN init container of redirected ports (numeric targetPorts,
//! headless Services); the agent container itself meets `restricted`.

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;

use super::template::{AgentPort, PortMode};
use super::{Cluster, K8sError, Workload};

/// The Namespace label that sets the enforced Pod Security level.
const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// The namespace's enforced Pod Security level, if it sets one and tpr may
/// read Namespaces (a cluster-scoped right that namespace-scoped RBAC does
/// not give: then the rollout's own FailedCreate check reports a refusal).
pub(crate) async fn enforce_level(cluster: &Cluster, namespace: &str) -> Option<String> {
    let api: Api<Namespace> = Api::all(cluster.client().clone());
    let ns = api.get(namespace).await.ok()?;
    ns.metadata.labels?.get(ENFORCE_LABEL).cloned()
}

/// Refuses, before any change, a template whose `ports` need the init
/// container when `level` forbids it.
pub(crate) fn check(
    level: Option<&str>,
    ports: &[AgentPort],
    w: &Workload,
) -> Result<(), K8sError> {
    let Some(level) = level.filter(|l| matches!(*l, "baseline" | "restricted")) else {
        return Ok(());
    };
    match ports.iter().find(|p| p.mode == PortMode::Redirect) {
        None => Ok(()),
        Some(port) => Err(K8sError::PodSecurity {
            namespace: w.metadata().namespace.clone().unwrap_or_default(),
            level: level.to_owned(),
            workload: w.display(),
            port: port.app_port,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::WorkloadKind;

    fn port(mode: PortMode) -> AgentPort {
        AgentPort {
            container: "app".into(),
            app_port: 8080,
            agent_port: 9901,
            mode,
            http: false,
        }
    }

    #[test]
    fn only_redirects_under_baseline_or_restricted_are_refused() {
        let w = Workload::from_raw(
            WorkloadKind::Deployment,
            serde_json::from_value(serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "hello", "namespace": "shop"},
                "spec": {"selector": {}, "template": {}}
            }))
            .unwrap(),
        )
        .unwrap();
        let swap = [port(PortMode::Swap {
            name: "http".into(),
        })];
        let redirect = [port(PortMode::Redirect)];
        for level in [
            None,
            Some("privileged"),
            Some("baseline"),
            Some("restricted"),
        ] {
            assert!(check(level, &swap, &w).is_ok(), "{level:?}");
        }
        for level in [None, Some("privileged")] {
            assert!(check(level, &redirect, &w).is_ok(), "{level:?}");
        }
        for level in ["baseline", "restricted"] {
            let e = check(Some(level), &redirect, &w).unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{level}`"))
                    && e.contains("port 8080")
                    && e.contains("nothing was changed"),
                "{e}"
            );
        }
    }
}
