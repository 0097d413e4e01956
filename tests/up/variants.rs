//! The shapes of workloads and Services an intercept must handle, all in
//! one project (one `tpr up` with several intercepts and processes).

use std::time::Duration;

use tpr_e2e::{Cluster, Result};

use crate::support::{ClientPod, ProjectDir, free_port, hello_bin};
use crate::{ACTIVE, UP};

fn yaml(sidecar_port: u16) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: numeric}}
spec:
  selector: {{matchLabels: {{app: numeric}}}}
  template:
    metadata: {{labels: {{app: numeric}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{{name: app, image: "hello:0.1.0", args: [serve], ports: [{{containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: numeric}}
spec:
  selector: {{app: numeric}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  clusterIP: None
  selector: {{app: web}}
  ports: [{{name: http, port: 8080, targetPort: 8080}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: web}}
spec:
  serviceName: web
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{{name: app, image: "hello:0.1.0", args: [serve], ports: [{{name: http, containerPort: 8080}}]}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: od}}
spec:
  serviceName: od
  updateStrategy: {{type: OnDelete}}
  selector: {{matchLabels: {{app: od}}}}
  template:
    metadata: {{labels: {{app: od}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{{name: app, image: "hello:0.1.0", args: [serve], ports: [{{name: http, containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: od}}
spec:
  selector: {{app: od}}
  ports: [{{port: 80, targetPort: http}}]
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {{name: bare}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: bare}}}}
  template:
    metadata: {{labels: {{app: bare}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{{name: app, image: "hello:0.1.0", args: [serve], ports: [{{name: http, containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: bare}}
spec:
  selector: {{app: bare}}
  ports: [{{port: 80, targetPort: http}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: two}}
spec:
  selector: {{matchLabels: {{app: two}}}}
  template:
    metadata: {{labels: {{app: two}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - {{name: app, image: "hello:0.1.0", args: [serve], ports: [{{name: http, containerPort: 8080}}]}}
        - name: admin
          image: "hello:0.1.0"
          args: [serve]
          env: [{{name: PORT, value: "9090"}}]
          ports: [{{name: admin, containerPort: 9090}}]
        - name: side
          image: "hello:0.1.0"
          args: [serve]
          env: [{{name: PORT, value: "{sidecar_port}"}}, {{name: HELLO_WHO, value: sidecar}}]
---
apiVersion: v1
kind: Service
metadata: {{name: two}}
spec:
  selector: {{app: two}}
  ports: [{{name: http, port: 80, targetPort: http}}, {{name: admin, port: 81, targetPort: admin}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: dual}}
spec:
  selector: {{matchLabels: {{app: dual}}}}
  template:
    metadata: {{labels: {{app: dual}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{{name: app, image: "hello:0.1.0", args: [serve], ports: [{{name: http, containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: dual-a}}
spec:
  selector: {{app: dual}}
  ports: [{{port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: dual-b}}
spec:
  selector: {{app: dual}}
  ports: [{{port: 80, targetPort: http}}]
"#
    )
}

fn process(name: &str, port: u16, env_from: &str) -> String {
    format!(
        "[[process]]\nname = \"{name}\"\ncommand = [\"{}\", \"serve\"]\nenv_from = \"{env_from}\"\nenv = {{ PORT = \"{port}\", HELLO_WHO = \"local-{name}\" }}\nwatch = [\"src\"]\n",
        hello_bin().display()
    )
}

pub async fn shapes(c: &Cluster, ns: &str) -> Result<()> {
    let side = free_port();
    c.apply_yaml(&yaml(side), Some(ns)).await?;
    for d in ["numeric", "two", "dual"] {
        c.wait_deployment(ns, d, crate::support::READY).await?;
    }
    c.wait_statefulset(ns, "web", crate::support::READY).await?;
    c.wait_statefulset(ns, "od", crate::support::READY).await?;
    let client = ClientPod::start(c, ns).await?;
    let p: Vec<u16> = (0..7).map(|_| free_port()).collect();
    let numeric_name = format!("numeric-{ns}");
    let toml = format!(
        "format_version = 1\n[cluster]\nnamespace = \"{ns}\"\n\
         [[intercept]]\nworkload = \"numeric\"\nnamespace = \"{ns}\"\nport = \"{}\"\n\
         [[intercept]]\nworkload = \"web\"\nport = \"{}:http\"\n\
         [[intercept]]\nworkload = \"bare\"\nkind = \"ReplicaSet\"\nport = \"{}\"\n\
         [[intercept]]\nworkload = \"two\"\nport = [\"{}:http\", \"{}:81\"]\nto_pod = [{side}]\n\
         [[intercept]]\nworkload = \"dual\"\nservice = \"dual-b\"\nport = \"{}\"\n\
         [[intercept]]\nworkload = \"od\"\nport = \"{}\"\n\
         {}{}{}{}{}{}{}",
        p[0],
        p[1],
        p[2],
        p[3],
        p[4],
        p[5],
        p[6],
        process("numeric", p[0], &numeric_name),
        process("web", p[1], "web"),
        process("bare", p[2], "bare"),
        process("two-http", p[3], "two"),
        process("two-admin", p[4], "two"),
        process("dual", p[5], "dual"),
        process("od", p[6], "od"),
    );
    let project = ProjectDir::new(&toml);
    let mut up = project.up(&[]);
    for name in [numeric_name.as_str(), "web", "bare", "two", "dual", "od"] {
        up.wait_for(&format!("Intercept name         : {name}\n"), UP)
            .await;
    }
    up.wait_for(ACTIVE, UP).await;
    let out = up.stdout();
    assert!(out.contains("Using StatefulSet web"), "{out}");
    assert!(out.contains("Using ReplicaSet bare"), "{out}");
    assert!(
        out.contains("Service Port Identifier: http, admin"),
        "{out}"
    );
    for (url, who) in [
        (format!("http://numeric.{ns}/"), "local-numeric"),
        (format!("http://web-0.web.{ns}:8080/"), "local-web"),
        (format!("http://bare.{ns}/"), "local-bare"),
        (format!("http://two.{ns}/"), "local-two-http"),
        (format!("http://two.{ns}:81/"), "local-two-admin"),
        (format!("http://dual-b.{ns}/"), "local-dual"),
        (format!("http://od.{ns}/"), "local-od"),
    ] {
        let (body, _) = client
            .get_until(
                &url,
                &[],
                &format!("hello from {who}"),
                Duration::from_secs(20),
            )
            .await;
        assert!(
            body.contains(&format!("hello from {who}")),
            "{url}: {body}\n{}",
            up.stderr()
        );
    }
    // to_pod: the sidecar's port in the pod is reachable here.
    let body = reqwest_get(&format!("127.0.0.1:{side}")).await;
    assert!(body.contains("hello from sidecar"), "{body}");
    Ok(())
}

/// A bare HTTP/1.0 GET of `/` on `addr` from this machine.
async fn reqwest_get(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return format!("connect {addr}: {e}"),
    };
    let _ = s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await;
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await;
    out
}
