//! The local process starting and restarting under an intercept: the
//! connections that arrive meanwhile wait for it instead of being reset,
//! and `[process.ready]` says when it answers.

use std::time::Duration;

use tpr_e2e::{Cluster, Result};

use crate::support::{ClientPod, ProjectDir, deploy_hello, free_port, hello_bin};
use crate::{ACTIVE, UP};

/// A local hello that takes 3 s to listen at every start.
fn project(ns: &str, port: u16) -> String {
    format!(
        "format_version = 1\n[cluster]\nnamespace = \"{ns}\"\n[[intercept]]\nworkload = \"hello\"\nport = \"{port}:http\"\n[[process]]\nname = \"local\"\ncommand = \"sleep 3; exec {} serve\"\nenv_from = \"hello\"\nenv = {{ PORT = \"{port}\", HELLO_WHO = \"local\" }}\nwatch = [\"src\"]\nready = {{ port = {port}, path = \"/healthz\" }}\n",
        hello_bin().display()
    )
}

/// The lines of `hello get -n N -interval 50ms -new` that did not come from
/// the local process.
fn failures(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| !l.contains("hello from local"))
        .collect()
}

pub async fn continuity(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let client = ClientPod::start(c, ns).await?;
    let url = format!("http://hello.{ns}/");
    let port = free_port();
    let dir = ProjectDir::new(&project(ns, port));
    let mut up = dir.up(&[]);
    // The intercept routes before the process starts; ACTIVE waits for
    // the process's readiness check.
    up.wait_for("process local started", UP).await;
    assert!(!up.stdout().contains(ACTIVE), "{}", up.stdout());
    // The process still sleeps: these requests wait until it listens.
    let out = client
        .get_with(&url, &[], &["-n", "80", "-interval", "50ms", "-new"])
        .await;
    assert!(
        failures(&out).is_empty(),
        "while starting: {out}\n{}",
        up.stderr()
    );
    assert_eq!(out.lines().count(), 80, "{out}");
    up.wait_for("process local is ready", UP).await;
    up.wait_for(ACTIVE, UP).await;

    // A file change restarts it (3 s without a listener) while a request
    // goes every 50 ms: none is lost.
    let sender = {
        let url = url.clone();
        let client = &client;
        async move {
            client
                .get_with(&url, &[], &["-n", "120", "-interval", "50ms", "-new"])
                .await
        }
    };
    let touch = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        std::fs::write(dir.path().join("src/main.txt"), "changed").expect("write");
    };
    let (out, ()) = tokio::join!(sender, touch);
    assert!(
        up.stderr().contains("restarting") || up.stdout().contains("restarting"),
        "the process was not restarted\n{}",
        up.stderr()
    );
    assert!(
        failures(&out).is_empty(),
        "while restarting: {out}\n{}",
        up.stderr()
    );
    assert_eq!(out.lines().count(), 120, "{out}");
    up.wait_for_n("process local is ready", 2, UP).await;
    Ok(())
}
