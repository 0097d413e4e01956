//! Someone else's change to a workload that carries the agent: a `kubectl
//! apply` of the team's manifest (which renames the app's port back), a
//! GitOps sync that replaces the template (which drops the agent), a
//! `kubectl set image`. tpr has no admission webhook to re-inject the
//! agent, so it compares the live template with what the agent patch of
//! that template would be, and [`install`](super::install) re-applies the
//! patch on top of the user's template, recording it as the new original.
//!
//! [`strip`] undoes [`patch_template`]: the current template without the
//! agent is the user's latest template, which is what `uninstall` restores
//! and what the patch is re-applied to.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

use super::template::{AgentPort, AgentSpec, PortMode, covers, patch_template, renamed_port};
use super::{AGENT_CONTAINER, AGENT_INIT_CONTAINER, K8sError, LABEL_AGENT, Workload};

/// How a workload's template differs from the agent patch of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// The agent container is gone (the template was replaced).
    AgentRemoved,
    /// The app's port took back the name the agent serves, so the Service
    /// reaches the app (a re-applied manifest).
    PortNamedBack { port: String },
    /// Something else of the agent patch is missing or different.
    PatchChanged,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::AgentRemoved => f.write_str("the agent container was removed"),
            Drift::PortNamedBack { port } => write!(
                f,
                "the app's port is named `{port}` again, so the Service reaches the app"
            ),
            Drift::PatchChanged => f.write_str("the agent's part of the template changed"),
        }
    }
}

/// The template without the agent: the agent and init containers and the
/// agent label removed, the app's swapped port names (and the probes and
/// hooks that name them) given back. JSON in, JSON out, so fields tpr does
/// not know survive.
pub fn strip(template: &Value, ports: &[AgentPort]) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(LABEL_AGENT);
    }
    let Some(spec) = t.get_mut("spec").and_then(Value::as_object_mut) else {
        return t;
    };
    // The names the agent took: recorded, and those its container declares
    // (an older install may not have recorded them).
    let mut swapped: Vec<&str> = ports
        .iter()
        .filter_map(|p| match &p.mode {
            PortMode::Swap { name } => Some(name.as_str()),
            PortMode::Redirect => None,
        })
        .collect();
    let agent_ports = spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("name").and_then(Value::as_str) == Some(AGENT_CONTAINER))
        .flat_map(|c| {
            c.get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect::<Vec<String>>();
    swapped.extend(agent_ports.iter().map(String::as_str));
    swapped.sort_unstable();
    swapped.dedup();
    let swapped: Vec<String> = swapped.into_iter().map(str::to_owned).collect();
    remove_named(spec, "containers", AGENT_CONTAINER);
    remove_named(spec, "initContainers", AGENT_INIT_CONTAINER);
    if spec
        .get("initContainers")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        spec.remove("initContainers");
    }
    // Only the agent ever names a port `tpr-...`: give each its name back.
    let containers = spec.get_mut("containers").and_then(Value::as_array_mut);
    for c in containers.into_iter().flatten() {
        for name in &swapped {
            rename_refs(c, &renamed_port(name), name);
        }
    }
    t
}

fn remove_named(spec: &mut serde_json::Map<String, Value>, list: &str, name: &str) {
    if let Some(items) = spec.get_mut(list).and_then(Value::as_array_mut) {
        items.retain(|c| c.get("name").and_then(Value::as_str) != Some(name));
    }
}

/// Renames port `from` to `to` in a container: its declared ports and every
/// probe or lifecycle hook that names it.
fn rename_refs(container: &mut Value, from: &str, to: &str) {
    let rename = |v: Option<&mut Value>| {
        if let Some(v) = v
            && v.as_str() == Some(from)
        {
            *v = Value::String(to.into());
        }
    };
    if let Some(ports) = container.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            rename(p.get_mut("name"));
        }
    }
    for path in [
        "/livenessProbe",
        "/readinessProbe",
        "/startupProbe",
        "/lifecycle/postStart",
        "/lifecycle/preStop",
    ] {
        if let Some(handler) = container.pointer_mut(path) {
            rename(handler.pointer_mut("/httpGet/port"));
            rename(handler.pointer_mut("/tcpSocket/port"));
        }
    }
}

/// The user's latest template of `w`: the current one without the agent.
pub fn user_template(w: &Workload) -> Result<Value, K8sError> {
    Ok(strip(&w.template_json(), &w.agent_ports()?))
}

/// [`user_template`], typed.
pub fn user_pod_template(w: &Workload) -> Result<PodTemplateSpec, K8sError> {
    typed(w, user_template(w)?)
}

fn typed(w: &Workload, template: Value) -> Result<PodTemplateSpec, K8sError> {
    serde_json::from_value(template).map_err(|e| K8sError::BadAnnotation {
        workload: w.display(),
        annotation: super::ANNOTATION_ORIGINAL_TEMPLATE,
        cause: e.to_string(),
    })
}

/// How `w` (installed by tpr) differs from the agent patch of its current
/// template; `None` when it carries the agent as installed.
pub fn check(w: &Workload, spec: &AgentSpec) -> Result<Option<Drift>, K8sError> {
    let ports = w.agent_ports()?;
    if !w.has_agent() || ports.is_empty() {
        return Ok(None);
    }
    let current = w.template_json();
    let user = typed(w, strip(&current, &ports))?;
    let desired = patch_template(&user, spec, &ports, &w.display())?;
    let desired = serde_json::to_value(&desired).expect("a pod template serializes");
    if covers(&current, &desired) {
        return Ok(None);
    }
    let containers = current
        .pointer("/spec/containers")
        .and_then(Value::as_array);
    let has = |name: &str| {
        containers
            .into_iter()
            .flatten()
            .any(|c| c.get("name").and_then(Value::as_str) == Some(name))
    };
    if !has(AGENT_CONTAINER) {
        return Ok(Some(Drift::AgentRemoved));
    }
    for port in &ports {
        if let PortMode::Swap { name } = &port.mode {
            let app_has_it = containers.into_iter().flatten().any(|c| {
                c.get("name").and_then(Value::as_str) == Some(port.container.as_str())
                    && c.get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .any(|p| p.get("name").and_then(Value::as_str) == Some(name))
            });
            if app_has_it {
                return Ok(Some(Drift::PortNamedBack { port: name.clone() }));
            }
        }
    }
    Ok(Some(Drift::PatchChanged))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::template::{PortRequest, merge_ports};
    use super::*;

    fn original() -> Value {
        json!({
            "metadata": {"labels": {"app": "hello"}, "annotations": {"x": "y"}},
            "spec": {
                "containers": [{
                    "name": "app",
                    "image": "hello:0.1.0",
                    "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9000}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
                    "lifecycle": {"preStop": {"tcpSocket": {"port": "http"}}},
                    "futureField": {"kept": true}
                }],
                "volumes": [{"name": "v", "emptyDir": {}}]
            }
        })
    }

    fn ports() -> Vec<AgentPort> {
        let typed = serde_json::from_value(original()).unwrap();
        let requests = [
            PortRequest {
                container: "app".into(),
                app_port: 8080,
                mode: PortMode::Swap {
                    name: "http".into(),
                },
                http: false,
            },
            PortRequest {
                container: "app".into(),
                app_port: 9000,
                mode: PortMode::Redirect,
                http: true,
            },
        ];
        merge_ports(&typed, &[], &requests, 9900)
    }

    fn patched(t: &Value) -> Value {
        let typed = serde_json::from_value(t.clone()).unwrap();
        let p =
            patch_template(&typed, &AgentSpec::default(), &ports(), "deployment/hello").unwrap();
        serde_json::to_value(p).unwrap()
    }

    #[test]
    fn strip_undoes_the_patch_exactly() {
        let stripped = strip(&patched(&original()), &ports());
        // `futureField` is not in k8s-openapi: the patch drops it, so compare
        // what the typed round trip keeps.
        let mut expected = original();
        expected["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("futureField");
        assert_eq!(stripped, expected);
    }

    #[test]
    fn strip_keeps_fields_it_does_not_know() {
        let mut current = patched(&original());
        current["spec"]["containers"][0]["futureField"] = json!({"kept": true});
        assert_eq!(strip(&current, &ports()), original());
    }

    fn workload(template: Value) -> Workload {
        let ports = serde_json::to_string(&ports()).unwrap();
        let raw = serde_json::from_value(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "hello", "namespace": "ns", "annotations": {
                super::super::ANNOTATION_ORIGINAL_TEMPLATE: original().to_string(),
                super::super::ANNOTATION_AGENT_PORTS: ports,
            }},
            "spec": {"selector": {"matchLabels": {"app": "hello"}}, "template": template}
        }))
        .unwrap();
        Workload::from_raw(super::super::WorkloadKind::Deployment, raw).unwrap()
    }

    #[test]
    fn an_intact_patch_is_no_drift_even_on_a_changed_image() {
        let spec = AgentSpec::default();
        assert_eq!(check(&workload(patched(&original())), &spec).unwrap(), None);
        // The user's own change under an intact agent is not drift: the
        // pods already run the agent (uninstall keeps the new image).
        let mut t = patched(&original());
        t["spec"]["containers"][0]["image"] = json!("hello:0.2.0");
        assert_eq!(check(&workload(t), &spec).unwrap(), None);
    }

    #[test]
    fn a_reapplied_manifest_and_a_replaced_template_are_drift() {
        let spec = AgentSpec::default();
        // kubectl apply: the app's port and probe are named `http` again.
        let mut applied = patched(&original());
        applied["spec"]["containers"][0]["ports"][0]["name"] = json!("http");
        assert_eq!(
            check(&workload(applied), &spec).unwrap(),
            Some(Drift::PortNamedBack {
                port: "http".into()
            })
        );
        // GitOps: the template as in git, no agent.
        assert_eq!(
            check(&workload(original()), &spec).unwrap(),
            Some(Drift::AgentRemoved)
        );
        // The init container (numeric port) removed.
        let mut no_init = patched(&original());
        no_init["spec"]
            .as_object_mut()
            .unwrap()
            .remove("initContainers");
        assert_eq!(
            check(&workload(no_init), &spec).unwrap(),
            Some(Drift::PatchChanged)
        );
    }
}
