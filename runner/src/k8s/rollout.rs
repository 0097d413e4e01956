//! Writing a pod template and waiting until the pods run it: the
//! controller's own rollout for Deployments and rolling StatefulSets, pod
//! deletion for bare ReplicaSets and `OnDelete` StatefulSets. A pod that
//! cannot start (image, crash loop, scheduling), or cannot even be created
//! (admission, ResourceQuota, LimitRange), ends the wait with its own
//! reason instead of a timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{DeleteParams, DynamicObject, ListParams, PostParams};

use super::diagnose::{PodProblem, diagnose_pod};
use super::error::{is_conflict, is_not_found};
use super::workload::selector_string;
use super::{Cluster, K8sError, Progress, Workload};

/// How long a finished rollout waits for its old pods to be gone.
const OLD_PODS_WAIT: Duration = Duration::from_secs(10);

/// How long and how often to wait.
#[derive(Debug, Clone)]
pub struct RolloutOptions {
    /// Give up after this long (the template is then rolled back).
    pub timeout: Duration,
    /// How often to look at the workload and its pods.
    pub poll: Duration,
    /// Stops the wait (Ctrl-C): the template is then rolled back.
    pub cancel: tokio_util::sync::CancellationToken,
    /// Cancelled once the new pods are all ready and only old pods are
    /// still stopping: from then on they serve, and a caller may connect
    /// to them while the rollout waits for the old ones to go.
    pub new_pods_ready: tokio_util::sync::CancellationToken,
}

impl Default for RolloutOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(180),
            poll: Duration::from_millis(500),
            cancel: Default::default(),
            new_pods_ready: Default::default(),
        }
    }
}

/// Most rollouts of one pod finish within seconds: look every 100 ms that
/// long (a few small reads), so a fresh start does not wait a poll period
/// at each of its steps (new pod ready, old pod stopped); then every `poll`.
const EAGER: Duration = Duration::from_secs(8);
const EAGER_POLL: Duration = Duration::from_millis(100);

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn owned_by(pod: &Pod, uid: &str) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

fn uid(w: &Workload) -> String {
    w.metadata().uid.clone().unwrap_or_default()
}

/// Replaces the workload's pod template and annotations with a PUT whose
/// resourceVersion is the one read, so a concurrent change is a conflict and
/// not a silent overwrite. Returns the workload as the server stored it.
pub(crate) async fn write(
    cluster: &Cluster,
    w: &Workload,
    template: serde_json::Value,
    annotations: BTreeMap<String, String>,
) -> Result<Workload, K8sError> {
    let kind = w.kind();
    let ns = w.metadata().namespace.clone().unwrap_or_default();
    let mut raw: DynamicObject = w.raw().clone();
    raw.data["spec"]["template"] = template;
    raw.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    let api: Api<DynamicObject> =
        Api::namespaced_with(cluster.client().clone(), &ns, &kind.api_resource());
    match api.replace(w.name(), &PostParams::default(), &raw).await {
        Ok(obj) => Workload::from_raw(kind, obj),
        Err(e) if is_conflict(&e) => Err(K8sError::Conflict {
            workload: w.display(),
        }),
        Err(e) => Err(cluster.request("update", kind.resource(), &ns).error(e)),
    }
}

/// Why a rollout did not complete.
pub(crate) enum RolloutError {
    Stuck { pod: String, problem: PodProblem },
    Timeout { waited: Duration, last: String },
    Failed(String),
    Interrupted,
    Api(K8sError),
}

impl From<K8sError> for RolloutError {
    fn from(e: K8sError) -> Self {
        RolloutError::Api(e)
    }
}

impl RolloutError {
    pub(crate) fn into_error(self, workload: String, rollback: super::Rollback) -> K8sError {
        match self {
            RolloutError::Stuck { pod, problem } => K8sError::Stuck {
                workload,
                pod,
                problem: Box::new(problem),
                rollback,
            },
            RolloutError::Timeout { waited, last } => K8sError::RolloutTimeout {
                workload,
                waited,
                last,
                rollback,
            },
            RolloutError::Failed(message) => K8sError::RolloutFailed {
                workload,
                message,
                rollback,
            },
            RolloutError::Interrupted => K8sError::Interrupted { workload, rollback },
            RolloutError::Api(e) => e,
        }
    }
}

/// After a template write: replaces the pods where the controller does not,
/// then waits until every replica runs the new template and is ready.
///
/// `replace` deletes the pods that do not run the new template once the
/// controller has seen it: needed for a bare ReplicaSet and an `OnDelete`
/// StatefulSet, and when rolling a StatefulSet back (its controller does not
/// replace a pod stuck on a broken revision by itself).
pub(crate) async fn roll_out(
    cluster: &Cluster,
    written: &Workload,
    replace: bool,
    opts: &RolloutOptions,
    progress: &dyn Progress,
) -> Result<(), RolloutError> {
    let start = Instant::now();
    let ns = written.metadata().namespace.clone().unwrap_or_default();
    let mut replaced: Option<BTreeSet<String>> = None;
    let mut done_at: Option<Instant> = None;
    let mut last = format!("rolling out {}", written.display());
    let old_failed_creates = failed_creates(cluster, written).await;
    loop {
        let w = super::resolve::get_workload(cluster, written.kind(), &ns, written.name())
            .await?
            .ok_or_else(|| K8sError::WorkloadNotFound {
                name: written.name().into(),
                kind: Some(written.kind()),
                namespace: ns.clone(),
            })?;
        let observed = observed_generation(&w) >= w.metadata().generation.unwrap_or(0);
        if observed && replace && replaced.is_none() {
            // Only once the controller has seen the new template: pods it
            // recreates before that would still run the old one.
            replaced = Some(delete_stale_pods(cluster, &w).await?);
        }
        let pods = pods_of(cluster, &w).await?;
        let state = state(&w, &pods, replaced.as_ref(), cluster).await?;
        let stopping = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
            .count();
        let finished = observed && state.done && (!replace || replaced.is_some());
        last = if finished && stopping > 0 {
            format!(
                "rolling out {}: {stopping} old pod(s) stopping",
                w.display()
            )
        } else {
            format!(
                "rolling out {}: {}/{} pods ready",
                w.display(),
                state.ready,
                w.replicas()
            )
        };
        progress.message(&last);
        if let Some(msg) = state.failed.filter(|_| observed) {
            return Err(RolloutError::Failed(msg));
        }
        if let Some(msg) = new_failed_create(cluster, &w, &old_failed_creates).await {
            return Err(RolloutError::Failed(msg));
        }
        // Before the controller has seen the template, the "new" pods may
        // still be the old ones: their problems are not this rollout's.
        for pod in state.new_pods.iter().filter(|_| observed) {
            if let Some(problem) = diagnose_pod(pod) {
                return Err(RolloutError::Stuck {
                    pod: pod.metadata.name.clone().unwrap_or_default(),
                    problem,
                });
            }
        }
        if finished {
            opts.new_pods_ready.cancel();
            // An old pod that is still stopping may still be in the
            // Service's rules for a moment: a connection sent there after
            // its network is gone hangs. Wait for it a while (bounded: an
            // app may drain for long, and traffic to the agent flows).
            let waited = *done_at.get_or_insert_with(Instant::now);
            if stopping == 0 || waited.elapsed() >= OLD_PODS_WAIT {
                return Ok(());
            }
        }
        if start.elapsed() >= opts.timeout {
            return Err(RolloutError::Timeout {
                waited: opts.timeout,
                last,
            });
        }
        let poll = if start.elapsed() < EAGER {
            opts.poll.min(EAGER_POLL)
        } else {
            opts.poll
        };
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = opts.cancel.cancelled() => return Err(RolloutError::Interrupted),
        }
    }
}

/// Waits until the controller has seen the template, then deletes the pods
/// that do not run it, without waiting for the new ones.
pub(crate) async fn replace_stale_pods(
    cluster: &Cluster,
    written: &Workload,
    opts: &RolloutOptions,
) -> Result<(), K8sError> {
    let ns = written.metadata().namespace.clone().unwrap_or_default();
    let start = Instant::now();
    loop {
        let Some(w) =
            super::resolve::get_workload(cluster, written.kind(), &ns, written.name()).await?
        else {
            return Ok(());
        };
        if observed_generation(&w) >= w.metadata().generation.unwrap_or(0) {
            delete_stale_pods(cluster, &w).await?;
            return Ok(());
        }
        if start.elapsed() >= opts.timeout {
            return Ok(());
        }
        tokio::time::sleep(opts.poll).await;
    }
}

fn observed_generation(w: &Workload) -> i64 {
    w.raw()
        .data
        .get("status")
        .and_then(|s| s.get("observedGeneration"))
        .and_then(|g| g.as_i64())
        .unwrap_or(0)
}

/// The pods the workload's selector picks that its controller owns (for a
/// Deployment: owned by one of its ReplicaSets).
pub(crate) async fn pods_of(cluster: &Cluster, w: &Workload) -> Result<Vec<Pod>, K8sError> {
    let ns = w.metadata().namespace.clone().unwrap_or_default();
    let Some(sel) = w.selector() else {
        return Ok(Vec::new());
    };
    let lp = ListParams::default().labels(&selector_string(sel));
    let pods: Api<Pod> = Api::namespaced(cluster.client().clone(), &ns);
    let pods = pods
        .list(&lp)
        .await
        .map_err(|e| cluster.request("list", "pods", &ns).error(e))?
        .items;
    let owners: BTreeSet<String> = if w.deployment().is_some() {
        replicasets_of(cluster, w)
            .await?
            .iter()
            .filter_map(|r| r.metadata.uid.clone())
            .collect()
    } else {
        BTreeSet::from([uid(w)])
    };
    Ok(pods
        .into_iter()
        .filter(|p| owners.iter().any(|o| owned_by(p, o)))
        .collect())
}

async fn replicasets_of(cluster: &Cluster, w: &Workload) -> Result<Vec<ReplicaSet>, K8sError> {
    let ns = w.metadata().namespace.clone().unwrap_or_default();
    let Some(sel) = w.selector() else {
        return Ok(Vec::new());
    };
    let api: Api<ReplicaSet> = Api::namespaced(cluster.client().clone(), &ns);
    let lp = ListParams::default().labels(&selector_string(sel));
    let all = api
        .list(&lp)
        .await
        .map_err(|e| cluster.request("list", "replicasets.apps", &ns).error(e))?
        .items;
    let owner = uid(w);
    Ok(all
        .into_iter()
        .filter(|r| {
            r.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == owner && o.controller == Some(true))
        })
        .collect())
}

/// Deletes the pods that do not run the current template; returns their UIDs.
async fn delete_stale_pods(cluster: &Cluster, w: &Workload) -> Result<BTreeSet<String>, K8sError> {
    let ns = w.metadata().namespace.clone().unwrap_or_default();
    let update_revision = sts_status(w, "updateRevision");
    let api: Api<Pod> = Api::namespaced(cluster.client().clone(), &ns);
    let mut deleted = BTreeSet::new();
    for pod in pods_of(cluster, w).await? {
        if let Some(rev) = &update_revision
            && pod_label(&pod, "controller-revision-hash") == Some(rev.as_str())
        {
            continue;
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(cluster.request("delete", "pods", &ns).error(e)),
        }
        deleted.extend(pod.metadata.uid.clone());
    }
    Ok(deleted)
}

fn pod_label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn sts_status(w: &Workload, field: &str) -> Option<String> {
    w.statefulset()?;
    w.raw()
        .data
        .get("status")?
        .get(field)?
        .as_str()
        .map(String::from)
}

struct State {
    /// Pods of the new template (those whose problems matter).
    new_pods: Vec<Pod>,
    ready: usize,
    done: bool,
    failed: Option<String>,
}

async fn state(
    w: &Workload,
    pods: &[Pod],
    replaced: Option<&BTreeSet<String>>,
    cluster: &Cluster,
) -> Result<State, K8sError> {
    let live = |p: &&Pod| p.metadata.deletion_timestamp.is_none();
    let replicas = usize::try_from(w.replicas()).unwrap_or(0);
    if let Some(d) = w.deployment() {
        let status = d.status.clone().unwrap_or_default();
        let failed = status.conditions.iter().flatten().find_map(|c| {
            (c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
                .then(|| {
                    c.message
                        .clone()
                        .unwrap_or_else(|| "progress deadline exceeded".into())
                })
        });
        let paused = d.spec.as_ref().and_then(|s| s.paused) == Some(true);
        let failed = failed.or_else(|| {
            paused.then(|| {
                format!(
                    "the deployment is paused, so it will not roll out; resume it with `kubectl -n {} rollout resume deployment/{}`",
                    w.metadata().namespace.as_deref().unwrap_or_default(),
                    w.name()
                )
            })
        });
        let revision = annotation(w.metadata(), "deployment.kubernetes.io/revision");
        let new_rs = replicasets_of(cluster, w).await?.into_iter().find(|r| {
            revision.is_some()
                && annotation(&r.metadata, "deployment.kubernetes.io/revision") == revision
        });
        let hash = new_rs.as_ref().and_then(|r| {
            r.metadata
                .labels
                .as_ref()?
                .get("pod-template-hash")
                .cloned()
        });
        let failed = failed.or_else(|| new_rs.as_ref().and_then(replica_failure));
        let new_pods: Vec<Pod> = pods
            .iter()
            .filter(live)
            .filter(|p| hash.is_some() && pod_label(p, "pod-template-hash") == hash.as_deref())
            .cloned()
            .collect();
        let ready = new_pods.iter().filter(|p| is_ready(p)).count();
        let n = |v: Option<i32>| usize::try_from(v.unwrap_or(0)).unwrap_or(0);
        let done = n(status.updated_replicas) == replicas
            && n(status.replicas) == replicas
            && n(status.available_replicas) == replicas;
        return Ok(State {
            new_pods,
            ready,
            done,
            failed,
        });
    }
    let new_pods: Vec<Pod> = match (sts_status(w, "updateRevision"), replaced) {
        (Some(rev), _) => pods
            .iter()
            .filter(live)
            .filter(|p| pod_label(p, "controller-revision-hash") == Some(rev.as_str()))
            .cloned()
            .collect(),
        (None, Some(old)) => pods
            .iter()
            .filter(live)
            .filter(|p| !p.metadata.uid.as_ref().is_some_and(|u| old.contains(u)))
            .cloned()
            .collect(),
        (None, None) => pods.iter().filter(live).cloned().collect(),
    };
    let ready = new_pods.iter().filter(|p| is_ready(p)).count();
    let stale_left = pods.iter().filter(live).count() > new_pods.len();
    Ok(State {
        ready,
        done: ready == replicas && !stale_left,
        new_pods,
        failed: w.replicaset().and_then(replica_failure),
    })
}

/// Why a ReplicaSet cannot create its pods (admission, ResourceQuota,
/// LimitRange), from its ReplicaFailure condition.
fn replica_failure(rs: &ReplicaSet) -> Option<String> {
    let conditions = rs.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
        .map(|c| {
            let message = c.message.as_deref().unwrap_or("no message");
            format!("its pods cannot be created: {message}")
        })
}

/// A StatefulSet has no such condition: its controller's FailedCreate
/// events, by name, with what tells a repeated one apart (its count and
/// last time). Empty when tpr may not list events.
async fn failed_creates(cluster: &Cluster, w: &Workload) -> BTreeMap<String, (String, String)> {
    if w.statefulset().is_none() {
        return BTreeMap::new();
    }
    let ns = w.metadata().namespace.clone().unwrap_or_default();
    let api: Api<Event> = Api::namespaced(cluster.client().clone(), &ns);
    let fields = format!("involvedObject.uid={},reason=FailedCreate", uid(w));
    let Ok(events) = api.list(&ListParams::default().fields(&fields)).await else {
        return BTreeMap::new();
    };
    events
        .items
        .into_iter()
        .map(|e| {
            let seen = format!("{:?} {:?} {:?}", e.count, e.last_timestamp, e.series);
            let name = e.metadata.name.unwrap_or_default();
            (name, (seen, e.message.unwrap_or_default()))
        })
        .collect()
}

/// A FailedCreate event of the StatefulSet that is not in `before`.
async fn new_failed_create(
    cluster: &Cluster,
    w: &Workload,
    before: &BTreeMap<String, (String, String)>,
) -> Option<String> {
    let now = failed_creates(cluster, w).await;
    now.into_iter()
        .find(|(name, (seen, _))| before.get(name).is_none_or(|(old, _)| old != seen))
        .map(|(_, (_, message))| format!("its pods cannot be created: {message}"))
}

fn annotation(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<String> {
    meta.annotations.as_ref()?.get(key).cloned()
}
