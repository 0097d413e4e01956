//! Every replica routes, and keeps routing while the cluster changes under
//! the intercept: scale up and down, a deleted pod, the team's manifest
//! re-applied (`kubectl apply`) and the template replaced outright (GitOps).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use tpr_e2e::{Cluster, Result, repo_root};

use crate::support::{ClientPod, ProjectDir, READY, Up, free_port, local_hello};
use crate::{ACTIVE, UP, text};

/// examples/hello's Deployment with `replicas` pods.
fn manifest(replicas: u32) -> String {
    let path = repo_root().join("examples/hello/k8s/deployment.yaml");
    std::fs::read_to_string(path)
        .expect("the example manifest")
        .replace("replicas: 1", &format!("replicas: {replicas}"))
}

fn project(ns: &str, port: u16, mechanism: &str) -> String {
    format!(
        "format_version = 1\n[cluster]\nnamespace = \"{ns}\"\n[[intercept]]\nworkload = \"hello\"\nport = \"{port}:http\"\nmechanism = \"{mechanism}\"\n{}",
        local_hello(port, "hello")
    )
}

/// The pods `tpr status` says route here, once they are `n` and the
/// intercept is ACTIVE (every ready pod).
async fn wait_routing_pods(dir: &ProjectDir, n: usize, up: &Up) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let out = dir.tpr(&["status", "--output", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let i = &v["intercepts"][0];
        let pods: Vec<String> = i["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["state"] == "ACTIVE")
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect();
        if i["state"] == "ACTIVE" && pods.len() == n {
            return pods;
        }
        assert!(
            start.elapsed() < UP,
            "never {n} routing pods: {}\n--- tpr up stderr\n{}",
            text(&out),
            up.stderr()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sends `n` requests, each on a new connection (so kube-proxy picks a pod
/// each time), and returns the answers that did not come from `want`.
async fn misses(
    client: &ClientPod,
    url: &str,
    headers: &[&str],
    want: &str,
    n: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let body = client.get(url, headers).await;
        if !body.contains(want) {
            out.push(body);
        }
    }
    out
}

async fn scale(c: &Cluster, ns: &str, replicas: i32) -> Result<()> {
    let api = Api::<Deployment>::namespaced(c.client.clone(), ns);
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    api.patch("hello", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

pub async fn replicas(c: &Cluster, ns: &str) -> Result<()> {
    c.apply_yaml(&manifest(3), Some(ns)).await?;
    let service = repo_root().join("examples/hello/k8s/service.yaml");
    c.apply_file(service, Some(ns)).await?;
    c.wait_deployment(ns, "hello", READY).await?;
    let client = ClientPod::start(c, ns).await?;
    let url = format!("http://hello.{ns}/");
    let port = free_port();
    let dir = ProjectDir::new(&project(ns, port, "http"));
    let mut up = dir.up(&[]);
    up.wait_for(ACTIVE, UP).await;
    let pods = wait_routing_pods(&dir, 3, &up).await;
    let listed = up.stdout();
    assert!(
        pods.iter().all(|p| listed.contains(p.as_str())),
        "the intercept block names every pod:\n{listed}"
    );

    // http: a personal intercept on every pod; others reach the cluster.
    let mine = format!("x-telepresence-intercept-id:{}:hello", dir.install_id);
    let missed = misses(&client, &url, &[&mine], "hello from local", 20).await;
    assert!(missed.is_empty(), "{missed:?}\n{}", up.stderr());
    let missed = misses(&client, &url, &[], "hello from hello-", 12).await;
    assert!(missed.is_empty(), "{missed:?}");

    // tcp, by a live edit: every connection to every pod.
    dir.write(&project(ns, port, "tcp"));
    up.wait_for("intercepts reconciled", UP).await;
    all_local(&client, &url, &up, "3 replicas").await;

    scale(c, ns, 5).await?;
    wait_routing_pods(&dir, 5, &up).await;
    wait_endpoints(c, ns, 5).await?;
    up.wait_for("routes here too", UP).await;
    all_local(&client, &url, &up, "scaled to 5").await;

    scale(c, ns, 1).await?;
    let left = wait_routing_pods(&dir, 1, &up).await;
    // Requests to the Service reach only live pods once the removed ones
    // left its endpoints (a cluster matter, with or without tpr).
    wait_endpoints(c, ns, 1).await?;
    all_local(&client, &url, &up, "scaled to 1").await;

    // The last pod is deleted: its replacement routes here.
    let api = Api::<Pod>::namespaced(c.client.clone(), ns);
    api.delete(&left[0], &DeleteParams::default()).await?;
    up.wait_for("restored", UP).await;
    let now = wait_routing_pods(&dir, 1, &up).await;
    assert_ne!(now, left);
    wait_endpoints(c, ns, 1).await?;
    wait_for_local(&client, &url, &up).await;
    all_local(&client, &url, &up, "after a deleted pod").await;

    // The team's manifest applied again (server-side, forced, as a CI
    // deploy does): the app's port is named `http` again.
    c.apply_yaml(&manifest(1), Some(ns)).await?;
    up.wait_for("was changed by someone else", UP).await;
    wait_for_local(&client, &url, &up).await;
    wait_endpoints(c, ns, 1).await?;
    all_local(&client, &url, &up, "after the manifest was re-applied").await;

    // GitOps replaces the template with the one in git, plus a change of
    // theirs: the agent is re-applied on top, their change kept.
    let deployments = Api::<Deployment>::namespaced(c.client.clone(), ns);
    let mut d = deployments.get("hello").await?;
    let in_git: serde_json::Value = serde_saphyr::from_str(&manifest(1)).expect("YAML");
    let mut template = in_git["spec"]["template"].clone();
    template["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "GITOPS", "value": "2"}));
    d.spec.as_mut().unwrap().template = serde_json::from_value(template).expect("a template");
    deployments
        .replace("hello", &PostParams::default(), &d)
        .await?;
    up.wait_for_n("was changed by someone else", 2, UP).await;
    // Their new env var reaches the local process: it restarts with it.
    up.wait_for("intercept environment changed", UP).await;
    up.wait_for_n("process local started", 2, UP).await;
    wait_for_local(&client, &url, &up).await;
    wait_endpoints(c, ns, 1).await?;
    all_local(&client, &url, &up, "after the template was replaced").await;
    assert!(
        up.stderr().contains("the agent container was removed"),
        "{}",
        up.stderr()
    );

    // Uninstall restores the user's latest template: theirs, no agent.
    drop(up);
    let out = dir.tpr(&["uninstall", "hello", "-n", ns]);
    assert!(out.status.success(), "{}", text(&out));
    let t = crate::template_json(c, ns, "hello").await?;
    let containers = t["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "{t}");
    assert_eq!(containers[0]["ports"][0]["name"], "http", "{t}");
    assert!(
        containers[0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "GITOPS"),
        "their change is kept: {t}"
    );
    assert!(
        t["metadata"]["labels"].get("tpr.dev/agent").is_none(),
        "{t}"
    );
    Ok(())
}

/// 30 requests, every one answered by the workstation.
async fn all_local(client: &ClientPod, url: &str, up: &Up, what: &str) {
    let missed = misses(client, url, &[], "hello from local", 30).await;
    assert!(missed.is_empty(), "{what}: {missed:?}\n{}", up.stderr());
}

/// Waits until the Service's endpoints are exactly `n` pods, none of them
/// terminating, and the workload has no other pod.
async fn wait_endpoints(c: &Cluster, ns: &str, n: usize) -> Result<()> {
    let api = Api::<EndpointSlice>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let params = ListParams::default().labels("kubernetes.io/service-name=hello");
    tpr_e2e::wait_for(&format!("{n} endpoints of hello"), UP, || {
        let (api, params, pods, ns) = (api.clone(), params.clone(), pods.clone(), ns.to_owned());
        async move {
            let slices = api.list(&params).await?;
            let endpoints: Vec<_> = slices.items.iter().flat_map(|s| &s.endpoints).collect();
            let settled = endpoints.len() == n
                && endpoints.iter().all(|e| {
                    let c = e.conditions.clone().unwrap_or_default();
                    c.ready == Some(true) && c.terminating != Some(true)
                });
            // kube-proxy follows the endpoints a moment later (seconds on a
            // busy node): until then a connection may still be sent to a
            // removed pod and hang. Wait until its rules have `n` too.
            let pods = pods
                .list(&ListParams::default().labels("app=hello"))
                .await?;
            Ok((settled && pods.items.len() == n && proxied_endpoints(&ns) == n).then_some(()))
        }
    })
    .await
}

/// The endpoints of Service `hello` in kube-proxy's rules on this node.
fn proxied_endpoints(ns: &str) -> usize {
    let rules = std::process::Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let endpoint = format!("--comment \"{ns}/hello:http -> ");
    rules
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SVC-") && l.contains(&endpoint))
        .count()
}

/// Waits until the Service answers from the workstation again.
async fn wait_for_local(client: &ClientPod, url: &str, up: &Up) {
    let (body, _) = client.get_until(url, &[], "hello from local", UP).await;
    assert!(body.contains("hello from local"), "{body}\n{}", up.stderr());
}

/// The Service or the workload goes away under a running intercept: it
/// ends, saying why, and comes back with the Service.
pub async fn cluster_changes(c: &Cluster, ns: &str) -> Result<()> {
    c.apply_yaml(&manifest(1), Some(ns)).await?;
    let service = repo_root().join("examples/hello/k8s/service.yaml");
    c.apply_file(&service, Some(ns)).await?;
    c.wait_deployment(ns, "hello", READY).await?;
    let port = free_port();
    let dir = ProjectDir::new(&project(ns, port, "tcp"));
    let mut up = dir.up(&["--output", "json"]);
    up.wait_for("\"event\":\"intercept_active\"", UP).await;

    // The Service's port is renamed: the file's `http` is gone.
    let services = Api::<Service>::namespaced(c.client.clone(), ns);
    let rename = |name: &str| serde_json::json!({"spec": {"ports": [{"port": 80, "name": name, "targetPort": "http"}]}});
    services
        .patch(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(&rename("web")),
        )
        .await?;
    up.wait_for("\"reason\":\"service_changed\"", UP).await;
    assert!(up.stdout().contains("\"detail\":"), "{}", up.stdout());

    // Back as it was, and the file applied again: active again.
    services
        .patch(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(&rename("http")),
        )
        .await?;
    dir.write(&format!("{}\n# again\n", project(ns, port, "tcp")));
    up.wait_for_n("\"event\":\"intercept_active\"", 2, UP).await;

    // The workload is deleted.
    let deployments = Api::<Deployment>::namespaced(c.client.clone(), ns);
    deployments
        .delete("hello", &DeleteParams::default())
        .await?;
    up.wait_for("\"reason\":\"workload_deleted\"", UP).await;
    assert!(
        up.stdout().contains("deployment/hello was deleted"),
        "{}",
        up.stdout()
    );
    Ok(())
}
