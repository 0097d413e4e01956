//! Helpers for the tests that run against the real test cluster
//! (tests/cluster/up): the admin client, throw-away namespaces, objects
//! from JSON, waiting for pods.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams,
};
use serde_json::{Value, json};
use tpr::k8s::{Cluster, ClusterOptions};

/// The test cluster's kubeconfig: `TPR_KUBECONFIG`, else the one
/// tests/cluster/up writes.
pub fn kubeconfig() -> PathBuf {
    std::env::var_os("TPR_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/tpr-cluster/kubeconfig"))
}

/// An admin client for the test cluster; fails the test when the cluster is
/// not there (these tests are not skipped).
pub async fn admin() -> Cluster {
    let path = kubeconfig();
    assert!(
        path.exists(),
        "no kubeconfig at {} (set TPR_KUBECONFIG): start the test cluster with tests/cluster/up",
        path.display()
    );
    let cluster = Cluster::connect(&ClusterOptions {
        kubeconfig: Some(path),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("test cluster: {e}"));
    if let Err(e) = cluster.check().await {
        panic!("the test cluster does not answer: {e}; start it with tests/cluster/up");
    }
    cluster
}

/// A namespace of its own for one test, deleted when dropped (even when
/// the test fails).
pub struct TestNs {
    pub name: String,
}

impl TestNs {
    pub async fn new(cluster: &Cluster, prefix: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("tpr-{prefix}-{}-{nanos:x}", std::process::id());
        let api: Api<Namespace> = Api::all(cluster.client().clone());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        // The ServiceAccount controller must create `default` before pods can start.
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(cluster.client().clone(), &name);
        eventually(Duration::from_secs(30), || async {
            sa.get_opt("default").await.ok().flatten().is_some()
        })
        .await;
        Self { name }
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await, and the test's client is bound to the test's
        // runtime (blocked here): a thread with its own runtime and client.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let opts = ClusterOptions {
                    kubeconfig: Some(kubeconfig()),
                    ..Default::default()
                };
                let Ok(cluster) = Cluster::connect(&opts).await else {
                    return;
                };
                let api: Api<Namespace> = Api::all(cluster.client().clone());
                let _ = api.delete(&name, &DeleteParams::background()).await;
            })
        })
        .join();
    }
}

fn api_resource(obj: &Value) -> ApiResource {
    let api_version = obj["apiVersion"].as_str().expect("apiVersion");
    let kind = obj["kind"].as_str().expect("kind");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "Deployment" => "deployments",
        "ReplicaSet" => "replicasets",
        "StatefulSet" => "statefulsets",
        "Service" => "services",
        "ServiceAccount" => "serviceaccounts",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "Pod" => "pods",
        "ConfigMap" => "configmaps",
        other => panic!("add {other} to api_resource"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// Creates an object (JSON with apiVersion and kind) in the namespace.
pub async fn create(cluster: &Cluster, ns: &str, obj: Value) -> DynamicObject {
    let ar = api_resource(&obj);
    let api: Api<DynamicObject> = Api::namespaced_with(cluster.client().clone(), ns, &ar);
    let obj: DynamicObject = serde_json::from_value(obj).unwrap();
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create {:?}: {e}", obj.metadata.name))
}

/// Reads an object's JSON (`kind` as in [`create`]).
pub async fn get_json(
    cluster: &Cluster,
    ns: &str,
    api_version: &str,
    kind: &str,
    name: &str,
) -> Value {
    let ar = api_resource(&json!({"apiVersion": api_version, "kind": kind}));
    let api: Api<DynamicObject> = Api::namespaced_with(cluster.client().clone(), ns, &ar);
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

/// Retries `check` until it holds or `timeout` passes (then panics).
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < timeout,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The ready, non-terminating pods with these labels.
pub async fn ready_pods(cluster: &Cluster, ns: &str, selector: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(cluster.client().clone(), ns);
    let pods = api
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items;
    pods.into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect()
}

/// Waits until `n` pods with these labels are ready; returns them.
pub async fn wait_ready(cluster: &Cluster, ns: &str, selector: &str, n: usize) -> Vec<Pod> {
    let start = Instant::now();
    loop {
        let pods = ready_pods(cluster, ns, selector).await;
        if pods.len() == n {
            return pods;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{n} ready pods `{selector}` not seen in 120s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The common starting point: Deployment `app` (one replica) behind a Service
/// `app` with these ports, ready.
pub async fn deploy_app(cluster: &Cluster, ns: &str, service_ports: Value) {
    create(cluster, ns, deployment("app", 1)).await;
    create(cluster, ns, service("app", "app", service_ports)).await;
    wait_ready(cluster, ns, "app=app", 1).await;
}

/// The pod template of the example app: `hello serve` on 8080 named `http`,
/// with a readiness probe by port name (rewritten by the port swap).
pub fn hello_template(app: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "hello",
                "image": "hello:0.1.0",
                "imagePullPolicy": "Never",
                "args": ["serve"],
                "ports": [{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 8081}],
                "env": [{"name": "HELLO_ENV", "value": "cluster"}, {"name": "GREETING", "value": "hi $(HELLO_ENV)"}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1}
            }]
        }
    })
}

pub fn deployment(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": hello_template(name)}
    })
}

pub fn replicaset(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": hello_template(name)}
    })
}

pub fn statefulset(name: &str, replicas: i32, service: &str, strategy: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas, "serviceName": service, "updateStrategy": {"type": strategy},
            "selector": {"matchLabels": {"app": name}}, "template": hello_template(name)
        }
    })
}

/// A Service for the app label with the given ports (JSON list).
pub fn service(name: &str, app: &str, ports: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": app}, "ports": ports}
    })
}
