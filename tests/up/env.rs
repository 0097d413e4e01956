//! The pod's environment in the local process and the env file: plain
//! `env`, a ConfigMap `envFrom`, a Secret `secretKeyRef`, the downward API.

use std::time::Duration;

use tpr_e2e::{Cluster, Result};

use crate::support::{ClientPod, ProjectDir, free_port, local_hello};
use crate::{ACTIVE, UP};

const YAML: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {DB_HOST: db.internal, DB_PORT: "5432"}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: "s3cr3t 'quoted' $x"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello}
spec:
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: hello
          image: hello:0.1.0
          args: [serve]
          ports: [{name: http, containerPort: 8080}]
          envFrom: [{configMapRef: {name: settings}, prefix: CM_}]
          env:
            - {name: PLAIN, value: plain-value}
            - name: DB_PASSWORD
              valueFrom: {secretKeyRef: {name: creds, key: password}}
            - name: MY_POD
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
            - {name: COMPOSED, value: "at $(MY_POD)"}
---
apiVersion: v1
kind: Service
metadata: {name: hello}
spec:
  selector: {app: hello}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

pub async fn env(c: &Cluster, ns: &str) -> Result<()> {
    c.apply_yaml(YAML, Some(ns)).await?;
    c.wait_deployment(ns, "hello", crate::support::READY)
        .await?;
    let client = ClientPod::start(c, ns).await?;
    let port = free_port();
    let project = ProjectDir::new(&format!(
        "format_version = 1\n[cluster]\nnamespace = \"{ns}\"\n[[intercept]]\nworkload = \"hello\"\nport = \"{port}:http\"\nenv.file = \"pod.json\"\n{}",
        local_hello(port, "hello")
    ));
    let mut up = project.up(&[]);
    up.wait_for(ACTIVE, UP).await;
    let url = format!("http://hello.{ns}/");
    let (body, _) = client
        .get_until(&url, &[], "hello from local", Duration::from_secs(20))
        .await;
    assert!(body.contains("hello from local"), "{body}");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(project.path().join("pod.json"))?)
            .expect("the env file is JSON");
    let pods = c.ready_pods(ns, "app=hello").await?;
    let pod = pods[0].metadata.name.clone().unwrap_or_default();
    for (name, want) in [
        ("PLAIN", "plain-value".to_string()),
        ("CM_DB_HOST", "db.internal".into()),
        ("CM_DB_PORT", "5432".into()),
        ("DB_PASSWORD", "s3cr3t 'quoted' $x".into()),
        ("MY_POD", pod.clone()),
        ("COMPOSED", format!("at {pod}")),
    ] {
        assert_eq!(file[name], want.as_str(), "{name} in the env file: {file}");
        let got = client
            .get(&format!("http://hello.{ns}/env?name={name}"), &[])
            .await;
        let v: serde_json::Value =
            serde_json::from_str(got.trim()).unwrap_or_else(|_| panic!("{name}: not JSON: {got}"));
        assert_eq!(v["value"], want.as_str(), "{name} in the local process");
    }
    for k in file.as_object().expect("object").keys() {
        assert!(
            !k.starts_with("TPR_"),
            "agent setting {k} leaked into the env"
        );
    }
    assert!(!up.stderr().contains("s3cr3t") && !up.stdout().contains("s3cr3t"));
    // tpr env prints the same on request.
    let out = project.tpr(&["env", "hello", "--format", "sh"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("PLAIN='plain-value'"), "{printed}");
    Ok(())
}
