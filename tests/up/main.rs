//! `tpr up` and its sibling commands on the real test cluster: each case
//! deploys real workloads in its own namespace, runs the real `tpr`, sends
//! real requests from a client pod and checks where they arrive.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::{ClientPod, ProjectDir, deploy_hello, free_port, local_hello};
use tpr_e2e::{Cluster, Result};

const ACTIVE: &str = "State                  : ACTIVE";
const UP: Duration = Duration::from_secs(150);

async fn cluster() -> Cluster {
    Cluster::connect().await.unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `body` in a fresh namespace, deletes it whatever the outcome.
macro_rules! in_namespace {
    ($prefix:expr, $body:ident) => {{
        let c = cluster().await;
        let ns = c.namespace($prefix).await.unwrap_or_else(|e| panic!("{e}"));
        let result = $body(&c, &ns).await;
        let _ = c.delete_namespace(&ns).await;
        result.unwrap_or_else(|e| panic!("{e}"));
    }};
}

fn hello_project(ns: &str, port: u16, extra: &str) -> String {
    format!(
        "format_version = 1\n[cluster]\nnamespace = \"{ns}\"\n[[intercept]]\nworkload = \"hello\"\nport = \"{port}:http\"\n{extra}\n{}",
        local_hello(port, "hello")
    )
}

fn text(out: &std::process::Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn tcp_deployment(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let client = ClientPod::start(c, ns).await?;
    let url = format!("http://hello.{ns}/");
    assert!(client.get(&url, &[]).await.contains("hello from hello-"));

    let port = free_port();
    let project = ProjectDir::new(&hello_project(ns, port, "env.file = \".env.hello\""));
    let mut up = project.up(&[]);
    up.wait_for(ACTIVE, UP).await;
    let out = up.stdout();
    for line in [
        "Using Deployment hello",
        "    Intercept name         : hello",
        "    Workload kind          : Deployment",
        &format!("    Destination            : 127.0.0.1:{port}"),
        "    Service Port Identifier: http",
        "    Intercepting           : all TCP connections",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    let (body, _) = client
        .get_until(&url, &[], "hello from local", Duration::from_secs(20))
        .await;
    assert!(body.contains("hello from local"), "{body}\n{}", up.stderr());

    // The pod's env reached the local process and the env file (0600).
    let env = client
        .get(&format!("http://hello.{ns}/env?name=HELLO_ENV"), &[])
        .await;
    assert!(env.contains("\"value\":\"cluster\""), "{env}");
    let file = project.path().join(".env.hello");
    let content = std::fs::read_to_string(&file).expect("env file");
    assert!(content.contains("HELLO_ENV='cluster'"), "{content}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        !up.stderr().contains("cluster'") && !up.stdout().contains("'cluster'"),
        "env values must not be logged"
    );

    // status sees it; list says it is intercepted here.
    let status = project.tpr(&["status", "--output", "json"]);
    assert!(status.status.success(), "{}", text(&status));
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(v["intercepts"][0]["name"], "hello", "{v}");
    assert_eq!(v["intercepts"][0]["state"], "ACTIVE", "{v}");
    assert_eq!(v["install_id"], project.install_id.as_str(), "{v}");
    let list = project.tpr(&["list"]);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.contains("agent installed") && listed.contains("intercepted here (hello)"),
        "{}",
        text(&list)
    );

    // down: tpr up stops, the app answers again.
    let down = project.tpr(&["down"]);
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(
        up.wait_exit(Duration::from_secs(20)).await,
        Some(0),
        "{}",
        up.stderr()
    );
    let (body, _) = client
        .get_until(&url, &[], "hello from hello-", Duration::from_secs(10))
        .await;
    assert!(body.contains("hello from hello-"), "{body}");
    Ok(())
}

#[tokio::test]
async fn tcp_intercept_of_a_deployment_with_a_named_port() {
    in_namespace!("up-tcp", tcp_deployment);
}
