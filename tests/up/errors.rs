//! Every error case of `tpr up`: a message naming the problem and the fix,
//! a non-zero exit, and the workload unchanged.

use tpr_e2e::{Cluster, Result};

use crate::support::{ProjectDir, deploy_hello, free_port};
use crate::{bare_project, template_json, text};

const ERRORS_YAML: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: hello-2}
spec:
  selector: {app: hello}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: multi}
spec:
  selector: {matchLabels: {app: multi}}
  template:
    metadata: {labels: {app: multi}}
    spec:
      containers:
        - name: multi
          image: hello:0.1.0
          args: [serve]
          ports: [{name: http, containerPort: 8080}, {name: admin, containerPort: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: multi}
spec:
  selector: {app: multi}
  ports: [{name: http, port: 80, targetPort: http}, {name: admin, port: 9090, targetPort: admin}]
---
apiVersion: v1
kind: Service
metadata: {name: manual}
spec:
  ports: [{port: 80, targetPort: 8080}]
"#;

/// Runs `tpr up --once` on `toml`; asserts it fails naming `expected`,
/// and that nothing was installed.
pub(crate) async fn fails(
    c: &Cluster,
    ns: &str,
    toml: &str,
    expected: &[&str],
    env: &[(&str, &str)],
) {
    let before = template_json(c, ns, "hello").await.ok();
    let project = ProjectDir::new(toml);
    let out = project.tpr_env(&["up", "--once"], env);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    // The message as one line: the terminal renderer wraps long ones.
    let flat = all
        .split_whitespace()
        .filter(|w| *w != "│")
        .collect::<Vec<_>>()
        .join(" ");
    for e in expected {
        assert!(flat.contains(e), "expected {e:?} in\n{all}");
    }
    assert_eq!(
        template_json(c, ns, "hello").await.ok(),
        before,
        "the workload changed"
    );
}

pub async fn errors(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    c.apply_yaml(ERRORS_YAML, Some(ns)).await?;
    let p = free_port();
    // Two Services select hello and the file names none.
    fails(
        c,
        ns,
        &bare_project(ns, "hello", &p.to_string(), ""),
        &["several Services select", "hello, hello-2", "set `service`"],
        &[],
    )
    .await;
    // A Service with two ports and no port in the file.
    fails(
        c,
        ns,
        &bare_project(ns, "multi", &p.to_string(), ""),
        &["admin/9090", "http/80"],
        &[],
    )
    .await;
    // A Service without a selector.
    fails(
        c,
        ns,
        &bare_project(ns, "hello", &p.to_string(), "service = \"manual\""),
        &["has no selector", "cannot be intercepted"],
        &[],
    )
    .await;
    // No such workload.
    fails(
        c,
        ns,
        &bare_project(ns, "nosuch", &p.to_string(), ""),
        &["named `nosuch`", "tpr list"],
        &[],
    )
    .await;
    // An invalid file: nothing happens.
    fails(
        c,
        ns,
        &bare_project(ns, "hello", "http", "mechanism = \"udp\""),
        &["telepresence.toml:"],
        &[],
    )
    .await;
    // A dead cluster.
    let dead = tempfile::tempdir().expect("tmp");
    let kubeconfig = dead.path().join("config");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: dead\nclusters: [{name: dead, cluster: {server: \"https://127.0.0.1:1\"}}]\nusers: [{name: u, user: {token: x}}]\ncontexts: [{name: dead, context: {cluster: dead, user: u}}]\n",
    )?;
    let kc = kubeconfig.display().to_string();
    fails(
        c,
        ns,
        &bare_project(ns, "hello", &format!("{p}:http"), ""),
        &["cannot reach the cluster", "127.0.0.1:1"],
        &[("KUBECONFIG", &kc)],
    )
    .await;
    // An unknown context.
    let unknown_context = bare_project(ns, "hello", &format!("{p}:http"), "")
        .replace("[cluster]\n", "[cluster]\ncontext = \"nope\"\n");
    fails(c, ns, &unknown_context, &["context `nope`"], &[]).await;
    Ok(())
}

/// A `to_pod` port another program holds on the workstation: the error
/// says it is this machine's, says the cause once, and how to fix it.
pub async fn to_pod_port_taken(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let project = ProjectDir::new(&bare_project(
        ns,
        "hello",
        &format!("{}:http", free_port()),
        &format!("to_pod = [{port}]"),
    ));
    let out = project.tpr(&["up", "--once"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (once, what) in [
        ("on this workstation:", "the side"),
        (
            &format!("cannot listen on 127.0.0.1:{port}") as &str,
            "the failure",
        ),
        ("in use", "the cause"),
    ] {
        assert_eq!(stderr.matches(once).count(), 1, "{what} once: {all}");
    }
    assert!(
        !stderr.contains("traffic agent in pod"),
        "not the agent's failure: {all}"
    );
    assert!(stderr.contains(&format!("free port {port}")), "{all}");
    drop(taken);
    Ok(())
}
