//! Why a pod of a rollout will never become ready, from its status: the
//! difference between "wait a little longer" and "stop and say why".

use std::fmt;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// Why a pod cannot start, in the pod's own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodProblem {
    /// The container, when the problem is one container's.
    pub container: Option<String>,
    /// The reason (`ImagePullBackOff`, `CrashLoopBackOff`, `Unschedulable`, ...).
    pub reason: String,
    /// The message that came with it.
    pub message: String,
}

impl fmt::Display for PodProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = &self.container {
            write!(f, "container {c}: ")?;
        }
        write!(f, "{}", self.reason)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// Waiting reasons that do not go away by waiting.
const STUCK_WAITING: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
];

/// What keeps this pod from ever becoming ready, if anything does.
pub fn diagnose_pod(pod: &Pod) -> Option<PodProblem> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() == Some("Failed") {
        return Some(PodProblem {
            container: None,
            reason: status.reason.clone().unwrap_or_else(|| "Failed".into()),
            message: status.message.clone().unwrap_or_default(),
        });
    }
    for c in status.conditions.iter().flatten() {
        if c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
        {
            return Some(PodProblem {
                container: None,
                reason: "Unschedulable".into(),
                message: c.message.clone().unwrap_or_default(),
            });
        }
    }
    let init = status
        .init_container_statuses
        .iter()
        .flatten()
        .map(|s| (s, true));
    let main = status
        .container_statuses
        .iter()
        .flatten()
        .map(|s| (s, false));
    init.chain(main)
        .find_map(|(s, is_init)| container_problem(s, is_init))
}

fn container_problem(s: &ContainerStatus, is_init: bool) -> Option<PodProblem> {
    let state = s.state.as_ref()?;
    if let Some(w) = &state.waiting {
        let reason = w.reason.clone().unwrap_or_default();
        if STUCK_WAITING.contains(&reason.as_str()) {
            let mut message = w.message.clone().unwrap_or_default();
            if let Some(t) = s.last_state.as_ref().and_then(|l| l.terminated.as_ref()) {
                let why = [t.reason.as_deref(), t.message.as_deref().map(str::trim)]
                    .into_iter()
                    .flatten()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(": ");
                message = format!(
                    "last exit code {}{}{}",
                    t.exit_code,
                    if why.is_empty() { "" } else { ": " },
                    why
                );
            }
            return Some(PodProblem {
                container: Some(s.name.clone()),
                reason,
                message,
            });
        }
    }
    // An init container must succeed; one that failed will fail again.
    if is_init
        && let Some(t) = &state.terminated
        && t.exit_code != 0
    {
        return Some(PodProblem {
            container: Some(s.name.clone()),
            reason: t.reason.clone().unwrap_or_else(|| "Error".into()),
            message: format!(
                "init container exited with code {}{}",
                t.exit_code,
                t.message
                    .as_deref()
                    .map(|m| format!(": {}", m.trim()))
                    .unwrap_or_default()
            ),
        });
    }
    None
}

#[cfg(test)]
mod tests;
