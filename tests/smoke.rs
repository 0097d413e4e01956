//! Smoke test of the test cluster: proves it is a real Kubernetes with
//! working Service networking, cluster DNS, port-forwarding, controllers
//! and an ingress controller. Needs `tests/cluster/up` (and `load-images`) to have run.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tpr_e2e::browser::Browser;
use tpr_e2e::{Cluster, Error, Result, ingress, page, repo_root, wait_for};

const HELLO_IMAGE: &str = "hello:0.1.0";
const READY: Duration = Duration::from_secs(90);

async fn cluster() -> Cluster {
    Cluster::connect().await.unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `body` in a fresh namespace, deletes the namespace whatever the
/// outcome, then fails the test with the body's error if any.
macro_rules! in_namespace {
    ($prefix:expr, $body:ident) => {{
        let c = cluster().await;
        let ns = c.namespace($prefix).await.unwrap_or_else(|e| panic!("{e}"));
        let result = $body(&c, &ns).await;
        let _ = c.delete_namespace(&ns).await;
        result.unwrap_or_else(|e| panic!("{e}"));
    }};
}

/// Deploys examples/hello (Deployment + ClusterIP Service) into `ns`.
async fn deploy_hello(c: &Cluster, ns: &str) -> Result<()> {
    let dir = repo_root().join("examples/hello/k8s");
    c.apply_file(dir.join("deployment.yaml"), Some(ns)).await?;
    c.apply_file(dir.join("service.yaml"), Some(ns)).await?;
    c.wait_deployment(ns, "hello", READY).await
}

/// Runs `hello get URL` in a client pod and returns what it printed.
async fn get_from_pod(c: &Cluster, ns: &str, url: &str) -> Result<String> {
    let run = c
        .run_pod(ns, HELLO_IMAGE, &["get", "-wait", "30s", url], READY)
        .await?;
    assert_eq!(
        run.exit_code, 0,
        "`hello get {url}` failed in a pod: {}",
        run.log
    );
    Ok(run.log)
}

async fn service_by_dns_name(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let pod = c.ready_pods(ns, "app=hello").await?;
    let pod_name = pod[0].metadata.name.clone().unwrap_or_default();
    for url in [
        format!("http://hello.{ns}.svc.cluster.local/"),
        "http://hello/".to_string(),
    ] {
        let out = get_from_pod(c, ns, &url).await?;
        assert!(
            out.contains(&format!("hello from {pod_name}")),
            "{url} answered {out:?}, expected the hello pod {pod_name}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn deployment_answers_by_service_dns_name() {
    in_namespace!("smoke-svc", service_by_dns_name);
}

const STATEFUL: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: None
  selector: {app: web}
  ports:
    - {name: http, port: 8080}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: web
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: hello
          image: hello:0.1.0
          imagePullPolicy: IfNotPresent
          ports:
            - {name: http, containerPort: 8080}
          readinessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 1
"#;

async fn statefulset_pod_dns(c: &Cluster, ns: &str) -> Result<()> {
    c.apply_yaml(STATEFUL, Some(ns)).await?;
    c.wait_statefulset(ns, "web", READY).await?;
    let url = format!("http://web-0.web.{ns}.svc.cluster.local:8080/");
    let out = get_from_pod(c, ns, &url).await?;
    assert_eq!(out.trim(), "hello from web-0", "{url} answered {out:?}");
    Ok(())
}

#[tokio::test]
async fn headless_statefulset_pod_answers_by_pod_dns_name() {
    in_namespace!("smoke-sts", statefulset_pod_dns);
}

async fn port_forward(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let pod = c.ready_pods(ns, "app=hello").await?.remove(0);
    let name = pod.metadata.name.unwrap_or_default();
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let mut pf = pods.portforward(&name, &[8080]).await?;
    let mut stream = pf
        .take_stream(8080)
        .ok_or_else(|| Error::Io(std::io::Error::other("no stream for port 8080")))?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: hello\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        stream.read_to_string(&mut response),
    )
    .await
    .map_err(|_| Error::Timeout(Duration::from_secs(20), "port-forward response".into()))??;
    drop(stream);
    // The pod closed the connection ("Connection: close"), so the API server
    // ends the WebSocket; kube's join() then reports that it could not send
    // its own close frame. Ending the forwarder is all that is left to do.
    pf.abort();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "port-forward got {response:?}"
    );
    assert!(
        response.contains(&format!("hello from {name}")),
        "port-forward got {response:?}"
    );
    Ok(())
}

#[tokio::test]
async fn port_forward_through_the_api_reaches_a_pod() {
    in_namespace!("smoke-pf", port_forward);
}

async fn pod_replaced(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let old = c.ready_pods(ns, "app=hello").await?.remove(0);
    let old_uid = old.metadata.uid.clone().unwrap_or_default();
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    pods.delete(
        old.metadata.name.as_deref().unwrap_or_default(),
        &DeleteParams::default(),
    )
    .await?;
    let new = wait_for("a replacement hello pod to be ready", READY, || async {
        let ready = c.ready_pods(ns, "app=hello").await?;
        Ok(ready
            .into_iter()
            .find(|p| p.metadata.uid.as_deref() != Some(old_uid.as_str())))
    })
    .await?;
    assert_ne!(new.metadata.name, old.metadata.name);
    Ok(())
}

#[tokio::test]
async fn deleted_pod_is_replaced_by_its_controller() {
    in_namespace!("smoke-rs", pod_replaced);
}

/// The mounts of /proc/self/mountinfo as (id, parent id, mount point,
/// optional fields, fs type).
fn mounts() -> Vec<(String, String, String, String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let fs = right.split(' ').next()?;
            let optional = f.get(6..).map(|o| o.join(" ")).unwrap_or_default();
            Some((f[0].into(), f[1].into(), f[4].into(), optional, fs.into()))
        })
        .collect()
}

/// `ip netns add` makes /run/netns a shared bind mount of itself when it is
/// not one yet; pod network namespaces mounted before that stay hidden
/// under it and their pods can never be deleted (the kubelet's "remove
/// netns: ... device or resource busy"). tests/cluster/up prepares the
/// mount before containerd starts: a pod created before a test that makes a
/// network namespace is deleted after it.
async fn netns_pod_deletable(c: &Cluster, ns: &str) -> Result<()> {
    let top = mounts()
        .into_iter()
        .rfind(|m| m.2 == "/run/netns")
        .expect("/run/netns is a mount point (tests/cluster/up makes it one)");
    assert!(
        top.3.contains("shared:"),
        "/run/netns is not shared: {top:?}"
    );
    let hidden: Vec<_> = mounts()
        .into_iter()
        .filter(|m| m.4 == "nsfs" && m.2.starts_with("/run/netns/") && m.1 != top.0)
        .collect();
    assert!(
        hidden.is_empty(),
        "network namespaces hidden under /run/netns: {hidden:?}"
    );

    deploy_hello(c, ns).await?;
    let pod = c.ready_pods(ns, "app=hello").await?.remove(0);
    let name = pod.metadata.name.clone().unwrap_or_default();
    let netns = format!("tpr-smoke-{ns}");
    for args in [["netns", "add", &netns], ["netns", "del", &netns]] {
        let status = std::process::Command::new("ip").args(args).status()?;
        assert!(status.success(), "ip {args:?} failed (run as root)");
    }
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    pods.delete(&name, &DeleteParams::default()).await?;
    wait_for(&format!("pod {name} to be deleted"), READY, || async {
        match pods.get_opt(&name).await? {
            Some(_) => Ok(None),
            None => Ok(Some(())),
        }
    })
    .await
}

#[tokio::test]
async fn a_pod_from_before_ip_netns_add_is_deletable_after_it() {
    in_namespace!("smoke-netns", netns_pod_deletable);
}

/// Traefik on the node's ports 80 and 443 routes an Ingress's host to the
/// Service's pod, in plain HTTP and in TLS with the cluster's wildcard
/// certificate (verified against its CA by curl and by a headless
/// browser, which fails without the CA).
async fn ingress_routes(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let host = ingress::host_for(ns);
    ingress::deploy_ingress(c, ns, &host, true).await?;
    let pods = c.ready_pods(ns, "app=hello").await?;
    let pod = pods[0].metadata.name.clone().expect("a pod name");
    for https in [false, true] {
        let r = ingress::get(&host, "/", https, &[]).await?;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, format!("hello from {pod}\n"), "{r:?}");
        let r = ingress::get(&host, "/headers", https, &["X-Test: 1"]).await?;
        let seen: serde_json::Value = serde_json::from_str(&r.body).expect("json");
        assert_eq!(seen["Host"], host.as_str(), "{seen}");
        assert_eq!(seen["X-Test"], "1", "{seen}");
        let proto = if https { "https" } else { "http" };
        assert_eq!(seen["X-Forwarded-Proto"], proto, "{seen}");
    }
    // A host no Ingress names is the controller's 404.
    let other = ingress::get(&ingress::host_for(&format!("x-{ns}")), "/", false, &[]).await?;
    assert!(
        other.status == 404 && other.is_from_controller(),
        "{other:?}"
    );
    // A browser trusting the CA gets the cluster's page with its
    // stylesheet and fetch; one that does not refuses the certificate.
    let page = format!("https://{host}/page");
    let dom = Browser::new()?.dump_dom(&page).await?;
    assert!(dom.contains(&page::result("cluster")), "{dom}");
    let err = Browser::with_ca(None)?
        .dump_dom(&page)
        .await
        .expect_err("an unknown CA");
    assert!(
        err.to_string().contains("ERR_CERT_AUTHORITY_INVALID"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn ingress_controller_routes_a_host_over_http_and_verified_tls() {
    in_namespace!("smoke-ingress", ingress_routes);
}
