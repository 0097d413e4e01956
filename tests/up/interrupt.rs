//! Ctrl-C at any moment of `tpr up`'s start: while it connects, while the
//! agent's rollout runs (the template is rolled back), a second Ctrl-C
//! there (exit at once, with the command that cleans up), and right after
//! ACTIVE. Each time a clean exit with 130 and nothing half-changed.

use std::time::Duration;

use tpr_e2e::{Cluster, Result, repo_root};

use crate::support::{ProjectDir, READY, Up, free_port, local_hello};
use crate::{ACTIVE, UP, template_json};

/// examples/hello whose pods take 8 s to be ready: a rollout to interrupt.
fn slow_hello() -> String {
    let path = repo_root().join("examples/hello/k8s/deployment.yaml");
    std::fs::read_to_string(path)
        .expect("the example manifest")
        .replace(
            "periodSeconds: 2",
            "periodSeconds: 2\n            initialDelaySeconds: 8",
        )
}

fn project(ns: &str, port: u16) -> String {
    format!(
        "format_version = 1\n[cluster]\nnamespace = \"{ns}\"\n[[intercept]]\nworkload = \"hello\"\nport = \"{port}:http\"\n{}",
        local_hello(port, "hello")
    )
}

async fn exits_with(up: &mut Up, code: i32, what: &str) {
    let got = up.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(
        got,
        Some(code),
        "{what}: exit status\n--- stdout\n{}\n--- stderr\n{}",
        up.stdout(),
        up.stderr()
    );
}

/// The template has no agent: the rollback (or nothing) left it as it was.
async fn no_agent(c: &Cluster, ns: &str, before: &serde_json::Value, up: &Up) -> Result<()> {
    let now = template_json(c, ns, "hello").await?;
    assert_eq!(&now, before, "the template changed\n{}", up.stderr());
    Ok(())
}

pub async fn interrupt(c: &Cluster, ns: &str) -> Result<()> {
    c.apply_yaml(&slow_hello(), Some(ns)).await?;
    let service = repo_root().join("examples/hello/k8s/service.yaml");
    c.apply_file(service, Some(ns)).await?;
    c.wait_deployment(ns, "hello", READY).await?;
    let before = template_json(c, ns, "hello").await?;
    let port = free_port();
    let dir = ProjectDir::new(&project(ns, port));

    // While it connects: an API server that accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let kubeconfig = dir.path().join("silent.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: s\nclusters: [{{name: s, cluster: {{server: \"http://{}\"}}}}]\nusers: [{{name: u, user: {{token: x}}}}]\ncontexts: [{{name: s, context: {{cluster: s, user: u}}}}]\n",
            silent.local_addr().unwrap()
        ),
    )
    .expect("write the kubeconfig");
    let mut up = dir.up_env(
        &["--output", "json"],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    up.wait_for("\"event\":\"validated\"", UP).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    up.signal("INT");
    exits_with(&mut up, 130, "Ctrl-C while connecting").await;
    let out = up.stdout();
    assert!(out.contains("\"event\":\"stopping\""), "{out}");
    assert!(
        out.trim_end()
            .ends_with("{\"event\":\"stopped\",\"exit_code\":130}"),
        "{out}"
    );
    drop(silent);

    // While the agent's rollout runs: it stops, the template is rolled back.
    let mut up = dir.up(&[]);
    up.wait_for("rolling out", UP).await;
    up.signal("INT");
    exits_with(&mut up, 130, "Ctrl-C during the rollout").await;
    let err = up.stderr();
    assert!(
        err.contains("interrupted while rolling out deployment/hello")
            && err.contains("the previous pod template was restored"),
        "{err}"
    );
    no_agent(c, ns, &before, &up).await?;
    c.wait_deployment(ns, "hello", READY).await?;

    // A second Ctrl-C there exits at once and names the command to clean up.
    let mut up = dir.up(&[]);
    up.wait_for("rolling out", UP).await;
    // The second `kill` starts after the first signal was taken (a signal
    // sent while one is pending would merge with it), before the rollback
    // it causes is done.
    up.signal("INT");
    up.signal("INT");
    exits_with(&mut up, 130, "two Ctrl-C during the rollout").await;
    let err = up.stderr();
    if err.contains("stopping at once") {
        assert!(
            err.contains(&format!("`tpr uninstall hello -n {ns}` restores it")),
            "{err}"
        );
    } else {
        // On a loaded machine both signals may have come as one: then the
        // first one's rollback ran to its end.
        assert!(
            err.contains("the previous pod template was restored"),
            "{err}"
        );
    }
    let out = dir.tpr(&["uninstall", "hello", "-n", ns]);
    assert!(out.status.success(), "{}", crate::text(&out));
    no_agent(c, ns, &before, &up).await?;
    c.wait_deployment(ns, "hello", READY).await?;

    // Right after ACTIVE: the usual graceful stop, state cleaned.
    let mut up = dir.up(&[]);
    up.wait_for(ACTIVE, UP).await;
    up.signal("INT");
    exits_with(&mut up, 130, "Ctrl-C right after ACTIVE").await;
    let status = dir.tpr(&["status", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
    assert!(v["running"].is_null(), "{}", crate::text(&status));
    Ok(())
}
