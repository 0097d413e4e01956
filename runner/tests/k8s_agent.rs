//! Installing the real agent image and reaching it, on the test cluster.
//! The image is `tpr-agent:<version>` (loaded by tests/cluster/load-images),
//! or `TPR_TEST_AGENT_IMAGE` to try another build.

mod k8s_support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_support::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tpr::k8s::{self, AgentSpec, Cluster, InterceptTarget, RolloutOptions};

fn target(ns: &str, workload: &str) -> InterceptTarget {
    InterceptTarget {
        workload: workload.into(),
        kind: None,
        namespace: ns.into(),
        service: None,
        port: None,
    }
}

fn opts() -> RolloutOptions {
    RolloutOptions {
        timeout: Duration::from_secs(120),
        ..Default::default()
    }
}

fn quiet(_: &str) {}

fn agent_spec() -> AgentSpec {
    match std::env::var("TPR_TEST_AGENT_IMAGE") {
        Ok(image) => AgentSpec {
            image,
            ..Default::default()
        },
        Err(_) => AgentSpec::default(),
    }
}

/// GET /healthz through a port-forward to `pod:port`.
async fn healthz(c: &Cluster, ns: &str, pod: &str, port: u16) -> String {
    let mut s = k8s::port_forward(c, ns, pod, port).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .unwrap_or_else(|e| panic!("port-forward {pod}:{port}: {e}"));
    out
}

fn container_names(p: &Pod) -> Vec<String> {
    p.spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .map(|c| c.name.clone())
        .collect()
}

async fn install(c: &Cluster, ns: &str, name: &str) -> k8s::InstallOutcome {
    let r = k8s::resolve(c, &target(ns, name)).await.unwrap();
    let messages = std::sync::Mutex::new(Vec::<String>::new());
    let progress = |m: &str| messages.lock().unwrap().push(m.to_string());
    let out = k8s::install(
        c,
        &r.workload,
        &[r.port_request(false)],
        &agent_spec(),
        &opts(),
        &progress,
    )
    .await
    .unwrap_or_else(|e| panic!("install {name}: {e}"));
    let kind = r.workload.kind();
    assert!(
        messages
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.starts_with(&format!("rolling out {kind}/{name}: ")))
    );
    out
}

#[tokio::test]
async fn deployment_with_named_port_runs_the_agent() {
    let c = admin().await;
    let ns = TestNs::new(&c, "agent-deploy").await;
    let n = ns.name.as_str();
    deploy_app(
        &c,
        n,
        json!([{"name": "web", "port": 80, "targetPort": "http"}]),
    )
    .await;
    let before = get_json(&c, n, "apps/v1", "Deployment", "app").await;

    assert!(install(&c, n, "app").await.changed);
    let w = k8s::resolve(&c, &target(n, "app")).await.unwrap().workload;
    let agent = k8s::find_agent_pod(&c, &w).await.unwrap();
    assert_eq!(agent.grpc_port, 9900);
    let pods = ready_pods(&c, n, "app=app,tpr.dev/agent=1").await;
    let pod = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(&agent.name))
        .expect("the agent pod is ready");
    assert_eq!(container_names(pod), ["hello", "tpr-agent"]);
    let app_port = &pod.spec.as_ref().unwrap().containers[0]
        .ports
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        (app_port.name.as_deref(), app_port.container_port),
        (Some("tpr-http"), 8080)
    );

    // The agent's port relays to the app (no intercept yet).
    let reply = healthz(&c, n, &agent.name, 9901).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // gRPC over the port-forward: a method the agent does not have gets
    // the gRPC server's own `Unimplemented`.
    let channel = k8s::agent_channel(&c, n, &agent.name, agent.grpc_port);
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = http::uri::PathAndQuery::from_static("/tpr.test.Nothing/Nothing");
    let status = grpc
        .unary(tonic::Request::new(()), path, codec)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

    // The agent's pod goes away: a new one is found and reached.
    let pods: kube::Api<Pod> = kube::Api::namespaced(c.client().clone(), n);
    pods.delete(&agent.name, &Default::default()).await.unwrap();
    let again = k8s::wait_for_agent_pod(&c, &w, Duration::from_secs(60))
        .await
        .unwrap();
    assert_ne!(again.name, agent.name);
    let reply = healthz(&c, n, &again.name, 9901).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // Uninstall: the template as it was, pods without the agent.
    assert!(
        k8s::uninstall(&c, n, "app", None, &opts(), &quiet)
            .await
            .unwrap()
            .changed
    );
    let after = get_json(&c, n, "apps/v1", "Deployment", "app").await;
    assert_eq!(after["spec"]["template"], before["spec"]["template"]);
    let pods = wait_ready(&c, n, "app=app", 1).await;
    assert_eq!(container_names(&pods[0]), ["hello"]);
}

#[tokio::test]
async fn headless_statefulset_gets_the_init_container() {
    let c = admin().await;
    let ns = TestNs::new(&c, "agent-sts").await;
    let n = ns.name.as_str();
    create(&c, n, statefulset("db", 1, "db", "RollingUpdate")).await;
    let mut svc = service("db", "db", json!([{"port": 8080, "targetPort": "http"}]));
    svc["spec"]["clusterIP"] = json!("None");
    create(&c, n, svc).await;
    wait_ready(&c, n, "app=db", 1).await;
    let before = get_json(&c, n, "apps/v1", "StatefulSet", "db").await;

    let out = install(&c, n, "db").await;
    assert_eq!(out.ports[0].mode, k8s::PortMode::Redirect);
    let pods = wait_ready(&c, n, "app=db,tpr.dev/agent=1", 1).await;
    let init = pods[0]
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .clone()
        .unwrap();
    assert_eq!(init[0].name, "tpr-agent-init");
    let status = pods[0]
        .status
        .as_ref()
        .unwrap()
        .init_container_statuses
        .clone()
        .unwrap();
    let done = status[0]
        .state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .expect("init finished");
    assert_eq!(done.exit_code, 0);
    // The app port still answers (through the redirect and the agent).
    let pod = pods[0].metadata.name.clone().unwrap();
    let reply = healthz(&c, n, &pod, 9901).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    k8s::uninstall(&c, n, "db", None, &opts(), &quiet)
        .await
        .unwrap();
    let after = get_json(&c, n, "apps/v1", "StatefulSet", "db").await;
    assert_eq!(after["spec"]["template"], before["spec"]["template"]);
    let pods = wait_ready(&c, n, "app=db", 1).await;
    assert_eq!(container_names(&pods[0]), ["hello"]);
}

#[tokio::test]
async fn bare_replicaset_and_ondelete_statefulset_get_new_pods() {
    let c = admin().await;
    let ns = TestNs::new(&c, "agent-replace").await;
    let n = ns.name.as_str();
    create(&c, n, replicaset("bare", 1)).await;
    create(
        &c,
        n,
        service("bare", "bare", json!([{"port": 80, "targetPort": "http"}])),
    )
    .await;
    create(&c, n, statefulset("ondel", 1, "ondel", "OnDelete")).await;
    create(
        &c,
        n,
        service("ondel", "ondel", json!([{"port": 80, "targetPort": 8080}])),
    )
    .await;
    for name in ["bare", "ondel"] {
        let sel = format!("app={name}");
        let old = wait_ready(&c, n, &sel, 1).await[0].metadata.uid.clone();
        install(&c, n, name).await;
        let pods = wait_ready(&c, n, &sel, 1).await;
        assert_ne!(pods[0].metadata.uid, old, "{name}: the pod was replaced");
        assert_eq!(container_names(&pods[0]), ["hello", "tpr-agent"], "{name}");
        k8s::uninstall(&c, n, name, None, &opts(), &quiet)
            .await
            .unwrap();
        let pods = wait_ready(&c, n, &sel, 1).await;
        assert_eq!(
            container_names(&pods[0]),
            ["hello"],
            "{name}: the agent is gone"
        );
    }
}
