//! Installing and removing the agent: compute the template, write it with a
//! resourceVersion precondition, roll it out, and put the previous template
//! back if the rollout fails, so nothing is left half-changed.

use std::collections::BTreeMap;

use super::resolve::{Resolved, get_workload};
use super::rollout::{RolloutOptions, replace_stale_pods, roll_out, write};
use super::template::{AgentPort, AgentSpec, PortRequest, covers, merge_ports, patch_template};
use super::{
    ANNOTATION_AGENT_PORTS, ANNOTATION_ORIGINAL_TEMPLATE, Cluster, K8sError, Progress, Rollback,
    Workload, WorkloadKind,
};

/// What `install` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOutcome {
    /// `kind/name`.
    pub workload: String,
    /// False when the agent was already installed with these ports and settings.
    pub changed: bool,
    /// The agent's ports now.
    pub ports: Vec<AgentPort>,
}

/// What `uninstall` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UninstallOutcome {
    /// `kind/name`.
    pub workload: String,
    /// False when the agent was not installed (nothing to do).
    pub changed: bool,
}

fn namespace(w: &Workload) -> String {
    w.metadata().namespace.clone().unwrap_or_default()
}

async fn fresh(cluster: &Cluster, w: &Workload) -> Result<Workload, K8sError> {
    let ns = namespace(w);
    get_workload(cluster, w.kind(), &ns, w.name())
        .await?
        .ok_or_else(|| K8sError::WorkloadNotFound {
            name: w.name().into(),
            kind: Some(w.kind()),
            namespace: ns,
        })
}

/// Makes the workload run the agent for `requests` (plus the ports it
/// already forwards) and waits until its pods run it. A no-op when the
/// agent is already there with the same ports and settings. On a failed
/// rollout the previous template is written back and the error says so.
pub async fn install(
    cluster: &Cluster,
    workload: &Workload,
    requests: &[PortRequest],
    spec: &AgentSpec,
    opts: &RolloutOptions,
    progress: &dyn Progress,
) -> Result<InstallOutcome, K8sError> {
    let before = fresh(cluster, workload).await?;
    let original_json = before.original_template_json()?;
    let original = before.original_template()?;
    let existing = before.agent_ports()?;
    let ports = merge_ports(&original, &existing, requests, spec.grpc_port);
    if ports.is_empty() {
        return Ok(InstallOutcome {
            workload: before.display(),
            changed: false,
            ports,
        });
    }
    let desired = patch_template(&original, spec, &ports, &before.display())?;
    let desired_json = serde_json::to_value(&desired).expect("a pod template serializes");
    let outcome = |changed| InstallOutcome {
        workload: before.display(),
        changed,
        ports: ports.clone(),
    };
    if before.has_agent() && existing == ports && covers(&before.template_json(), &desired_json) {
        return Ok(outcome(false));
    }
    let mut annotations = before.metadata().annotations.clone().unwrap_or_default();
    annotations
        .entry(ANNOTATION_ORIGINAL_TEMPLATE.into())
        .or_insert_with(|| serde_json::to_string(&original_json).expect("JSON serializes"));
    annotations.insert(
        ANNOTATION_AGENT_PORTS.into(),
        serde_json::to_string(&ports).expect("JSON serializes"),
    );
    let written = write(cluster, &before, desired_json, annotations).await?;
    if written.metadata().resource_version == before.metadata().resource_version {
        // The server found nothing to change.
        return Ok(outcome(false));
    }
    match roll_out(
        cluster,
        &written,
        written.pods_need_replacing(),
        opts,
        progress,
    )
    .await
    {
        Ok(()) => Ok(outcome(true)),
        Err(e) => {
            progress.message(&format!("rolling back {}", before.display()));
            let rollback = restore(cluster, &before, opts).await;
            Err(e.into_error(before.display(), rollback))
        }
    }
}

/// Installs the agent for every resolved intercept, one install per
/// workload with all of its ports, in the order the workloads first appear.
pub async fn install_resolved(
    cluster: &Cluster,
    resolved: &[Resolved],
    spec: &AgentSpec,
    opts: &RolloutOptions,
    progress: &dyn Progress,
) -> Result<Vec<InstallOutcome>, K8sError> {
    let mut groups: Vec<(&Workload, Vec<PortRequest>)> = Vec::new();
    for r in resolved {
        let same = |w: &Workload| {
            w.kind() == r.workload.kind()
                && w.name() == r.workload.name()
                && w.metadata().namespace == r.workload.metadata().namespace
        };
        match groups.iter_mut().find(|(w, _)| same(w)) {
            Some((_, reqs)) => reqs.push(r.port_request()),
            None => groups.push((&r.workload, vec![r.port_request()])),
        }
    }
    let mut out = Vec::new();
    for (w, reqs) in groups {
        out.push(install(cluster, w, &reqs, spec, opts, progress).await?);
    }
    Ok(out)
}

/// Writes back the template and annotations `before` had, then replaces
/// the pods where the controller would not; does not wait for readiness
/// (the previous template may not have been ready either).
async fn restore(cluster: &Cluster, before: &Workload, opts: &RolloutOptions) -> Rollback {
    let result = async {
        let now = fresh(cluster, before).await?;
        let annotations = before.metadata().annotations.clone().unwrap_or_default();
        let written = write(cluster, &now, before.template_json(), annotations).await?;
        if replace_on_restore(&written) {
            replace_stale_pods(cluster, &written, opts).await?;
        }
        Ok::<_, K8sError>(())
    }
    .await;
    match result {
        Ok(()) => Rollback::Restored,
        Err(e) => Rollback::Failed(e.to_string()),
    }
}

/// Whether going back to an earlier template needs tpr to delete pods: a
/// StatefulSet keeps a pod stuck on a broken revision until it is deleted.
fn replace_on_restore(w: &Workload) -> bool {
    w.pods_need_replacing() || w.kind() == WorkloadKind::StatefulSet
}

/// Finds a workload by name (kind given or detected) for uninstall.
async fn find(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    kind: Option<WorkloadKind>,
) -> Result<Workload, K8sError> {
    let kinds = kind
        .map(|k| vec![k])
        .unwrap_or_else(|| WorkloadKind::ALL.to_vec());
    let mut found = Vec::new();
    for k in kinds {
        found.extend(get_workload(cluster, k, namespace, name).await?);
    }
    // Of several with the name, the one with the agent is meant.
    if found.len() > 1 {
        let with_agent: Vec<Workload> = found.iter().filter(|w| w.has_agent()).cloned().collect();
        if with_agent.len() == 1 {
            found = with_agent;
        }
    }
    match found.len() {
        0 => Err(K8sError::WorkloadNotFound {
            name: name.into(),
            kind,
            namespace: namespace.into(),
        }),
        1 => Ok(found.remove(0)),
        _ => Err(K8sError::AmbiguousWorkload {
            name: name.into(),
            namespace: namespace.into(),
            kinds: found.iter().map(Workload::kind).collect(),
        }),
    }
}

/// Removes the agent: puts the recorded template back exactly, removes the
/// annotations and waits for the rollout. Not installed: success, `changed`
/// false.
pub async fn uninstall(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    kind: Option<WorkloadKind>,
    opts: &RolloutOptions,
    progress: &dyn Progress,
) -> Result<UninstallOutcome, K8sError> {
    let w = find(cluster, namespace, name, kind).await?;
    uninstall_workload(cluster, &w, opts, progress).await
}

/// [`uninstall`] for a workload already read.
pub async fn uninstall_workload(
    cluster: &Cluster,
    w: &Workload,
    opts: &RolloutOptions,
    progress: &dyn Progress,
) -> Result<UninstallOutcome, K8sError> {
    if !w.has_agent() {
        return Ok(UninstallOutcome {
            workload: w.display(),
            changed: false,
        });
    }
    let original = w.original_template_json()?;
    let mut annotations: BTreeMap<String, String> =
        w.metadata().annotations.clone().unwrap_or_default();
    annotations.remove(ANNOTATION_ORIGINAL_TEMPLATE);
    annotations.remove(ANNOTATION_AGENT_PORTS);
    let written = write(cluster, w, original, annotations).await?;
    roll_out(
        cluster,
        &written,
        replace_on_restore(&written),
        opts,
        progress,
    )
    .await
    .map_err(|e| e.into_error(w.display(), Rollback::Uninstalled))?;
    Ok(UninstallOutcome {
        workload: w.display(),
        changed: true,
    })
}

/// Uninstalls the agent from every workload of the namespace that has it.
pub async fn uninstall_all(
    cluster: &Cluster,
    namespace: &str,
    opts: &RolloutOptions,
    progress: &dyn Progress,
) -> Result<Vec<UninstallOutcome>, K8sError> {
    let mut out = Vec::new();
    for w in super::list::workloads(cluster, namespace).await? {
        if w.has_agent() {
            out.push(uninstall_workload(cluster, &w, opts, progress).await?);
        }
    }
    Ok(out)
}
