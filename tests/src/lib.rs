//! Harness for tpr's end-to-end tests: they run against the real
//! single-node cluster that `tests/cluster/up` starts on this machine.
//!
//! The cluster must be up: without it every test fails with
//! [`Error::NotUp`] naming the fix, it never skips.

pub mod browser;
pub mod ingress;
pub mod page;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, LogParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{GroupVersionKind, TypeMeta};
use kube::discovery::{Scope, pinned_kind};
use kube::{Client, Config};

/// Where `tests/cluster/up` writes the admin kubeconfig.
pub const DEFAULT_KUBECONFIG: &str = "/var/lib/tpr-cluster/kubeconfig";

/// Errors of the end-to-end harness.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The test cluster is not running (or its kubeconfig is elsewhere).
    #[error(
        "the test cluster is not reachable ({0}): start it with `tests/cluster/up` \
         (or point TPR_KUBECONFIG at a cluster's kubeconfig)"
    )]
    NotUp(String),
    /// A call to the Kubernetes API failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A manifest could not be read or parsed.
    #[error("manifest {path}: {reason}")]
    Manifest {
        /// The file (or `<inline>`).
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A condition did not become true in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    /// Local I/O (a port-forward stream, a file).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A request through the ingress controller got no response.
    #[error("ingress request: {0}")]
    Request(String),
    /// The headless browser failed (or the page did not load).
    #[error("browser: {0}")]
    Browser(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The repository root (for the example manifests).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The kubeconfig the tests use: `$TPR_KUBECONFIG` or [`DEFAULT_KUBECONFIG`].
pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("TPR_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBECONFIG))
}

/// A connection to the test cluster.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
}

impl Cluster {
    /// Connects and checks the API server answers.
    pub async fn connect() -> Result<Self> {
        let path = kubeconfig_path();
        let kubeconfig = Kubeconfig::read_from(&path)
            .map_err(|e| Error::NotUp(format!("{}: {e}", path.display())))?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| Error::NotUp(format!("{}: {e}", path.display())))?;
        let client = Client::try_from(config).map_err(|e| Error::NotUp(e.to_string()))?;
        match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
            Ok(Ok(_)) => Ok(Self { client }),
            Ok(Err(e)) => Err(Error::NotUp(e.to_string())),
            Err(_) => Err(Error::NotUp("the API server did not answer in 10s".into())),
        }
    }

    /// Creates a namespace named `<prefix>-<random>` for one test, so tests
    /// running in parallel do not see each other's objects.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        let name = format!("{prefix}-{:08x}", rand_u32());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))
        .expect("static namespace object");
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(name)
    }

    /// Deletes a namespace (and everything in it), without waiting.
    pub async fn delete_namespace(&self, name: &str) -> Result<()> {
        match Api::<Namespace>::all(self.client.clone())
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Server-side applies every object of a (multi-document) YAML file;
    /// namespaced objects go into `namespace` when given.
    pub async fn apply_file(
        &self,
        path: impl AsRef<Path>,
        namespace: Option<&str>,
    ) -> Result<Vec<DynamicObject>> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Manifest {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        self.apply_yaml_named(&text, namespace, &path.display().to_string())
            .await
    }

    /// Server-side applies every object of a YAML text.
    pub async fn apply_yaml(
        &self,
        yaml: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<DynamicObject>> {
        self.apply_yaml_named(yaml, namespace, "<inline>").await
    }

    async fn apply_yaml_named(
        &self,
        yaml: &str,
        namespace: Option<&str>,
        origin: &str,
    ) -> Result<Vec<DynamicObject>> {
        let bad = |reason: String| Error::Manifest {
            path: origin.to_string(),
            reason,
        };
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(yaml).map_err(|e| bad(e.to_string()))?;
        let mut applied = Vec::new();
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let mut obj: DynamicObject =
                serde_json::from_value(doc).map_err(|e| bad(e.to_string()))?;
            let types = obj
                .types
                .clone()
                .ok_or_else(|| bad("an object has no apiVersion/kind".into()))?;
            let name = obj
                .metadata
                .name
                .clone()
                .ok_or_else(|| bad(format!("a {} has no metadata.name", types.kind)))?;
            let api = self.dynamic_api(&types, namespace, &mut obj).await?;
            let params = PatchParams::apply("tpr-e2e").force();
            applied.push(api.patch(&name, &params, &Patch::Apply(&obj)).await?);
        }
        Ok(applied)
    }

    async fn dynamic_api(
        &self,
        types: &TypeMeta,
        namespace: Option<&str>,
        obj: &mut DynamicObject,
    ) -> Result<Api<DynamicObject>> {
        let gvk = GroupVersionKind::try_from(types).map_err(|e| Error::Manifest {
            path: "<object>".into(),
            reason: e.to_string(),
        })?;
        let (resource, caps) = pinned_kind(&self.client, &gvk).await?;
        Ok(match caps.scope {
            Scope::Cluster => Api::all_with(self.client.clone(), &resource),
            Scope::Namespaced => {
                if let Some(ns) = namespace {
                    obj.metadata.namespace = Some(ns.to_string());
                }
                let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
                Api::namespaced_with(self.client.clone(), ns, &resource)
            }
        })
    }

    /// Waits until a Deployment's pods of its current revision are all ready.
    pub async fn wait_deployment(&self, ns: &str, name: &str, timeout: Duration) -> Result<()> {
        let api = Api::<Deployment>::namespaced(self.client.clone(), ns);
        wait_for(
            &format!("deployment {ns}/{name} ready"),
            timeout,
            || async {
                let d = api.get(name).await?;
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let st = d.status.unwrap_or_default();
                let generation_seen = st.observed_generation >= d.metadata.generation;
                Ok((generation_seen
                    && st.updated_replicas.unwrap_or(0) == want
                    && st.ready_replicas.unwrap_or(0) == want
                    && st.replicas.unwrap_or(0) == want)
                    .then_some(()))
            },
        )
        .await
    }

    /// Waits until a StatefulSet's pods are all ready.
    pub async fn wait_statefulset(&self, ns: &str, name: &str, timeout: Duration) -> Result<()> {
        let api = Api::<StatefulSet>::namespaced(self.client.clone(), ns);
        wait_for(
            &format!("statefulset {ns}/{name} ready"),
            timeout,
            || async {
                let s = api.get(name).await?;
                let want = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let ready = s.status.and_then(|st| st.ready_replicas).unwrap_or(0);
                Ok((ready == want).then_some(()))
            },
        )
        .await
    }

    /// Ready pods matching a label selector, sorted by name.
    pub async fn ready_pods(&self, ns: &str, selector: &str) -> Result<Vec<Pod>> {
        let api = Api::<Pod>::namespaced(self.client.clone(), ns);
        let list = api
            .list(&kube::api::ListParams::default().labels(selector))
            .await?;
        let mut pods: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
            .collect();
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        Ok(pods)
    }

    /// Runs `image` with `args` as a one-shot pod in `ns` and returns its
    /// exit code and log once it ends; the pod is deleted afterwards.
    pub async fn run_pod(
        &self,
        ns: &str,
        image: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<PodRun> {
        let api = Api::<Pod>::namespaced(self.client.clone(), ns);
        let name = format!("run-{:08x}", rand_u32());
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"tpr.dev/e2e": "run"}},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "run",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "args": args,
                }],
            },
        }))
        .expect("static pod object");
        api.create(&PostParams::default(), &pod).await?;
        let result = async {
            let code = wait_for(&format!("pod {ns}/{name} to finish"), timeout, || async {
                let p = api.get(&name).await?;
                Ok(p.status
                    .and_then(|s| s.container_statuses)
                    .and_then(|cs| cs.into_iter().next())
                    .and_then(|c| c.state)
                    .and_then(|s| s.terminated)
                    .map(|t| t.exit_code))
            })
            .await?;
            let log = api.logs(&name, &LogParams::default()).await?;
            Ok(PodRun {
                exit_code: code,
                log,
            })
        }
        .await;
        let _ = api.delete(&name, &DeleteParams::default()).await;
        result
    }
}

/// What a one-shot pod did.
#[derive(Debug)]
pub struct PodRun {
    pub exit_code: i32,
    /// stdout and stderr, interleaved as the kubelet recorded them.
    pub log: String,
}

/// Whether a pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Polls `check` every 500ms until it yields `Some`, or fails after
/// `timeout` with the last API error (if any) in the message.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e.to_string()),
        }
        if start.elapsed() >= timeout {
            let what = match last_err {
                Some(e) => format!("{what} (last error: {e})"),
                None => what.to_string(),
            };
            return Err(Error::Timeout(timeout, what));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A random number for unique names (no rand dependency: the std hasher is
/// randomly seeded per process, mixed with the time).
fn rand_u32() -> u32 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() as u32
}
