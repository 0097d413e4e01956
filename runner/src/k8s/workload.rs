//! The three kinds of workload tpr can patch, read as the server returned
//! them (raw JSON, so that writes keep fields this client does not know)
//! and as typed objects for the computations.

use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{ApiResource, DynamicObject};
use serde::Serialize;

use super::template::AgentPort;
use super::{ANNOTATION_AGENT_PORTS, ANNOTATION_ORIGINAL_TEMPLATE, K8sError};

/// Deployment, ReplicaSet or StatefulSet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 ReplicaSet.
    ReplicaSet,
    /// apps/v1 StatefulSet.
    StatefulSet,
}

impl WorkloadKind {
    /// Every kind, in the order tpr looks them up.
    pub const ALL: [WorkloadKind; 3] = [Self::Deployment, Self::ReplicaSet, Self::StatefulSet];

    /// The API kind (`Deployment`).
    pub fn kind(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::ReplicaSet => "ReplicaSet",
            Self::StatefulSet => "StatefulSet",
        }
    }

    /// The resource with its group, as RBAC names it (`deployments.apps`).
    pub fn resource(self) -> &'static str {
        match self {
            Self::Deployment => "deployments.apps",
            Self::ReplicaSet => "replicasets.apps",
            Self::StatefulSet => "statefulsets.apps",
        }
    }

    pub(crate) fn api_resource(self) -> ApiResource {
        match self {
            Self::Deployment => ApiResource::erase::<Deployment>(&()),
            Self::ReplicaSet => ApiResource::erase::<ReplicaSet>(&()),
            Self::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind().to_ascii_lowercase())
    }
}

impl FromStr for WorkloadKind {
    type Err = String;

    /// Accepts the kind in any case, its plural and kubectl's short names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "deployment" | "deployments" | "deploy" => Ok(Self::Deployment),
            "replicaset" | "replicasets" | "rs" => Ok(Self::ReplicaSet),
            "statefulset" | "statefulsets" | "sts" => Ok(Self::StatefulSet),
            _ => Err(format!(
                "unknown workload kind `{s}`; expected Deployment, ReplicaSet or StatefulSet"
            )),
        }
    }
}

#[derive(Debug, Clone)]
enum Typed {
    Deployment(Deployment),
    ReplicaSet(ReplicaSet),
    StatefulSet(StatefulSet),
}

/// One workload: the object as the server returned it and its typed view.
#[derive(Debug, Clone)]
pub struct Workload {
    raw: DynamicObject,
    typed: Typed,
}

impl Workload {
    /// Reads a raw object of the given kind.
    pub fn from_raw(kind: WorkloadKind, raw: DynamicObject) -> Result<Self, K8sError> {
        let value = serde_json::to_value(&raw).expect("a DynamicObject serializes");
        let bad = |e: serde_json::Error| K8sError::BadObject {
            workload: format!("{kind}/{}", raw.metadata.name.clone().unwrap_or_default()),
            cause: e.to_string(),
        };
        let typed = match kind {
            WorkloadKind::Deployment => {
                Typed::Deployment(serde_json::from_value(value).map_err(bad)?)
            }
            WorkloadKind::ReplicaSet => {
                Typed::ReplicaSet(serde_json::from_value(value).map_err(bad)?)
            }
            WorkloadKind::StatefulSet => {
                Typed::StatefulSet(serde_json::from_value(value).map_err(bad)?)
            }
        };
        Ok(Self { raw, typed })
    }

    fn from_typed<K: Serialize>(kind: WorkloadKind, obj: &K) -> Self {
        let mut value = serde_json::to_value(obj).expect("k8s objects serialize");
        value["apiVersion"] = "apps/v1".into();
        value["kind"] = kind.kind().into();
        let raw: DynamicObject =
            serde_json::from_value(value).expect("an object is a DynamicObject");
        Self::from_raw(kind, raw).expect("a typed object parses back")
    }

    /// Its kind.
    pub fn kind(&self) -> WorkloadKind {
        match self.typed {
            Typed::Deployment(_) => WorkloadKind::Deployment,
            Typed::ReplicaSet(_) => WorkloadKind::ReplicaSet,
            Typed::StatefulSet(_) => WorkloadKind::StatefulSet,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        self.raw.metadata.name.as_deref().unwrap_or_default()
    }

    /// `kind/name`, as kubectl writes it.
    pub fn display(&self) -> String {
        format!("{}/{}", self.kind(), self.name())
    }

    /// Its metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        &self.raw.metadata
    }

    /// The object as the server returned it.
    pub fn raw(&self) -> &DynamicObject {
        &self.raw
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.raw
            .metadata
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    /// The current pod template.
    pub fn template(&self) -> &PodTemplateSpec {
        match &self.typed {
            Typed::Deployment(d) => {
                &d.spec
                    .as_ref()
                    .expect("apps/v1 objects have a spec")
                    .template
            }
            Typed::ReplicaSet(r) => r
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .unwrap_or(&EMPTY_TEMPLATE),
            Typed::StatefulSet(s) => {
                &s.spec
                    .as_ref()
                    .expect("apps/v1 objects have a spec")
                    .template
            }
        }
    }

    /// The current pod template as raw JSON.
    pub fn template_json(&self) -> serde_json::Value {
        self.raw
            .data
            .get("spec")
            .and_then(|s| s.get("template"))
            .cloned()
            .unwrap_or_default()
    }

    /// Whether tpr installed the agent (the original template is recorded).
    pub fn has_agent(&self) -> bool {
        self.annotation(ANNOTATION_ORIGINAL_TEMPLATE).is_some()
    }

    /// The template before tpr patched it, as raw JSON: the recorded one, or
    /// the current one when the agent is not installed.
    pub fn original_template_json(&self) -> Result<serde_json::Value, K8sError> {
        match self.annotation(ANNOTATION_ORIGINAL_TEMPLATE) {
            None => Ok(self.template_json()),
            Some(s) => {
                serde_json::from_str(s).map_err(|e| self.bad(ANNOTATION_ORIGINAL_TEMPLATE, e))
            }
        }
    }

    /// The template before tpr patched it, typed.
    pub fn original_template(&self) -> Result<PodTemplateSpec, K8sError> {
        serde_json::from_value(self.original_template_json()?)
            .map_err(|e| self.bad(ANNOTATION_ORIGINAL_TEMPLATE, e))
    }

    /// The ports the installed agent forwards (empty when not installed).
    pub fn agent_ports(&self) -> Result<Vec<AgentPort>, K8sError> {
        match self.annotation(ANNOTATION_AGENT_PORTS) {
            None => Ok(Vec::new()),
            Some(s) => serde_json::from_str(s).map_err(|e| self.bad(ANNOTATION_AGENT_PORTS, e)),
        }
    }

    fn bad(&self, annotation: &'static str, e: serde_json::Error) -> K8sError {
        K8sError::BadAnnotation {
            workload: self.display(),
            annotation,
            cause: e.to_string(),
        }
    }

    /// The label selector of its pods.
    pub fn selector(&self) -> Option<&LabelSelector> {
        match &self.typed {
            Typed::Deployment(d) => d.spec.as_ref().map(|s| &s.selector),
            Typed::ReplicaSet(r) => r.spec.as_ref().map(|s| &s.selector),
            Typed::StatefulSet(s) => s.spec.as_ref().map(|s| &s.selector),
        }
    }

    /// Desired replicas (1 when unset, as the API defaults it).
    pub fn replicas(&self) -> i32 {
        let r = match &self.typed {
            Typed::Deployment(d) => d.spec.as_ref().and_then(|s| s.replicas),
            Typed::ReplicaSet(r) => r.spec.as_ref().and_then(|s| s.replicas),
            Typed::StatefulSet(s) => s.spec.as_ref().and_then(|s| s.replicas),
        };
        r.unwrap_or(1)
    }

    /// Ready replicas reported by its controller.
    pub fn ready_replicas(&self) -> i32 {
        let r = match &self.typed {
            Typed::Deployment(d) => d.status.as_ref().and_then(|s| s.ready_replicas),
            Typed::ReplicaSet(r) => r.status.as_ref().and_then(|s| s.ready_replicas),
            Typed::StatefulSet(s) => s.status.as_ref().and_then(|s| s.ready_replicas),
        };
        r.unwrap_or(0)
    }

    /// Whether a template change leaves the pods alone, so tpr must delete
    /// them: a bare ReplicaSet, or a StatefulSet with `OnDelete`.
    pub fn pods_need_replacing(&self) -> bool {
        match &self.typed {
            Typed::Deployment(_) => false,
            Typed::ReplicaSet(_) => true,
            Typed::StatefulSet(s) => {
                s.spec
                    .as_ref()
                    .and_then(|s| s.update_strategy.as_ref())
                    .and_then(|u| u.type_.as_deref())
                    == Some("OnDelete")
            }
        }
    }

    /// Whether a controller (a Deployment) owns this workload, so it is not
    /// a workload of its own.
    pub fn is_owned(&self) -> bool {
        self.raw
            .metadata
            .owner_references
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o.controller == Some(true)))
    }

    pub(crate) fn deployment(&self) -> Option<&Deployment> {
        match &self.typed {
            Typed::Deployment(d) => Some(d),
            _ => None,
        }
    }

    pub(crate) fn replicaset(&self) -> Option<&ReplicaSet> {
        match &self.typed {
            Typed::ReplicaSet(r) => Some(r),
            _ => None,
        }
    }

    pub(crate) fn statefulset(&self) -> Option<&StatefulSet> {
        match &self.typed {
            Typed::StatefulSet(s) => Some(s),
            _ => None,
        }
    }
}

static EMPTY_TEMPLATE: PodTemplateSpec = PodTemplateSpec {
    metadata: None,
    spec: None,
};

impl From<Deployment> for Workload {
    fn from(d: Deployment) -> Self {
        Self::from_typed(WorkloadKind::Deployment, &d)
    }
}

impl From<ReplicaSet> for Workload {
    fn from(r: ReplicaSet) -> Self {
        Self::from_typed(WorkloadKind::ReplicaSet, &r)
    }
}

impl From<StatefulSet> for Workload {
    fn from(s: StatefulSet) -> Self {
        Self::from_typed(WorkloadKind::StatefulSet, &s)
    }
}

/// A label selector in the string form the API's `labelSelector` takes.
pub(crate) fn selector_string(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        parts.push(format!("{k}={v}"));
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}
