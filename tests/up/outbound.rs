//! Outbound: the processes of `tpr up` (and `tpr exec`) reach the cluster
//! as the intercepted pod does. This machine routes to pods and Services
//! itself, so every case checks that the traffic went through the agent:
//! the server (`hello`'s `/peer`) sees the intercepted pod's IP, never this
//! machine's.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::Api;
use tpr_e2e::{Cluster, Result};

use crate::support::{ClientPod, ProjectDir, deploy_hello, free_port, local_hello};
use crate::{ACTIVE, UP, text};

/// Deployment and Service `web` (hello answering "hello from web").
pub const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - {name: web, image: "hello:0.1.0", args: [serve], env: [{name: HELLO_WHO, value: web}], ports: [{name: http, containerPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

/// The headless Service and StatefulSet `db`.
const DB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - {name: db, image: "hello:0.1.0", args: [serve], ports: [{name: http, containerPort: 8080}]}
"#;

/// The cluster's servers of these tests: [`WEB`] and [`DB`].
async fn deploy_servers(c: &Cluster, ns: &str) -> Result<()> {
    c.apply_yaml(WEB, Some(ns)).await?;
    c.apply_yaml(DB, Some(ns)).await?;
    Ok(())
}

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
      containers:
        - {name: other, image: "hello:0.1.0", args: [serve], ports: [{name: http, containerPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: other}
spec:
  selector: {app: other}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

async fn pod_ip(c: &Cluster, ns: &str, selector: &str) -> Result<String> {
    let pods = c.ready_pods(ns, selector).await?;
    Ok(pods
        .first()
        .and_then(|p: &Pod| p.status.as_ref()?.pod_ip.clone())
        .unwrap_or_else(|| panic!("no ready pod {selector} in {ns}")))
}

/// `tpr exec -- sh -c SCRIPT` in the project: its output.
fn exec(project: &ProjectDir, script: &str) -> Output {
    project.tpr(&["exec", "--", "sh", "-c", script])
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A host nameserver on loopback for the names the cluster does not know:
/// `external.tpr.test` is 192.0.2.10, everything else NXDOMAIN.
fn fake_host_dns() -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let q = &buf[..n];
            if n < 17 {
                continue;
            }
            let end = 12 + q[12..].iter().position(|b| *b == 0).unwrap_or(0) + 5;
            let mut a = q[..end.min(n)].to_vec();
            a[2] = 0x81;
            a[3] = 0x80;
            a[8..12].fill(0);
            let wanted = b"\x08external\x03tpr\x04test\x00\x00\x01";
            if q[12..].starts_with(wanted) {
                a[6..8].copy_from_slice(&1u16.to_be_bytes());
                a.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 10]);
            } else {
                a[3] = 0x83;
                a[6..8].fill(0);
            }
            let _ = socket.send_to(&a, from);
        }
    });
    addr
}

/// A service on this machine's localhost only.
fn host_service() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut tcp in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf);
            let _ = tcp.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 15\r\n\r\nhost-local-only");
        }
    });
    port
}

/// sha256 of bytes a command writes, by `sha256sum`.
fn sha256_of(write: impl FnOnce(&mut dyn Write)) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    write(child.stdin.as_mut().expect("stdin"));
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The stream of `hello`'s /blob (xorshift64 from 1, little-endian).
fn blob(out: &mut dyn Write, n: usize) {
    let mut x: u64 = 1;
    let mut left = n;
    let mut buf = vec![0u8; 64 << 10];
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let m = left.min(buf.len());
        out.write_all(&buf[..m]).expect("write");
        left -= m;
    }
}

pub async fn outbound(c: &Cluster, ns: &str) -> Result<()> {
    let other_ns = c.namespace("up-out-other").await?;
    let result = cases(c, ns, &other_ns).await;
    let _ = c.delete_namespace(&other_ns).await;
    result
}

async fn cases(c: &Cluster, ns: &str, other_ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    deploy_servers(c, ns).await?;
    c.apply_yaml(OTHER, Some(other_ns)).await?;
    c.wait_deployment(ns, "web", crate::support::READY).await?;
    c.wait_statefulset(ns, "db", crate::support::READY).await?;
    c.wait_deployment(other_ns, "other", crate::support::READY)
        .await?;
    let client = ClientPod::start(c, ns).await?;

    let dns = fake_host_dns();
    let host_port = host_service();
    let port = free_port();
    let project = ProjectDir::new(&format!(
        "format_version = 1\n[cluster]\nnamespace = \"{ns}\"\n[[intercept]]\nworkload = \"hello\"\nport = \"{port}:http\"\n{}",
        local_hello(port, "hello")
    ));
    let mut up = project.up_env(&[], &[("TPR_HOST_NAMESERVERS", &dns.to_string())]);
    up.wait_for(ACTIVE, UP).await;
    up.wait_for("process local started", UP).await;

    // The intercepted port still reaches the process, which listens on
    // its namespace's localhost.
    let (body, _) = client
        .get_until(
            &format!("http://hello.{ns}/"),
            &[],
            "hello from local",
            Duration::from_secs(30),
        )
        .await;
    assert!(body.contains("hello from local"), "{body}");

    let source = pod_ip(c, ns, "app=hello").await?;
    let web_ip = pod_ip(c, ns, "app=web").await?;
    let services: Api<Service> = Api::namespaced(c.client.clone(), ns);
    let cluster_ip = services
        .get("web")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("web has a ClusterIP");

    // Inside, the only route is tpr's, and resolv.conf is tpr's.
    let inside = exec(&project, "cat /etc/resolv.conf; ip route");
    let inside_text = stdout(&inside);
    assert!(
        inside_text.contains("nameserver 127.0.0.53"),
        "{}",
        text(&inside)
    );
    assert!(
        inside_text.contains(&format!("search {ns}.svc.cluster.local")),
        "{}",
        text(&inside)
    );
    assert!(
        inside_text.contains("default dev tpr0"),
        "{}",
        text(&inside)
    );
    assert!(
        !inside_text.contains("10.244.0.0"),
        "a route to the pods: {}",
        text(&inside)
    );

    // Each way of naming a server: the server sees the intercepted pod.
    let targets = [
        "http://web/peer".to_owned(),
        format!("http://web.{ns}/peer"),
        format!("http://web.{ns}.svc.cluster.local/peer"),
        format!("http://{cluster_ip}/peer"),
        format!("http://{web_ip}:8080/peer"),
        "http://db-0.db:8080/peer".to_owned(),
        format!("http://other.{other_ns}/peer"),
    ];
    for url in &targets {
        let out = exec(&project, &format!("curl -sS --max-time 20 {url}"));
        assert_eq!(stdout(&out), source, "{url}: {}", text(&out));
    }

    // The same from the process's own view: `tpr exec` without sh.
    let out = project.tpr(&[
        "exec",
        "--",
        "curl",
        "-sS",
        "--max-time",
        "20",
        "http://web/",
    ]);
    assert_eq!(stdout(&out), "hello from web", "{}", text(&out));

    // A name nobody knows: NXDOMAIN (getent's 2), from the cluster for the
    // search-list names and from the host's resolver for the bare one.
    let out = exec(&project, "getent hosts no-such-name-xyz; echo status=$?");
    assert!(stdout(&out).ends_with("status=2"), "{}", text(&out));
    // A name only the host's resolver knows.
    let out = exec(&project, "getent hosts external.tpr.test");
    assert!(stdout(&out).starts_with("192.0.2.10"), "{}", text(&out));

    // A service on this machine's localhost, by its alias.
    let out = exec(
        &project,
        &format!("curl -sS --max-time 20 http://host.tpr.internal:{host_port}/"),
    );
    assert_eq!(stdout(&out), "host-local-only", "{}", text(&out));

    // A closed port in the cluster: refused through the agent, reported.
    let out = exec(
        &project,
        &format!("curl -sS --max-time 20 http://{web_ip}:8099/; echo status=$?"),
    );
    assert!(!stdout(&out).ends_with("status=0"), "{}", text(&out));
    up.wait_for("outbound via intercept hello", Duration::from_secs(10))
        .await;

    // 100 MiB each way, intact.
    const N: usize = 100 << 20;
    let want = sha256_of(|w| blob(w, N));
    let out = exec(
        &project,
        &format!("curl -sS --max-time 300 'http://web/blob?n={N}' | sha256sum"),
    );
    assert!(stdout(&out).starts_with(&want), "download: {}", text(&out));
    let zeros = sha256_of(|w| {
        let buf = vec![0u8; 1 << 20];
        for _ in 0..100 {
            w.write_all(&buf).expect("write");
        }
    });
    let out = exec(
        &project,
        &format!("head -c {N} /dev/zero | curl -sS --max-time 300 --data-binary @- http://web/sum"),
    );
    assert_eq!(
        stdout(&out),
        format!("{N} {zeros}"),
        "upload: {}",
        text(&out)
    );

    // 200 connections at once, each answered from the pod's address.
    let out = exec(
        &project,
        "for i in $(seq 200); do curl -sS --max-time 60 http://web/peer & done; wait",
    );
    let answers: Vec<&str> = std::str::from_utf8(&out.stdout)
        .unwrap_or_default()
        .lines()
        .collect();
    assert_eq!(answers.len(), 200, "{}", text(&out));
    assert!(answers.iter().all(|a| *a == source), "{}", text(&out));

    // `tpr status` says how the process reaches the network.
    let out = project.tpr(&["status"]);
    assert!(
        stdout(&out).contains("Network    : local in an outbound namespace via intercept hello"),
        "{}",
        text(&out)
    );
    Ok(())
}

/// The namespace inode of a process (`net:[4026532...]`).
fn netns_of(pid: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|p| p.display().to_string())
}

/// Whether any process, or any open file, still holds the namespace.
fn netns_held(ns: &str) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        let pid = p.file_name().to_string_lossy().to_string();
        if pid.parse::<u32>().is_err() {
            return false;
        }
        netns_of(&pid).as_deref() == Some(ns)
            || std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| l.display().to_string() == ns)
                })
            })
    })
}

/// SIGKILL of `tpr up`: the process and its namespace (with the TUN device
/// and the resolv.conf mount in it) are gone.
pub async fn sigkill(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let port = free_port();
    let project = ProjectDir::new(&format!(
        "format_version = 1\n[cluster]\nnamespace = \"{ns}\"\n[[intercept]]\nworkload = \"hello\"\nport = \"{port}:http\"\n{}",
        local_hello(port, "hello")
    ));
    let mut up = project.up(&[]);
    up.wait_for(ACTIVE, UP).await;
    up.wait_for("process local started", UP).await;
    // The local hello: the process running the hello binary whose
    // environment has its PORT. The wrapper that enters the namespace has
    // the same command line until it execs: wait for the exec.
    let hello = std::fs::canonicalize(crate::support::hello_bin()).expect("hello binary");
    let find = || {
        let pids = Command::new("pgrep")
            .args([
                "-f",
                &format!("{} serve", crate::support::hello_bin().display()),
            ])
            .output()
            .expect("pgrep");
        String::from_utf8_lossy(&pids.stdout)
            .split_whitespace()
            .find(|pid| {
                let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == hello)
                    && String::from_utf8_lossy(&environ).contains(&format!("PORT={port}\0"))
            })
            .map(|pid| (pid.to_owned(), netns_of(pid).expect("its namespace")))
    };
    let started = std::time::Instant::now();
    let (pid, netns) = loop {
        if let Some(found) = find() {
            break found;
        }
        assert!(started.elapsed() < UP, "the local process never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(
        netns_of("self"),
        Some(netns.clone()),
        "the process has its own namespace"
    );
    up.kill9();
    let gone = tpr_e2e::wait_for(
        "the process and its namespace gone",
        Duration::from_secs(15),
        || {
            let (pid, netns) = (pid.clone(), netns.clone());
            async move {
                let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
                Ok((!alive && !netns_held(&netns)).then_some(()))
            }
        },
    )
    .await;
    assert!(gone.is_ok(), "still there: pid {pid} or {netns}");
    Ok(())
}

/// The project of the outbound cases: the local hello, intercepting
/// `workload`'s `http` port, with `extra` in its intercept.
fn intercept_project(ns: &str, workload: &str, extra: &str) -> ProjectDir {
    let port = free_port();
    ProjectDir::new(&format!(
        "format_version = 1\n[cluster]\nnamespace = \"{ns}\"\n[[intercept]]\nworkload = \"{workload}\"\nport = \"{port}:http\"\n{extra}\n{}",
        local_hello(port, workload)
    ))
}

/// The agent's pod deleted while an outbound connection is open: the
/// process sees that connection end (an error, not a hang), and once tpr
/// has reconnected to the new pod, new connections leave from it.
pub async fn pod_deleted(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    deploy_servers(c, ns).await?;
    c.wait_deployment(ns, "web", crate::support::READY).await?;
    let project = std::sync::Arc::new(intercept_project(ns, "hello", ""));
    let mut up = project.up(&[]);
    up.wait_for(ACTIVE, UP).await;
    up.wait_for("process local started", UP).await;
    let old = c.ready_pods(ns, "app=hello").await?;
    let source = pod_ip(c, ns, "app=hello").await?;
    let out = exec(&project, "curl -sS --max-time 20 http://web/peer");
    assert_eq!(stdout(&out), source, "{}", text(&out));

    // A keep-alive connection, open and idle once its answer is in: bash
    // holds it, `cat` waits for its end.
    let answer = project.path().join("answer");
    let script = format!(
        "exec 3<>/dev/tcp/web/80 || exit 9; \
         printf 'GET /peer HTTP/1.1\\r\\nHost: web\\r\\n\\r\\n' >&3; \
         cat <&3 >{}; echo ended status=$?",
        answer.display()
    );
    let p = project.clone();
    let open = tokio::task::spawn_blocking(move || p.tpr(&["exec", "--", "bash", "-c", &script]));
    let body = format!("\r\n\r\n{source}\n");
    let answered = tpr_e2e::wait_for(
        "the answer on the open connection",
        Duration::from_secs(30),
        || {
            let got = std::fs::read_to_string(&answer).unwrap_or_default();
            let done = got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with(&body);
            async move { Ok(done.then_some(())) }
        },
    )
    .await;
    assert!(
        answered.is_ok(),
        "{:?}\n{}",
        std::fs::read_to_string(&answer),
        up.stderr()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!open.is_finished(), "the connection ended by itself");

    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let deleted = std::time::Instant::now();
    for p in &old {
        pods.delete(
            p.metadata.name.as_deref().unwrap_or_default(),
            &kube::api::DeleteParams::default(),
        )
        .await?;
    }
    let out = tokio::time::timeout(Duration::from_secs(60), open)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the open connection still hangs 60 s after the pod went\n{}",
                up.stderr()
            )
        })
        .expect("the connection's task");
    let took = deleted.elapsed();
    eprintln!(
        "the open connection ended {took:?} after the pod's deletion: {}",
        text(&out)
    );
    assert!(stdout(&out).starts_with("ended status="), "{}", text(&out));
    assert!(took < Duration::from_secs(30), "{took:?}: {}", text(&out));

    // tpr reconnects to the new pod; new connections leave from it.
    up.wait_for("lost connection to agent in pod", Duration::from_secs(30))
        .await;
    up.wait_for("restored", UP).await;
    let new_source = pod_ip(c, ns, "app=hello").await?;
    assert_ne!(new_source, source, "the same pod IP");
    let out = exec(&project, "curl -sS --max-time 20 http://web/peer");
    assert_eq!(stdout(&out), new_source, "{}\n{}", text(&out), up.stderr());
    let out = exec(&project, "getent hosts web; echo status=$?");
    assert!(stdout(&out).ends_with("status=0"), "{}", text(&out));
    Ok(())
}

/// A workload with a sidecar on `side` that only its pod's localhost reaches.
fn sidecar_yaml(side: u16) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: side}}
spec:
  selector: {{matchLabels: {{app: side}}}}
  template:
    metadata: {{labels: {{app: side}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - {{name: app, image: "hello:0.1.0", args: [serve], ports: [{{name: http, containerPort: 8080}}]}}
        - name: side
          image: "hello:0.1.0"
          args: [serve]
          env: [{{name: PORT, value: "{side}"}}, {{name: HELLO_WHO, value: sidecar}}]
---
apiVersion: v1
kind: Service
metadata: {{name: side}}
spec:
  selector: {{app: side}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#
    )
}

/// A `to_pod` port from inside the namespace: the process's 127.0.0.1:PORT
/// is the pod's sidecar, reached over the pod's own localhost.
pub async fn to_pod(c: &Cluster, ns: &str) -> Result<()> {
    let side = free_port();
    c.apply_yaml(&sidecar_yaml(side), Some(ns)).await?;
    c.wait_deployment(ns, "side", crate::support::READY).await?;
    let project = intercept_project(ns, "side", &format!("to_pod = [{side}]"));
    let mut up = project.up(&[]);
    up.wait_for(ACTIVE, UP).await;
    up.wait_for("process local started", UP).await;
    let out = exec(
        &project,
        &format!(
            "ip route | grep -q 'default dev tpr0' || exit 9; \
             curl -sS --max-time 20 http://127.0.0.1:{side}/ && \
             curl -sS --max-time 20 http://127.0.0.1:{side}/peer"
        ),
    );
    assert_eq!(
        stdout(&out),
        "hello from sidecar\n127.0.0.1",
        "{}\n{}",
        text(&out),
        up.stderr()
    );
    Ok(())
}

/// The record types beyond A: an ExternalName Service's CNAME, SRV for a
/// named port (a Service and a headless one), PTR for a Service IP and a
/// headless pod's IP. The host's resolver (a fake) knows none of them, so
/// every answer is the cluster's, through the agent.
pub async fn dns_records(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    deploy_servers(c, ns).await?;
    c.apply_yaml(
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: ext}}\nspec: {{type: ExternalName, externalName: web.{ns}.svc.cluster.local}}\n"
        ),
        Some(ns),
    )
    .await?;
    c.wait_deployment(ns, "web", crate::support::READY).await?;
    c.wait_statefulset(ns, "db", crate::support::READY).await?;
    let services: Api<Service> = Api::namespaced(c.client.clone(), ns);
    let cluster_ip = services
        .get("web")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("web has a ClusterIP");
    let db_ip = pod_ip(c, ns, "app=db").await?;

    let dns = fake_host_dns();
    let project = intercept_project(ns, "hello", "");
    let mut up = project.up_env(&[], &[("TPR_HOST_NAMESERVERS", &dns.to_string())]);
    up.wait_for(ACTIVE, UP).await;
    up.wait_for("process local started", UP).await;
    let web = format!("web.{ns}.svc.cluster.local.");
    let db0 = format!("db-0.db.{ns}.svc.cluster.local.");
    let cases = [
        (
            format!("ext.{ns}.svc.cluster.local"),
            format!("{web}\n{cluster_ip}"),
        ),
        (
            format!("SRV _http._tcp.web.{ns}.svc.cluster.local"),
            format!("0 100 80 {web}"),
        ),
        (
            format!("SRV _http._tcp.db.{ns}.svc.cluster.local"),
            format!("0 100 8080 {db0}"),
        ),
        (format!("-x {cluster_ip}"), web.clone()),
        (format!("-x {db_ip}"), db0.clone()),
    ];
    for (query, want) in &cases {
        let out = exec(
            &project,
            &format!("dig +short +time=5 +tries=1 @127.0.0.53 {query}"),
        );
        assert_eq!(&stdout(&out), want, "dig {query}: {}", text(&out));
    }
    // The ExternalName by its short name, as a program's libc asks.
    let out = exec(&project, "getent hosts ext");
    assert!(
        stdout(&out).starts_with(&format!("{cluster_ip} ")),
        "{}",
        text(&out)
    );
    Ok(())
}

/// A Service whose selector matches no pod: the cluster refuses its
/// ClusterIP's connections.
const NO_ENDPOINTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: nobody}
spec:
  selector: {app: nobody}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#;

/// `GET http://HOST/blob?n=N` read at most RATE bytes a second, 16 KiB at
/// a time, with a small receive buffer (so the window shuts after every
/// few reads); the body to stdout. Arguments: HOST N RATE.
const SLOW_READER: &str = r#"
import socket, sys, time
host, n, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
s.settimeout(60)
s.connect((host, 80))
s.sendall(b"GET /blob?n=%d HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (n, host.encode()))
data, start, done = b"", time.monotonic(), 0
while b"\r\n\r\n" not in data:
    data += s.recv(16384)
body = data.split(b"\r\n\r\n", 1)[1]
while True:
    sys.stdout.buffer.write(body)
    done += len(body)
    time.sleep(max(0.0, start + done / rate - time.monotonic()))
    body = s.recv(16384)
    if not body:
        break
"#;

/// Flow control and failures, as the process sees them through the agent:
/// a process reading slower than the server sends gets every byte at its
/// own pace (its window shuts and reopens all along), and a destination
/// that refuses in the cluster refuses the process's connect() at once
/// (ECONNREFUSED, as in the pod), not a connection that ends empty, and a
/// connection the pod's peer resets is reset for the process too.
pub async fn slow_reader_and_refusals(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    deploy_servers(c, ns).await?;
    c.apply_yaml(NO_ENDPOINTS, Some(ns)).await?;
    c.wait_deployment(ns, "web", crate::support::READY).await?;
    let project = intercept_project(ns, "hello", "");
    let mut up = project.up(&[]);
    up.wait_for(ACTIVE, UP).await;
    up.wait_for("process local started", UP).await;
    let web_ip = pod_ip(c, ns, "app=web").await?;

    // 4 MiB read at 256 KiB/s: 16 s at the reader's pace (a stack that
    // resumes only on a timer, or overruns the shut window: a minute).
    let reader = project.path().join("slow.py");
    std::fs::write(&reader, SLOW_READER).expect("write the reader");
    const N: usize = 4 << 20;
    let want = sha256_of(|w| blob(w, N));
    let started = Instant::now();
    let out = exec(
        &project,
        &format!("python3 {} web {N} 262144 | sha256sum", reader.display()),
    );
    let took = started.elapsed();
    assert!(stdout(&out).starts_with(&want), "slow read: {}", text(&out));
    eprintln!("4 MiB read at 256 KiB/s through the tunnel: {took:?} (ideal 16 s)");
    assert!(took < Duration::from_secs(48), "slow read took {took:?}");

    // Refused in the cluster: a closed port of a pod, a Service with no
    // endpoints. bash's connect() says what it got.
    let refusals = [
        ("a closed port", format!("{web_ip}/8099")),
        ("a Service with no endpoints", "nobody/80".to_owned()),
    ];
    for (what, dest) in refusals {
        let started = Instant::now();
        let out = project.tpr(&[
            "exec",
            "--",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{dest}"),
        ]);
        let took = started.elapsed();
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("connect: Connection refused"),
            "{what}: {}",
            text(&out)
        );
        assert!(
            took < Duration::from_secs(5),
            "{what}: refused after {took:?}"
        );
    }
    // A Service whose pod resets the connection mid-request: the process
    // sees the reset (curl's 56), not a clean end of an empty reply (52).
    let out = project.tpr(&[
        "exec",
        "--",
        "curl",
        "-sS",
        "--max-time",
        "10",
        "http://web/reset",
    ]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(56), "{all}");
    assert!(all.contains("Connection reset by peer"), "{all}");
    up.wait_for("outbound via intercept", Duration::from_secs(10))
        .await;
    Ok(())
}

/// A UDP service on port 5353 whose endpoint is the cluster's DNS server
/// (port 53): a UDP server other than a nameserver, as the process sees it.
fn udp_service(dns_pod_ip: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: dns5353}}
spec:
  ports: [{{name: dns, port: 5353, protocol: UDP, targetPort: 53}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns5353-1
  labels: {{kubernetes.io/service-name: dns5353}}
addressType: IPv4
ports: [{{name: dns, port: 53, protocol: UDP}}]
endpoints: [{{addresses: ["{dns_pod_ip}"]}}]
"#
    )
}

/// UDP other than DNS leaves through the agent (`DialUdp`): dig asks the
/// 5353 service (not the resolver's port 53, so not tpr's resolver) and
/// gets the cluster's answer, datagram by datagram.
pub async fn udp(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    deploy_servers(c, ns).await?;
    let dns_ip = pod_ip(c, "kube-system", "k8s-app=kube-dns").await?;
    c.apply_yaml(&udp_service(&dns_ip), Some(ns)).await?;
    c.wait_deployment(ns, "web", crate::support::READY).await?;
    let services: Api<Service> = Api::namespaced(c.client.clone(), ns);
    let cluster_ip = services
        .get("web")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("web has a ClusterIP");
    let project = intercept_project(ns, "hello", "");
    let mut up = project.up(&[]);
    up.wait_for(ACTIVE, UP).await;
    up.wait_for("process local started", UP).await;
    let out = exec(
        &project,
        &format!(
            "dig +short +time=5 +tries=2 -p 5353 @dns5353.{ns}.svc.cluster.local web.{ns}.svc.cluster.local"
        ),
    );
    assert_eq!(stdout(&out), cluster_ip, "{}\n{}", text(&out), up.stderr());
    Ok(())
}
