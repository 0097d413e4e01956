//! The pod template with the agent in it (docs/agent-contract.md): a pure
//! function of the original template, the agent settings and the ports, so
//! that installing again computes the same template and uninstalling only
//! needs the original.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource, ExecAction,
    LifecycleHandler, ObjectFieldSelector, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

use super::{
    AGENT_CONTAINER, AGENT_INIT_CONTAINER, AGENT_UID_GID, DEFAULT_GRPC_PORT, ENV_PREFIX,
    FIRST_AGENT_PORT, K8sError, LABEL_AGENT,
};

/// How the agent is put in front of the app's port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum PortMode {
    /// Named targetPort: the agent takes the port's name, the app's port is
    /// renamed `tpr-<name>`. No privileges needed.
    Swap {
        /// The port name the Service targets.
        name: String,
    },
    /// Numeric targetPort or headless Service: the init container redirects
    /// the app port to the agent port with iptables.
    Redirect,
}

/// One port the agent forwards; the list is kept in the workload's
/// `tpr.dev/agent-ports` annotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentPort {
    /// The app container that listens on `app_port`.
    pub container: String,
    /// The container port the Service targets (intercepts are registered on it).
    pub app_port: u16,
    /// Where the agent listens in the pod.
    pub agent_port: u16,
    /// Swap or redirect.
    #[serde(flatten)]
    pub mode: PortMode,
    /// Made for http intercepts: the agent routes HTTP request by request
    /// even while no intercept holds the port. Once set it stays until
    /// uninstall, so developers whose files differ never undo each other.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http: bool,
}

/// The agent's image and settings, from the project file's `agent` table.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    /// Image reference.
    pub image: String,
    /// `imagePullPolicy` of the agent and init containers.
    pub pull_policy: String,
    /// The agent's gRPC port (127.0.0.1 in the pod).
    pub grpc_port: u16,
    /// Resources of the agent and init containers.
    pub resources: Option<ResourceRequirements>,
}

impl Default for AgentSpec {
    fn default() -> Self {
        Self {
            image: format!("tpr-agent:{}", env!("CARGO_PKG_VERSION")),
            pull_policy: "IfNotPresent".into(),
            grpc_port: DEFAULT_GRPC_PORT,
            resources: None,
        }
    }
}

/// A port to add to the agent, as resolution found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRequest {
    /// The app container.
    pub container: String,
    /// The container port the Service targets.
    pub app_port: u16,
    /// Swap or redirect.
    pub mode: PortMode,
    /// Wanted by an http intercept.
    pub http: bool,
}

/// The agent's ports after adding `requests` to `existing`: existing ports
/// keep their agent port; new ones get the lowest free port from 9901 on,
/// skipping every port the pod declares and the gRPC port. A port wanted
/// both ways becomes a redirect, which serves both kinds of Service; a port
/// any http intercept wants is marked http.
pub fn merge_ports(
    original: &PodTemplateSpec,
    existing: &[AgentPort],
    requests: &[PortRequest],
    grpc_port: u16,
) -> Vec<AgentPort> {
    let mut ports = existing.to_vec();
    let mut used: BTreeSet<u16> = declared_ports(original);
    used.insert(grpc_port);
    used.extend(ports.iter().map(|p| p.agent_port));
    for req in requests {
        if let Some(p) = ports
            .iter_mut()
            .find(|p| p.container == req.container && p.app_port == req.app_port)
        {
            if req.mode == PortMode::Redirect {
                p.mode = PortMode::Redirect;
            }
            p.http |= req.http;
            continue;
        }
        let agent_port = (FIRST_AGENT_PORT..=u16::MAX)
            .find(|p| !used.contains(p))
            .expect("a free port");
        used.insert(agent_port);
        ports.push(AgentPort {
            container: req.container.clone(),
            app_port: req.app_port,
            agent_port,
            mode: req.mode.clone(),
            http: req.http,
        });
    }
    ports
}

fn declared_ports(t: &PodTemplateSpec) -> BTreeSet<u16> {
    let Some(spec) = &t.spec else {
        return BTreeSet::new();
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect()
}

/// The name the app's port gets when the agent takes its name: `tpr-<name>`,
/// cut to the 15 characters a port name may have.
pub fn renamed_port(name: &str) -> String {
    let mut s: String = format!("tpr-{name}").chars().take(15).collect();
    while s.ends_with('-') {
        s.pop();
    }
    s
}

/// The original template with the agent added for `ports` (non-empty).
/// `workload` is `kind/name`, reported by the agent.
pub fn patch_template(
    original: &PodTemplateSpec,
    spec: &AgentSpec,
    ports: &[AgentPort],
    workload: &str,
) -> Result<PodTemplateSpec, K8sError> {
    let no_container = || K8sError::NoContainer {
        workload: workload.to_string(),
    };
    let mut t = original.clone();
    t.metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(LABEL_AGENT.into(), "1".into());
    let pod = t.spec.as_mut().ok_or_else(no_container)?;
    let app_name = ports
        .first()
        .map(|p| p.container.clone())
        .ok_or_else(no_container)?;

    for port in ports {
        if let PortMode::Swap { name } = &port.mode {
            let c = pod
                .containers
                .iter_mut()
                .find(|c| c.name == port.container)
                .ok_or_else(no_container)?;
            swap_port_name(c, name, &renamed_port(name));
        }
    }

    let app = pod
        .containers
        .iter()
        .find(|c| c.name == app_name)
        .ok_or_else(no_container)?;
    let mut agent = agent_container(app, spec, ports, workload);
    let (volume_mounts, volumes_env) = mounts::agent_mounts(pod, app);
    agent.volume_mounts = (!volume_mounts.is_empty()).then_some(volume_mounts);
    if let Some(value) = volumes_env {
        let env = agent.env.get_or_insert_with(Vec::new);
        // Beside the agent's other settings, before the app's copy.
        let at = env
            .iter()
            .take_while(|e| e.name.starts_with("TPR_AGENT_"))
            .count();
        env.insert(at, plain(tpr_schema::proto::mounts::VOLUMES_VAR, value));
    }
    pod.containers.retain(|c| c.name != AGENT_CONTAINER);
    pod.containers.push(agent);

    let redirects: Vec<String> = ports
        .iter()
        .filter(|p| p.mode == PortMode::Redirect)
        .map(|p| format!("{}={}", p.app_port, p.agent_port))
        .collect();
    if let Some(inits) = pod.init_containers.as_mut() {
        inits.retain(|c| c.name != AGENT_INIT_CONTAINER);
    }
    if !redirects.is_empty() {
        pod.init_containers
            .get_or_insert_with(Vec::new)
            .push(init_container(spec, redirects.join(",")));
    }
    Ok(t)
}

/// Renames the container's port `old` to `new`, and every probe or
/// lifecycle hook that refers to it by name, so the kubelet still reaches
/// the app (and not the agent) and the pod becomes ready.
fn swap_port_name(c: &mut Container, old: &str, new: &str) {
    for p in c.ports.iter_mut().flatten() {
        if p.name.as_deref() == Some(old) {
            p.name = Some(new.to_string());
        }
    }
    let rename = |port: &mut IntOrString| {
        if matches!(port, IntOrString::String(s) if s == old) {
            *port = IntOrString::String(new.to_string());
        }
    };
    for probe in [
        &mut c.liveness_probe,
        &mut c.readiness_probe,
        &mut c.startup_probe,
    ]
    .into_iter()
    .flatten()
    {
        rename_probe(probe, &rename);
    }
    if let Some(l) = c.lifecycle.as_mut() {
        for h in [&mut l.post_start, &mut l.pre_stop].into_iter().flatten() {
            rename_handler(h, &rename);
        }
    }
}

// gRPC probes take a number only (the API has no named port there), so only
// httpGet and tcpSocket can name a port.
fn rename_probe(p: &mut Probe, rename: &impl Fn(&mut IntOrString)) {
    if let Some(h) = p.http_get.as_mut() {
        rename(&mut h.port);
    }
    if let Some(t) = p.tcp_socket.as_mut() {
        rename(&mut t.port);
    }
}

fn rename_handler(h: &mut LifecycleHandler, rename: &impl Fn(&mut IntOrString)) {
    if let Some(g) = h.http_get.as_mut() {
        rename(&mut g.port);
    }
    if let Some(t) = h.tcp_socket.as_mut() {
        rename(&mut t.port);
    }
}

fn plain(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    }
}

fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..Default::default()
        }),
    }
}

fn agent_container(
    app: &Container,
    spec: &AgentSpec,
    ports: &[AgentPort],
    workload: &str,
) -> Container {
    let mut forwards: Vec<&AgentPort> = ports.iter().collect();
    forwards.sort_by_key(|p| p.agent_port);
    let forwards = forwards
        .iter()
        .map(|p| {
            let options = if p.http { "/http" } else { "" };
            format!("{}={}{options}", p.agent_port, p.app_port)
        })
        .collect::<Vec<_>>();
    let mut env = vec![
        plain("TPR_AGENT_GRPC_PORT", spec.grpc_port.to_string()),
        plain("TPR_AGENT_FORWARDS", forwards.join(",")),
        plain("TPR_AGENT_ENV_PREFIX", ENV_PREFIX.into()),
        plain("TPR_AGENT_WORKLOAD", workload.into()),
        field("TPR_AGENT_POD_NAME", "metadata.name"),
        field("TPR_AGENT_NAMESPACE", "metadata.namespace"),
    ];
    env.extend(app.env.iter().flatten().map(|e| copy_env_var(e, &app.name)));
    let env_from: Vec<EnvFromSource> = app
        .env_from
        .iter()
        .flatten()
        .map(|e| EnvFromSource {
            prefix: Some(format!("{ENV_PREFIX}{}", e.prefix.as_deref().unwrap_or(""))),
            ..e.clone()
        })
        .collect();
    let container_ports = ports
        .iter()
        .map(|p| ContainerPort {
            container_port: p.agent_port.into(),
            name: match &p.mode {
                PortMode::Swap { name } => Some(name.clone()),
                PortMode::Redirect => None,
            },
            protocol: Some("TCP".into()),
            ..Default::default()
        })
        .collect();
    Container {
        name: AGENT_CONTAINER.into(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(spec.pull_policy.clone()),
        env: Some(env),
        env_from: (!env_from.is_empty()).then_some(env_from),
        ports: Some(container_ports),
        resources: spec.resources.clone(),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["/tpr-agent".into(), "ready".into()]),
            }),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(AGENT_UID_GID),
            run_as_group: Some(AGENT_UID_GID),
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".into()]),
            }),
            // With the above, what the `restricted` Pod Security Standard
            // asks of every container.
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn init_container(spec: &AgentSpec, redirects: String) -> Container {
    Container {
        name: AGENT_INIT_CONTAINER.into(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(spec.pull_policy.clone()),
        args: Some(vec!["init".into()]),
        // A failing init step explains itself in the pod status, which is
        // what a stuck rollout reports.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        env: Some(vec![plain("TPR_AGENT_REDIRECTS", redirects)]),
        resources: spec.resources.clone(),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The app's env entry as the agent's copy: prefixed name, `$(VAR)`
/// references rewritten, `resourceFieldRef` pinned to the app container so
/// it reports the app's limits, not the agent's.
fn copy_env_var(e: &EnvVar, app: &str) -> EnvVar {
    let mut value_from = e.value_from.clone();
    if let Some(r) = value_from
        .as_mut()
        .and_then(|v| v.resource_field_ref.as_mut())
        && r.container_name.as_deref().unwrap_or("").is_empty()
    {
        r.container_name = Some(app.into());
    }
    EnvVar {
        name: format!("{ENV_PREFIX}{}", e.name),
        value: e.value.as_deref().map(|v| prefix_refs(v, ENV_PREFIX)),
        value_from,
    }
}

/// Rewrites `$(NAME)` to `$(<prefix>NAME)` the way the kubelet reads them:
/// `$$` is an escaped `$` and is left alone, as is anything that is not a
/// complete reference.
pub fn prefix_refs(value: &str, prefix: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push_str("$$");
            rest = after;
        } else if let Some(end) = tail.strip_prefix("$(").and_then(|t| t.find(')')) {
            out.push_str("$(");
            out.push_str(prefix);
            out.push_str(&tail[2..2 + end + 1]);
            rest = &tail[2 + end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Whether `current` already has everything `desired` sets: the server adds
/// defaults to what tpr wrote (terminationMessagePath, probe periods, ...),
/// so equality would never hold. Lists must match in length, so a removed
/// container, env entry or port counts as a change.
pub fn covers(current: &serde_json::Value, desired: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (current, desired) {
        (Value::Object(c), Value::Object(d)) => d
            .iter()
            .all(|(k, dv)| c.get(k).is_some_and(|cv| covers(cv, dv))),
        (Value::Array(c), Value::Array(d)) => {
            c.len() == d.len() && c.iter().zip(d).all(|(c, d)| covers(c, d))
        }
        (c, d) => c == d,
    }
}

mod mounts;

#[cfg(test)]
mod tests;
