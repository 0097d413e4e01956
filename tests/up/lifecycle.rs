//! A running `tpr up` through changes: an edit of the file reconciled live,
//! and the agent's pod restarting under it.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use tpr_e2e::{Cluster, Result};

use crate::support::{ClientPod, ProjectDir, deploy_hello, free_port, local_hello_as};
use crate::{ACTIVE, UP};

const OTHER: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: other}
spec:
  selector: {matchLabels: {app: other}}
  template:
    metadata: {labels: {app: other}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: app, image: "hello:0.1.0", args: [serve], ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: other}
spec:
  selector: {app: other}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

fn project(ns: &str, hello: u16, other: Option<u16>) -> String {
    let mut s = format!(
        "format_version = 1\n[cluster]\nnamespace = \"{ns}\"\n[[intercept]]\nworkload = \"hello\"\nport = \"{hello}:http\"\n"
    );
    if let Some(o) = other {
        s.push_str(&format!(
            "[[intercept]]\nworkload = \"other\"\nport = \"{o}:http\"\n"
        ));
    }
    s.push_str(&local_hello_as(hello, "hello", "local-hello"));
    if let Some(o) = other {
        s.push_str(
            &local_hello_as(o, "other", "local-other")
                .replace("name = \"local\"", "name = \"other\""),
        );
    }
    s
}

pub async fn reconcile(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    c.apply_yaml(OTHER, Some(ns)).await?;
    c.wait_deployment(ns, "other", crate::support::READY)
        .await?;
    let client = ClientPod::start(c, ns).await?;
    let (h, o) = (free_port(), free_port());
    let dir = ProjectDir::new(&project(ns, h, Some(o)));
    let mut up = dir.up(&[]);
    up.wait_for("Intercept name         : other", UP).await;
    up.wait_for(ACTIVE, UP).await;
    let hello = format!("http://hello.{ns}/");
    let other = format!("http://other.{ns}/");
    for (url, who) in [(&hello, "local-hello"), (&other, "local-other")] {
        let (b, _) = client
            .get_until(url, &[], who, Duration::from_secs(20))
            .await;
        assert!(b.contains(who), "{url}: {b}");
    }
    // `other` leaves the file: only it ends, and its agent stays installed.
    dir.write(&project(ns, h, None));
    up.wait_for("ended intercept other", Duration::from_secs(30))
        .await;
    let (b, _) = client
        .get_until(&other, &[], "hello from other-", Duration::from_secs(10))
        .await;
    assert!(b.contains("hello from other-"), "{b}");
    assert!(client.get(&hello, &[]).await.contains("local-hello"));
    let api = kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(c.client.clone(), ns);
    let d = api.get("other").await?;
    let containers = d.spec.unwrap().template.spec.unwrap().containers;
    assert!(
        containers.iter().any(|c| c.name == "tpr-agent"),
        "the agent of `other` was removed"
    );
    Ok(())
}

pub async fn reconnect(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let client = ClientPod::start(c, ns).await?;
    let port = free_port();
    let dir = ProjectDir::new(&project(ns, port, None));
    let mut up = dir.up(&[]);
    up.wait_for(ACTIVE, UP).await;
    let url = format!("http://hello.{ns}/");
    let (b, _) = client
        .get_until(&url, &[], "local-hello", Duration::from_secs(20))
        .await;
    assert!(b.contains("local-hello"), "{b}");
    // The agent's pod goes away; the Deployment makes a new one.
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    for p in c.ready_pods(ns, "app=hello").await? {
        pods.delete(
            &p.metadata.name.unwrap_or_default(),
            &DeleteParams::default(),
        )
        .await?;
    }
    up.wait_for("lost connection to agent in pod", Duration::from_secs(30))
        .await;
    up.wait_for("restored", UP).await;
    let (b, _) = client
        .get_until(&url, &[], "local-hello", Duration::from_secs(20))
        .await;
    assert!(b.contains("local-hello"), "{b}\n{}", up.stderr());
    Ok(())
}
