//! Installing and removing the agent: compute the template, write it with a
//! resourceVersion precondition, roll it out, and put the previous template
//! back if the rollout fails, so nothing is left half-changed.

use std::collections::BTreeMap;

use super::drift::{user_pod_template, user_template};
use super::resolve::get_workload;
use super::rollout::{RolloutOptions, replace_stale_pods, roll_out, write};
use super::template::{
    AgentPort, AgentSpec, PortMode, PortRequest, covers, merge_ports, patch_template,
};
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
    let mut ports = Vec::new();
    // Only the init container of redirected ports is ever refused: read
    // the namespace's level (one more request) only when one is involved.
    let redirects = requests.iter().any(|r| r.mode == PortMode::Redirect)
        || workload
            .agent_ports()?
            .iter()
            .any(|p| p.mode == PortMode::Redirect);
    let level = match redirects {
        true => super::admission::enforce_level(cluster, &namespace(workload)).await,
        false => None,
    };
    let change = |w: &Workload| -> Result<Option<Change>, K8sError> {
        // The patch goes on top of the user's latest template, so a change
        // someone made since the install (a re-applied manifest, a new
        // image) is kept and becomes what `uninstall` restores.
        let original_json = user_template(w)?;
        let original = user_pod_template(w)?;
        let existing = w.agent_ports()?;
        ports = merge_ports(&original, &existing, requests, spec.grpc_port);
        if ports.is_empty() {
            return Ok(None);
        }
        let desired = patch_template(&original, spec, &ports, &w.display())?;
        let desired = serde_json::to_value(&desired).expect("a pod template serializes");
        let recorded = w.has_agent() && w.original_template_json()? == original_json;
        if recorded && existing == ports && covers(&w.template_json(), &desired) {
            return Ok(None);
        }
        super::admission::check(level.as_deref(), &ports, w)?;
        let mut annotations = w.metadata().annotations.clone().unwrap_or_default();
        annotations.insert(
            ANNOTATION_ORIGINAL_TEMPLATE.into(),
            serde_json::to_string(&original_json).expect("JSON serializes"),
        );
        let recorded = serde_json::to_string(&ports).expect("JSON serializes");
        annotations.insert(ANNOTATION_AGENT_PORTS.into(), recorded);
        Ok(Some(Change {
            template: desired,
            annotations,
        }))
    };
    let updated = update(cluster, workload, change).await?;
    let outcome = |changed| InstallOutcome {
        workload: workload.display(),
        changed,
        ports: ports.clone(),
    };
    let Some((before, written)) = updated else {
        return Ok(outcome(false));
    };
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
            // The rollback's pods are not the agent's: nobody is told.
            let opts = RolloutOptions {
                new_pods_ready: Default::default(),
                ..opts.clone()
            };
            let rollback = restore(cluster, &before, &opts).await;
            Err(e.into_error(before.display(), rollback))
        }
    }
}

/// A new pod template and workload annotations.
struct Change {
    template: serde_json::Value,
    annotations: BTreeMap<String, String>,
}

/// Read, compute, write, again on a conflict: controllers write the status
/// all the time, which moves the resourceVersion the write is conditioned
/// on. Each attempt computes from the fresh object, so a concurrent change
/// is kept, never overwritten. `None`: nothing to change. Otherwise the
/// object before the write and as written.
async fn update(
    cluster: &Cluster,
    w: &Workload,
    mut change: impl FnMut(&Workload) -> Result<Option<Change>, K8sError>,
) -> Result<Option<(Workload, Workload)>, K8sError> {
    let mut attempts = 0;
    loop {
        let before = fresh(cluster, w).await?;
        let Some(c) = change(&before)? else {
            return Ok(None);
        };
        match write(cluster, &before, c.template, c.annotations).await {
            Err(K8sError::Conflict { .. }) if attempts < 5 => attempts += 1,
            Err(e) => return Err(e),
            // The server found nothing to change.
            Ok(written)
                if written.metadata().resource_version == before.metadata().resource_version =>
            {
                return Ok(None);
            }
            Ok(written) => return Ok(Some((before, written))),
        }
    }
}

fn tpr_annotations(w: &Workload) -> impl Iterator<Item = (String, String)> {
    let all = w.metadata().annotations.clone().unwrap_or_default();
    all.into_iter()
        .filter(|(k, _)| k == ANNOTATION_ORIGINAL_TEMPLATE || k == ANNOTATION_AGENT_PORTS)
}

/// Writes back the template and annotations `before` had, then replaces
/// the pods where the controller would not; does not wait for readiness
/// (the previous template may not have been ready either).
async fn restore(cluster: &Cluster, before: &Workload, opts: &RolloutOptions) -> Rollback {
    let change = |now: &Workload| {
        // Others' annotations as they are now; tpr's as they were.
        let mut annotations = now.metadata().annotations.clone().unwrap_or_default();
        annotations.retain(|k, _| k != ANNOTATION_ORIGINAL_TEMPLATE && k != ANNOTATION_AGENT_PORTS);
        annotations.extend(tpr_annotations(before));
        Ok(Some(Change {
            template: before.template_json(),
            annotations,
        }))
    };
    let result = async {
        if let Some((_, written)) = update(cluster, before, change).await?
            && replace_on_restore(&written)
        {
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
    let change = |w: &Workload| {
        if !w.has_agent() {
            return Ok(None);
        }
        let mut annotations = w.metadata().annotations.clone().unwrap_or_default();
        annotations.remove(ANNOTATION_ORIGINAL_TEMPLATE);
        annotations.remove(ANNOTATION_AGENT_PORTS);
        // The user's latest template: the recorded one unless someone
        // changed the template since.
        Ok(Some(Change {
            template: user_template(w)?,
            annotations,
        }))
    };
    let Some((_, written)) = update(cluster, w, change).await? else {
        return Ok(UninstallOutcome {
            workload: w.display(),
            changed: false,
        });
    };
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
