//! The app container's volume mounts on the agent container: the same
//! volumes, read-only, under `/tpr/volumes<mountPath>`, so the kubelet
//! keeps the agent's view current (ConfigMap and Secret updates, token
//! rotation) and `subPath`, `items` and modes come out as the app sees
//! them. The agent learns each mount's path and volume kind from
//! `TPR_AGENT_VOLUMES`. The mounts live on the agent container only, so
//! removing the container (uninstall, `drift::strip`) removes them.

use k8s_openapi::api::core::v1::{Container, PodSpec, VolumeMount};
use tpr_schema::proto::mounts::{self, AUTOMOUNT_KIND, AUTOMOUNT_PATH, Mount, VOLUMES_ROOT};

use super::{ENV_PREFIX, prefix_refs};

/// The agent's mounts of the app's volumes, and the mounts as the agent is
/// told about them (`None`: the app mounts nothing).
pub(super) fn agent_mounts(pod: &PodSpec, app: &Container) -> (Vec<VolumeMount>, Option<String>) {
    let app_mounts = app.volume_mounts.as_deref().unwrap_or_default();
    let mut listed: Vec<Mount> = app_mounts
        .iter()
        .map(|m| Mount {
            path: m.mount_path.clone(),
            kind: volume_kind(pod, &m.name),
        })
        .collect();
    // The admission controller mounts the service-account token into every
    // container that has nothing at its path, the agent included: the
    // agent reads its own copy, which is the app's.
    if pod.automount_service_account_token != Some(false)
        && !app_mounts.iter().any(|m| m.mount_path == AUTOMOUNT_PATH)
    {
        listed.push(Mount {
            path: AUTOMOUNT_PATH.into(),
            kind: AUTOMOUNT_KIND.into(),
        });
    }
    let agent = app_mounts
        .iter()
        .map(|m| VolumeMount {
            name: m.name.clone(),
            mount_path: format!("{VOLUMES_ROOT}{}", m.mount_path),
            read_only: Some(true),
            sub_path: m.sub_path.clone(),
            // `$(VAR)` names the app's variables, which the agent has
            // under the prefix.
            sub_path_expr: m
                .sub_path_expr
                .as_deref()
                .map(|e| prefix_refs(e, ENV_PREFIX)),
            // Bidirectional propagation needs a privileged container; the
            // agent only reads.
            mount_propagation: None,
            recursive_read_only: None,
        })
        .collect();
    let env = (!listed.is_empty()).then(|| mounts::encode(&listed));
    (agent, env)
}

/// The volume source's field name (`configMap`, `persistentVolumeClaim`,
/// ...), read from the JSON form so every kind, current or future, has one.
fn volume_kind(pod: &PodSpec, name: &str) -> String {
    pod.volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .and_then(|v| serde_json::to_value(v).ok())
        .and_then(|v| v.as_object()?.keys().find(|k| *k != "name").cloned())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{AgentSpec, PortMode, PortRequest, merge_ports, patch_template};
    use crate::k8s::AGENT_CONTAINER;
    use crate::k8s::drift::strip;

    fn original() -> serde_json::Value {
        json!({
            "metadata": {"labels": {"app": "hello"}},
            "spec": {
                "containers": [{
                    "name": "app",
                    "image": "hello:0.1.0",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "volumeMounts": [
                        {"name": "config", "mountPath": "/etc/app"},
                        {"name": "config", "mountPath": "/etc/one.conf", "subPath": "one.conf"},
                        {"name": "tls", "mountPath": "/etc/tls", "readOnly": true},
                        {"name": "cache", "mountPath": "/cache", "subPathExpr": "$(POD)", "mountPropagation": "HostToContainer"},
                        {"name": "data", "mountPath": "/data"}
                    ]
                }],
                "volumes": [
                    {"name": "config", "configMap": {"name": "app", "items": [{"key": "a", "path": "a.conf"}]}},
                    {"name": "tls", "secret": {"secretName": "tls", "defaultMode": 288}},
                    {"name": "cache", "emptyDir": {}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}
                ]
            }
        })
    }

    fn patched(original: &serde_json::Value) -> (Vec<super::super::AgentPort>, serde_json::Value) {
        let typed = serde_json::from_value(original.clone()).unwrap();
        let ports = merge_ports(
            &typed,
            &[],
            &[PortRequest {
                container: "app".into(),
                app_port: 8080,
                mode: PortMode::Swap {
                    name: "http".into(),
                },
                http: false,
            }],
            9900,
        );
        let t = patch_template(&typed, &AgentSpec::default(), &ports, "deployment/hello").unwrap();
        (ports, serde_json::to_value(t).unwrap())
    }

    fn agent(t: &serde_json::Value) -> &serde_json::Value {
        t["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == AGENT_CONTAINER)
            .unwrap()
    }

    #[test]
    fn the_agent_mounts_the_apps_volumes_read_only_under_its_prefix() {
        let (_, t) = patched(&original());
        let agent = agent(&t);
        assert_eq!(
            agent["volumeMounts"],
            json!([
                {"name": "config", "mountPath": "/tpr/volumes/etc/app", "readOnly": true},
                {"name": "config", "mountPath": "/tpr/volumes/etc/one.conf", "readOnly": true, "subPath": "one.conf"},
                {"name": "tls", "mountPath": "/tpr/volumes/etc/tls", "readOnly": true},
                {"name": "cache", "mountPath": "/tpr/volumes/cache", "readOnly": true, "subPathExpr": "$(TPR_APP_POD)"},
                {"name": "data", "mountPath": "/tpr/volumes/data", "readOnly": true}
            ])
        );
        let env = agent["env"].as_array().unwrap();
        let volumes = env
            .iter()
            .find(|e| e["name"] == "TPR_AGENT_VOLUMES")
            .unwrap();
        assert_eq!(
            volumes["value"],
            "configMap:/etc/app,configMap:/etc/one.conf,secret:/etc/tls,emptyDir:/cache,\
             persistentVolumeClaim:/data,serviceAccountToken:/var/run/secrets/kubernetes.io/serviceaccount"
        );
        // The agent's settings stay together, ahead of the app's copy.
        let names: Vec<&str> = env.iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(names.last(), Some(&"TPR_APP_POD"));
        // Installing again computes the same template.
        assert_eq!(patched(&original()).1, t);
    }

    #[test]
    fn no_automounted_token_when_the_pod_declines_it_or_mounts_its_own() {
        let mut o = original();
        o["spec"]["automountServiceAccountToken"] = json!(false);
        let (_, t) = patched(&o);
        let env = agent(&t)["env"].as_array().unwrap().clone();
        let value = env
            .iter()
            .find(|e| e["name"] == "TPR_AGENT_VOLUMES")
            .unwrap()["value"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(!value.contains("serviceAccountToken"), "{value}");

        let mut o = original();
        o["spec"]["containers"][0]["volumeMounts"] = json!([]);
        o["spec"]["automountServiceAccountToken"] = json!(false);
        let (_, t) = patched(&o);
        let agent = agent(&t);
        assert!(agent.get("volumeMounts").is_none());
        assert!(
            !agent["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "TPR_AGENT_VOLUMES")
        );
    }

    #[test]
    fn uninstall_restores_the_template_with_volumes_exactly() {
        let (ports, t) = patched(&original());
        assert_eq!(strip(&t, &ports), original());
    }
}
