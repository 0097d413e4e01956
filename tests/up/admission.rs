//! What the namespace's admission refuses: a namespace that enforces the
//! `restricted` Pod Security Standard, and a ResourceQuota with no room for
//! the agent's pods. Either is said at once, with its reason, and the
//! workload stays as it was.

use std::time::Instant;

use tpr_e2e::{Cluster, Result};

use crate::errors::fails;
use crate::support::{ProjectDir, READY, deploy_hello, free_port};
use crate::{ACTIVE, bare_project, text};

/// Two apps that meet `restricted` themselves: `named` (Service targetPort
/// `http`) and `hello` (targetPort 8080). The settings are the app
/// container's own, not the pod's, so the agent's container must meet the
/// standard by itself.
fn restricted_yaml(ns: &str) -> String {
    let app = |name: &str, target_port: &str| {
        format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: app
          image: hello:0.1.0
          imagePullPolicy: IfNotPresent
          args: [serve]
          ports: [{{name: http, containerPort: 8080}}]
          securityContext:
            runAsNonRoot: true
            runAsUser: 1000
            allowPrivilegeEscalation: false
            capabilities: {{drop: [ALL]}}
            seccompProfile: {{type: RuntimeDefault}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: {target_port}}}]
---"#
        )
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {{pod-security.kubernetes.io/enforce: restricted}}\n---{}{}",
        app("named", "http"),
        app("hello", "8080")
    )
}

pub async fn restricted(c: &Cluster, ns: &str) -> Result<()> {
    c.apply_yaml(&restricted_yaml(ns), Some(ns)).await?;
    c.wait_deployment(ns, "named", READY).await?;
    c.wait_deployment(ns, "hello", READY).await?;
    // A numeric targetPort needs the NET_ADMIN init container: refused
    // before any change, saying what works instead.
    fails(
        c,
        ns,
        &bare_project(ns, "hello", &format!("{}:http", free_port()), ""),
        &[
            "enforces the `restricted` Pod Security Standard",
            "port 8080 of deployment/hello",
            "nothing was changed",
            "set the Service's targetPort to that name",
        ],
        &[],
    )
    .await;
    // A named targetPort: the agent goes in (its container meets
    // `restricted`) and the intercept is made.
    let project = ProjectDir::new(&bare_project(
        ns,
        "named",
        &format!("{}:http", free_port()),
        "",
    ));
    let out = project.tpr(&["up", "--once"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains(ACTIVE), "{all}");
    Ok(())
}

pub async fn quota(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    // Room for the running pod and no more: the rollout's new pod is refused.
    c.apply_yaml(
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: pods}\nspec: {hard: {pods: \"1\"}}\n",
        Some(ns),
    )
    .await?;
    let started = Instant::now();
    fails(
        c,
        ns,
        &bare_project(ns, "hello", &format!("{}:http", free_port()), ""),
        &[
            "rollout of deployment/hello failed: its pods cannot be created",
            "exceeded quota: pods",
            "the previous pod template was restored",
        ],
        &[],
    )
    .await;
    eprintln!("quota refusal reported in {:?}", started.elapsed());
    Ok(())
}
