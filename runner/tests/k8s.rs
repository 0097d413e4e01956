//! The Kubernetes library against the real test cluster (tests/cluster/up).
//! Each test works in a namespace of its own. Without a cluster these tests
//! fail, saying how to start it.

mod k8s_support;

use std::time::Duration;

use k8s_support::*;
use serde_json::json;
use tpr::k8s::{
    self, AgentSpec, Cluster, ClusterOptions, InstallOutcome, InterceptTarget, K8sError, PortId,
    PortMode, RolloutOptions, Workload, WorkloadKind,
};

fn target(
    ns: &str,
    workload: &str,
    service: Option<&str>,
    port: Option<PortId>,
) -> InterceptTarget {
    InterceptTarget {
        workload: workload.into(),
        kind: None,
        namespace: ns.into(),
        service: service.map(String::from),
        port,
    }
}

fn quiet(_: &str) {}

/// Resolves `workload` (its only Service port) and installs the agent for it.
async fn install_one(
    c: &Cluster,
    n: &str,
    workload: &str,
    spec: &AgentSpec,
    opts: &RolloutOptions,
) -> Result<InstallOutcome, K8sError> {
    let r = k8s::resolve(c, &target(n, workload, None, None)).await?;
    k8s::install(c, &r.workload, &[r.port_request(false)], spec, opts, &quiet).await
}

fn opts() -> RolloutOptions {
    RolloutOptions {
        timeout: Duration::from_secs(120),
        ..Default::default()
    }
}

/// An agent image that is not in the cluster (pull policy Never): its
/// rollout gets stuck with ErrImageNeverPull.
fn missing_agent() -> AgentSpec {
    AgentSpec {
        image: "tpr-agent-missing:0.0.0".into(),
        pull_policy: "Never".into(),
        ..Default::default()
    }
}

async fn workload(cluster: &Cluster, ns: &str, name: &str) -> Workload {
    k8s::get_workload(cluster, WorkloadKind::Deployment, ns, name)
        .await
        .unwrap()
        .expect("the deployment")
}

fn template_of(obj: &serde_json::Value) -> serde_json::Value {
    obj["spec"]["template"].clone()
}

#[tokio::test]
async fn dead_cluster_names_url_and_context() {
    let dir = std::env::temp_dir().join(format!("tpr-k8s-dead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: dead\n  cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}\n\
         users:\n- name: u\n  user: {token: t}\ncontexts:\n- name: dead-ctx\n  context: {cluster: dead, user: u}\n\
         - name: other\n  context: {cluster: dead, user: u}\ncurrent-context: dead-ctx\n",
    )
    .unwrap();
    let opts = ClusterOptions {
        kubeconfig: Some(path.clone()),
        ..Default::default()
    };
    let cluster = Cluster::connect(&opts).await.unwrap();
    let err = cluster.check().await.unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, K8sError::Unreachable { .. }), "{msg}");
    assert!(
        msg.starts_with("cannot reach the cluster at https://127.0.0.1:1/ (context dead-ctx): "),
        "{msg}"
    );
    assert!(
        msg.contains("refused") && msg.ends_with("check kubeconfig/context"),
        "{msg}"
    );
    let err = k8s::resolve(&cluster, &target("default", "x", None, None))
        .await
        .unwrap_err();
    assert!(matches!(err, K8sError::Unreachable { .. }), "{err}");

    let wrong = ClusterOptions {
        context: Some("nope".into()),
        ..opts
    };
    let err = Cluster::connect(&wrong)
        .await
        .err()
        .expect("unknown context");
    assert_eq!(
        err.to_string(),
        "context `nope` is not in the kubeconfig; its contexts are: dead-ctx, other"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn resolves_every_kind_and_service_shape() {
    let c = admin().await;
    let ns = TestNs::new(&c, "resolve").await;
    let n = ns.name.as_str();
    create(&c, n, deployment("named", 0)).await;
    create(
        &c,
        n,
        service(
            "named",
            "named",
            json!([{"name": "web", "port": 80, "targetPort": "http"}]),
        ),
    )
    .await;
    create(&c, n, deployment("numeric", 0)).await;
    create(
        &c,
        n,
        service(
            "numeric",
            "numeric",
            json!([{"port": 80, "targetPort": 8080}]),
        ),
    )
    .await;
    create(&c, n, statefulset("db", 0, "db", "RollingUpdate")).await;
    let mut headless = service(
        "db",
        "db",
        json!([{"name": "web", "port": 8080, "targetPort": "http"}]),
    );
    headless["spec"]["clusterIP"] = json!("None");
    create(&c, n, headless).await;
    create(&c, n, replicaset("bare", 0)).await;
    create(
        &c,
        n,
        service("bare", "bare", json!([{"port": 80, "targetPort": "http"}])),
    )
    .await;
    create(&c, n, deployment("twoport", 0)).await;
    let two = json!([{"name": "web", "port": 80, "targetPort": "http"}, {"name": "admin", "port": 81, "targetPort": 8081}]);
    create(&c, n, service("twoport", "twoport", two)).await;
    create(&c, n, deployment("twosvc", 0)).await;
    create(
        &c,
        n,
        service(
            "twosvc-a",
            "twosvc",
            json!([{"port": 80, "targetPort": "http"}]),
        ),
    )
    .await;
    create(
        &c,
        n,
        service(
            "twosvc-b",
            "twosvc",
            json!([{"port": 80, "targetPort": 8081}]),
        ),
    )
    .await;
    let mut manual = service("manual", "x", json!([{"port": 80}]));
    manual["spec"].as_object_mut().unwrap().remove("selector");
    create(&c, n, manual).await;

    let r = k8s::resolve(&c, &target(n, "named", None, None))
        .await
        .unwrap();
    assert_eq!(
        (r.workload.kind(), r.container_port, r.mode),
        (
            WorkloadKind::Deployment,
            8080,
            PortMode::Swap {
                name: "http".into()
            }
        )
    );
    let r = k8s::resolve(&c, &target(n, "numeric", None, None))
        .await
        .unwrap();
    assert_eq!(
        (r.container.as_str(), r.container_port, r.mode),
        ("hello", 8080, PortMode::Redirect)
    );
    let r = k8s::resolve(&c, &target(n, "db", None, None))
        .await
        .unwrap();
    assert_eq!(
        (r.workload.kind(), r.headless, r.mode),
        (WorkloadKind::StatefulSet, true, PortMode::Redirect)
    );
    let r = k8s::resolve(&c, &target(n, "bare", None, None))
        .await
        .unwrap();
    assert_eq!(r.workload.kind(), WorkloadKind::ReplicaSet);
    let r = k8s::resolve(
        &c,
        &target(n, "twoport", None, Some(PortId::Name("admin".into()))),
    )
    .await
    .unwrap();
    assert_eq!((r.container_port, r.mode), (8081, PortMode::Redirect));
    let r = k8s::resolve(&c, &target(n, "twoport", None, Some(PortId::Number(80))))
        .await
        .unwrap();
    assert_eq!(
        (r.container_port, r.service_port.identifier()),
        (8080, "web".to_string())
    );
    let r = k8s::resolve(&c, &target(n, "twosvc", Some("twosvc-b"), None))
        .await
        .unwrap();
    assert_eq!(
        (r.service.as_str(), r.container_port, r.mode),
        ("twosvc-b", 8081, PortMode::Redirect)
    );

    // The errors a user meets, with what they list.
    let err = |t: InterceptTarget| {
        let c = &c;
        async move { k8s::resolve(c, &t).await.unwrap_err().to_string() }
    };
    let e = err(target(n, "twosvc", None, None)).await;
    assert!(
        e.contains("several Services select deployment/twosvc: twosvc-a, twosvc-b"),
        "{e}"
    );
    let e = err(target(n, "twoport", None, None)).await;
    assert!(e.contains("several ports (web/80, admin/81)"), "{e}");
    let e = err(target(
        n,
        "twoport",
        None,
        Some(PortId::Name("nope".into())),
    ))
    .await;
    assert!(
        e.contains("no port `nope`; its ports are: web/80, admin/81"),
        "{e}"
    );
    let e = err(target(n, "named", Some("manual"), None)).await;
    assert!(
        e.contains("`manual`") && e.contains("cannot be intercepted"),
        "{e}"
    );
    let e = err(target(n, "named", Some("numeric"), None)).await;
    assert!(
        e.contains("does not select the pods of deployment/named; Services that do: named"),
        "{e}"
    );
    let e = err(target(n, "ghost", None, None)).await;
    assert!(
        e.contains(&format!("namespace `{n}`")) && e.contains("tpr list"),
        "{e}"
    );

    let list = k8s::list(&c, n).await.unwrap();
    let names: Vec<_> = list
        .iter()
        .map(|s| format!("{}/{}", s.kind, s.name))
        .collect();
    assert_eq!(
        names,
        [
            "deployment/named",
            "deployment/numeric",
            "deployment/twoport",
            "deployment/twosvc",
            "replicaset/bare",
            "statefulset/db"
        ]
    );
    assert!(
        list.iter().all(
            |s| matches!(s.interceptable, k8s::Interceptable::Yes { .. }) && !s.agent_installed
        )
    );
}

#[tokio::test]
async fn install_then_uninstall_restores_the_template_exactly() {
    let c = admin().await;
    let ns = TestNs::new(&c, "exact").await;
    let n = ns.name.as_str();
    // No replicas: the rollout is immediate, so this runs without an agent
    // image; what the server stores is what is checked.
    create(&c, n, deployment("app", 0)).await;
    let two = json!([{"name": "web", "port": 80, "targetPort": "http"}, {"name": "admin", "port": 81, "targetPort": 8081}]);
    create(&c, n, service("app", "app", two)).await;
    let before = get_json(&c, n, "apps/v1", "Deployment", "app").await;

    let r = k8s::resolve(
        &c,
        &target(n, "app", None, Some(PortId::Name("web".into()))),
    )
    .await
    .unwrap();
    let e = k8s::find_agent_pod(&c, &r.workload).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("(the agent is not installed); run `tpr up`"),
        "{e}"
    );
    let out = k8s::install(
        &c,
        &r.workload,
        &[r.port_request(false)],
        &AgentSpec::default(),
        &opts(),
        &quiet,
    )
    .await
    .unwrap();
    assert!(out.changed);
    let after = get_json(&c, n, "apps/v1", "Deployment", "app").await;
    let containers = after["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers[0]["ports"][0]["name"], "tpr-http");
    assert_eq!(
        containers[0]["readinessProbe"]["httpGet"]["port"],
        "tpr-http"
    );
    assert_eq!(containers[1]["name"], "tpr-agent");
    assert_eq!(
        containers[1]["ports"][0],
        json!({"name": "http", "containerPort": 9901, "protocol": "TCP"})
    );
    assert_eq!(
        after["spec"]["template"]["metadata"]["labels"]["tpr.dev/agent"],
        "1"
    );
    let recorded: serde_json::Value = serde_json::from_str(
        after["metadata"]["annotations"]["tpr.dev/original-template"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(recorded, template_of(&before));

    let e = k8s::find_agent_pod(&c, &r.workload).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("(0 pods, none ready with the current agent)"),
        "{e}"
    );

    // Again with the same port: nothing changes.
    let w = workload(&c, n, "app").await;
    let again = k8s::install(
        &c,
        &w,
        &[r.port_request(false)],
        &AgentSpec::default(),
        &opts(),
        &quiet,
    )
    .await
    .unwrap();
    assert!(!again.changed);
    let same = get_json(&c, n, "apps/v1", "Deployment", "app").await;
    assert_eq!(
        same["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );

    // A second port extends the agent; the recorded original stays the first one.
    let r2 = k8s::resolve(&c, &target(n, "app", None, Some(PortId::Number(81))))
        .await
        .unwrap();
    let w = workload(&c, n, "app").await;
    let more = k8s::install(
        &c,
        &w,
        &[r2.port_request(false)],
        &AgentSpec::default(),
        &opts(),
        &quiet,
    )
    .await
    .unwrap();
    assert!(more.changed);
    assert_eq!(
        more.ports
            .iter()
            .map(|p| (p.app_port, p.agent_port))
            .collect::<Vec<_>>(),
        [(8080, 9901), (8081, 9902)]
    );
    let extended = get_json(&c, n, "apps/v1", "Deployment", "app").await;
    assert_eq!(
        extended["spec"]["template"]["spec"]["initContainers"][0]["name"],
        "tpr-agent-init"
    );
    assert_eq!(
        extended["metadata"]["annotations"]["tpr.dev/original-template"],
        after["metadata"]["annotations"]["tpr.dev/original-template"]
    );
    let listed = k8s::list(&c, n).await.unwrap();
    assert!(listed[0].agent_installed && listed[0].agent_ports.len() == 2);

    let un = k8s::uninstall(&c, n, "app", None, &opts(), &quiet)
        .await
        .unwrap();
    assert!(un.changed);
    let restored = get_json(&c, n, "apps/v1", "Deployment", "app").await;
    assert_eq!(template_of(&restored), template_of(&before));
    let annotations = restored["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(
        annotations.keys().all(|k| !k.starts_with("tpr.dev/")),
        "{annotations:?}"
    );

    let un = k8s::uninstall(&c, n, "app", None, &opts(), &quiet)
        .await
        .unwrap();
    assert!(!un.changed, "uninstalling twice is fine");
    let e = k8s::uninstall(&c, n, "ghost", None, &opts(), &quiet)
        .await
        .unwrap_err();
    assert!(matches!(e, K8sError::WorkloadNotFound { .. }), "{e}");
}

#[tokio::test]
async fn stuck_rollout_reports_the_pod_reason_and_rolls_back() {
    let c = admin().await;
    let ns = TestNs::new(&c, "stuck").await;
    let n = ns.name.as_str();
    deploy_app(&c, n, json!([{"port": 80, "targetPort": "http"}])).await;
    let before = get_json(&c, n, "apps/v1", "Deployment", "app").await;

    let r = k8s::resolve(&c, &target(n, "app", None, None))
        .await
        .unwrap();
    let messages = std::sync::Mutex::new(Vec::<String>::new());
    let progress = |m: &str| messages.lock().unwrap().push(m.to_string());
    let err = k8s::install(
        &c,
        &r.workload,
        &[r.port_request(false)],
        &missing_agent(),
        &opts(),
        &progress,
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, K8sError::Stuck { problem, .. } if problem.reason == "ErrImageNeverPull"),
        "{msg}"
    );
    assert!(
        msg.contains("container tpr-agent") && msg.contains("tpr-agent-missing:0.0.0"),
        "{msg}"
    );
    assert!(
        msg.ends_with("the previous pod template was restored"),
        "{msg}"
    );
    assert!(
        messages
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.starts_with("rolling out deployment/app: ")),
        "{messages:?}"
    );

    let after = get_json(&c, n, "apps/v1", "Deployment", "app").await;
    assert_eq!(template_of(&after), template_of(&before));
    let annotations = after["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(
        annotations.keys().all(|k| !k.starts_with("tpr.dev/")),
        "{annotations:?}"
    );
}

#[tokio::test]
async fn crash_loop_reports_the_exit() {
    let c = admin().await;
    let ns = TestNs::new(&c, "crash").await;
    let n = ns.name.as_str();
    deploy_app(&c, n, json!([{"port": 80, "targetPort": "http"}])).await;
    // The hello image as "agent" serves on 8080 too, which the app holds:
    // it exits at once, again and again.
    let crashing = AgentSpec {
        image: "hello:0.1.0".into(),
        pull_policy: "Never".into(),
        ..Default::default()
    };
    let err = install_one(&c, n, "app", &crashing, &opts())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, K8sError::Stuck { problem, .. } if problem.reason == "CrashLoopBackOff"),
        "{msg}"
    );
    assert!(msg.contains("last exit code 1"), "{msg}");
}

#[tokio::test]
async fn bare_replicaset_pods_are_replaced() {
    let c = admin().await;
    let ns = TestNs::new(&c, "rs").await;
    let n = ns.name.as_str();
    create(&c, n, replicaset("bare", 1)).await;
    create(
        &c,
        n,
        service("bare", "bare", json!([{"port": 80, "targetPort": "http"}])),
    )
    .await;
    let old = wait_ready(&c, n, "app=bare", 1).await;
    let before = get_json(&c, n, "apps/v1", "ReplicaSet", "bare").await;
    // The stuck pod can only be a new one: the old pod was deleted to get it.
    let err = install_one(&c, n, "bare", &missing_agent(), &opts())
        .await
        .unwrap_err();
    let K8sError::Stuck { pod, problem, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(problem.reason, "ErrImageNeverPull");
    assert_ne!(Some(pod), old[0].metadata.name.as_ref());
    let after = get_json(&c, n, "apps/v1", "ReplicaSet", "bare").await;
    assert_eq!(template_of(&after), template_of(&before));
    // The rollback replaced the broken pod too: a pod of the original template runs again.
    let pods = wait_ready(&c, n, "app=bare", 1).await;
    let containers = &pods[0].spec.as_ref().unwrap().containers;
    assert_eq!(containers.len(), 1, "no agent left in the pod");
}

#[tokio::test]
async fn port_forward_reaches_a_pod() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = admin().await;
    let ns = TestNs::new(&c, "pf").await;
    let n = ns.name.as_str();
    create(&c, n, deployment("app", 1)).await;
    let pods = wait_ready(&c, n, "app=app", 1).await;
    let pod = pods[0].metadata.name.clone().unwrap();

    let get = |mut s: k8s::PortForwardStream| async move {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let reply = get(k8s::port_forward(&c, n, &pod, 8080).await.unwrap())
        .await
        .unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.ends_with("ok\n") || reply.ends_with("ok"),
        "{reply}"
    );

    // The connector tonic uses opens one port-forward per connection.
    let mut connector = k8s::PortForwardConnector::new(c.clone(), n, &pod, 8080);
    for _ in 0..2 {
        let io = tower::Service::call(&mut connector, "http://x".parse().unwrap())
            .await
            .unwrap();
        let reply = get(io.into_inner()).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }

    // Nothing listens on 9: the kubelet's error comes back on read.
    let err = get(k8s::port_forward(&c, n, &pod, 9).await.unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("9"), "{err}");
}

/// A client that authenticates as a ServiceAccount of the namespace.
async fn as_service_account(admin: &Cluster, ns: &str, sa: &str) -> Cluster {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    let api: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(admin.client().clone(), ns);
    let tr: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .unwrap();
    let token = api
        .create_token_request(sa, &Default::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let kc = kube::config::Kubeconfig::read_from(kubeconfig()).unwrap();
    let cluster = kc.clusters[0].cluster.clone().unwrap();
    let ca = cluster
        .certificate_authority_data
        .clone()
        .map(|d| format!("certificate-authority-data: {d}"))
        .unwrap_or_else(|| {
            format!(
                "certificate-authority: {}",
                cluster.certificate_authority.clone().expect("a CA")
            )
        });
    let dir = std::env::temp_dir().join(format!("tpr-k8s-{ns}-{sa}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    {ca}\n\
             users:\n- name: {sa}\n  user:\n    token: {token}\ncontexts:\n- name: {sa}\n  context: {{cluster: c, user: {sa}, namespace: {ns}}}\n\
             current-context: {sa}\n",
            cluster.server.unwrap()
        ),
    )
    .unwrap();
    Cluster::connect(&ClusterOptions {
        kubeconfig: Some(path),
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn rbac_role_is_enough_and_a_missing_right_is_named() {
    let c = admin().await;
    let ns = TestNs::new(&c, "rbac").await;
    let n = ns.name.as_str();
    let role_yaml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/rbac.yaml")).unwrap();
    let mut role: serde_json::Value = serde_saphyr::from_str(&role_yaml).unwrap();
    create(&c, n, role.clone()).await;
    // The same Role without the write verbs on workloads.
    role["metadata"]["name"] = json!("tpr-readonly");
    role["rules"][0]["verbs"] = json!(["get", "list", "watch"]);
    create(&c, n, role).await;
    for (sa, role) in [("dev", "tpr"), ("viewer", "tpr-readonly")] {
        create(
            &c,
            n,
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}}),
        )
        .await;
        create(&c, n, json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": sa},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": n}]
        }))
        .await;
    }
    create(&c, n, deployment("app", 1)).await;
    create(
        &c,
        n,
        service("app", "app", json!([{"port": 80, "targetPort": 8080}])),
    )
    .await;
    let pods = wait_ready(&c, n, "app=app", 1).await;
    let before = get_json(&c, n, "apps/v1", "Deployment", "app").await;

    let viewer = as_service_account(&c, n, "viewer").await;
    let err = install_one(&viewer, n, "app", &missing_agent(), &opts())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "forbidden: tpr needs `update` on `deployments.apps` in namespace `{n}`"
        )),
        "{msg}"
    );
    let after = get_json(&c, n, "apps/v1", "Deployment", "app").await;
    assert_eq!(
        after["metadata"]["generation"], before["metadata"]["generation"],
        "nothing changed"
    );
    assert_eq!(template_of(&after), template_of(&before));
    assert_eq!(
        after["metadata"]["annotations"],
        before["metadata"]["annotations"]
    );

    // The full Role can do everything tpr does: resolve, list, write the
    // template, watch pods, roll back, port-forward, uninstall.
    let dev = as_service_account(&c, n, "dev").await;
    k8s::list(&dev, n).await.unwrap();
    let err = install_one(&dev, n, "app", &missing_agent(), &opts())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            K8sError::Stuck {
                rollback: k8s::Rollback::Restored,
                ..
            }
        ),
        "{err}"
    );
    let pod = pods[0].metadata.name.clone().unwrap();
    drop(k8s::port_forward(&dev, n, &pod, 8080).await.unwrap());
    create(&c, n, deployment("idle", 0)).await;
    create(
        &c,
        n,
        service("idle", "idle", json!([{"port": 80, "targetPort": "http"}])),
    )
    .await;
    let r = k8s::resolve(&dev, &target(n, "idle", None, None))
        .await
        .unwrap();
    assert!(
        k8s::install(
            &dev,
            &r.workload,
            &[r.port_request(false)],
            &AgentSpec::default(),
            &opts(),
            &quiet
        )
        .await
        .unwrap()
        .changed
    );
    assert_eq!(
        k8s::uninstall_all(&dev, n, &opts(), &quiet)
            .await
            .unwrap()
            .len(),
        1
    );
    // Bare ReplicaSets need `delete pods`, which the full Role has: the
    // stuck pod is a new one, so the old one was deleted, and the rollback
    // deletes the new one again.
    create(&c, n, replicaset("bare", 1)).await;
    create(
        &c,
        n,
        service("bare", "bare", json!([{"port": 80, "targetPort": "http"}])),
    )
    .await;
    let old = wait_ready(&c, n, "app=bare", 1).await[0]
        .metadata
        .name
        .clone()
        .unwrap();
    let err = install_one(&dev, n, "bare", &missing_agent(), &opts())
        .await
        .unwrap_err();
    let K8sError::Stuck { pod, rollback, .. } = &err else {
        panic!("{err}")
    };
    assert_ne!(pod, &old);
    assert_eq!(rollback, &k8s::Rollback::Restored);
    let pods = wait_ready(&c, n, "app=bare", 1).await;
    assert_eq!(pods[0].spec.as_ref().unwrap().containers.len(), 1);
}

#[tokio::test]
async fn unschedulable_agent_is_reported() {
    let c = admin().await;
    let ns = TestNs::new(&c, "unsched").await;
    let n = ns.name.as_str();
    deploy_app(&c, n, json!([{"port": 80, "targetPort": "http"}])).await;
    let huge: k8s_openapi::api::core::v1::ResourceRequirements =
        serde_json::from_value(json!({"requests": {"cpu": "1000"}})).unwrap();
    let spec = AgentSpec {
        resources: Some(huge),
        ..missing_agent()
    };
    let err = install_one(&c, n, "app", &spec, &opts()).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("Unschedulable: 0/1 nodes are available") && msg.contains("Insufficient cpu"),
        "{msg}"
    );
}

#[tokio::test]
async fn slow_rollout_times_out_and_rolls_back() {
    let c = admin().await;
    let ns = TestNs::new(&c, "timeout").await;
    let n = ns.name.as_str();
    deploy_app(&c, n, json!([{"port": 80, "targetPort": "http"}])).await;
    let before = get_json(&c, n, "apps/v1", "Deployment", "app").await;
    // No pod starts within 300 ms.
    let hurried = RolloutOptions {
        timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let r = k8s::resolve(&c, &target(n, "app", None, None))
        .await
        .unwrap();
    let err = k8s::install(
        &c,
        &r.workload,
        &[r.port_request(false)],
        &AgentSpec::default(),
        &hurried,
        &quiet,
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, K8sError::RolloutTimeout { .. }), "{msg}");
    assert!(msg.starts_with("rollout of deployment/app did not finish in 300ms (last state: rolling out deployment/app: "), "{msg}");
    assert!(
        msg.ends_with("the previous pod template was restored"),
        "{msg}"
    );
    let after = get_json(&c, n, "apps/v1", "Deployment", "app").await;
    assert_eq!(template_of(&after), template_of(&before));
}

#[tokio::test]
async fn failing_init_container_is_reported_with_its_output() {
    let c = admin().await;
    let ns = TestNs::new(&c, "init").await;
    let n = ns.name.as_str();
    create(&c, n, deployment("app", 1)).await;
    create(
        &c,
        n,
        service("app", "app", json!([{"port": 80, "targetPort": 8080}])),
    )
    .await;
    wait_ready(&c, n, "app=app", 1).await;
    // The hello image has no `init` command: the init step fails with
    // hello's own message, which the error carries.
    let spec = AgentSpec {
        image: "hello:0.1.0".into(),
        pull_policy: "Never".into(),
        ..Default::default()
    };
    let err = install_one(&c, n, "app", &spec, &opts()).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("container tpr-agent-init: Error: init container exited with code 1"),
        "{msg}"
    );
    assert!(
        msg.contains("unknown command") && msg.contains("init"),
        "{msg}"
    );
}

#[tokio::test]
async fn paused_deployment_is_reported_at_once() {
    let c = admin().await;
    let ns = TestNs::new(&c, "paused").await;
    let n = ns.name.as_str();
    let mut d = deployment("app", 1);
    d["spec"]["paused"] = json!(true);
    create(&c, n, d).await;
    create(
        &c,
        n,
        service("app", "app", json!([{"port": 80, "targetPort": "http"}])),
    )
    .await;
    let r = k8s::resolve(&c, &target(n, "app", None, None))
        .await
        .unwrap();
    let err = k8s::install(
        &c,
        &r.workload,
        &[r.port_request(false)],
        &AgentSpec::default(),
        &opts(),
        &quiet,
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, K8sError::RolloutFailed { .. }), "{msg}");
    assert!(
        msg.contains("is paused") && msg.contains("rollout resume deployment/app"),
        "{msg}"
    );
}
