//! Preview links (`[intercept.preview]`) through the test cluster's real
//! ingress controller (Traefik on this machine's ports 80 and 443): the
//! link reaches the workstation, then its cookie does; everything else
//! reaches the cluster; two developers' links on one workload never cross;
//! a rotated token and an ended intercept route to the cluster again; the
//! ingress is detected, and none, several or a forbidden list are errors
//! that change nothing.

use std::time::{Duration, Instant};

use tpr_e2e::ingress::{self, NODE_IP, Response};
use tpr_e2e::{Cluster, Result};

use crate::support::{ProjectDir, Up, deploy_hello, free_port, local_hello_as};
use crate::{ACTIVE, UP, template_json, text};

/// How long a request through the ingress may take to reach where it
/// should once the intercept (or its end) is in place.
const SETTLE: Duration = Duration::from_secs(20);

/// An http intercept of hello with a preview whose ingress is detected,
/// and the local hello answering "hello from WHO".
fn preview_project(ns: &str, port: u16, who: &str, preview: &str) -> String {
    format!(
        "format_version = 1\n[cluster]\nnamespace = \"{ns}\"\n[[intercept]]\nworkload = \"hello\"\nport = \"{port}:http\"\nmechanism = \"http\"\n{preview}\n{}",
        local_hello_as(port, "hello", who)
    )
}

/// The link in `tpr up`'s intercept block.
fn preview_url(up: &Up) -> String {
    let out = up.stdout();
    out.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("Preview URL            : "))
        .unwrap_or_else(|| panic!("no Preview URL in\n{out}"))
        .to_owned()
}

/// The token of a link.
fn token_of(url: &str) -> String {
    url.split_once("tpr_preview=")
        .map(|(_, t)| t.to_owned())
        .unwrap_or_else(|| panic!("no token in {url}"))
}

/// GET through the ingress until the body contains `want`; the last
/// response (or the error) and how long it took.
async fn get_until(
    host: &str,
    path: &str,
    https: bool,
    headers: &[&str],
    want: &str,
) -> (String, Option<Response>) {
    let start = Instant::now();
    loop {
        let (body, response) = match ingress::get(host, path, https, headers).await {
            Ok(r) => (r.body.clone(), Some(r)),
            Err(e) => (e.to_string(), None),
        };
        if body.contains(want) || start.elapsed() > SETTLE {
            return (body, response);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `tpr up --once --output json` that fails before any change: its
/// `error` event's message and help, unwrapped.
async fn up_fails(c: &Cluster, ns: &str, project: &ProjectDir, env: &[(&str, &str)]) -> String {
    let before = template_json(c, ns, "hello").await.ok();
    let out = project.tpr_env(&["up", "--once", "--output", "json"], env);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    let error: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("\"event\":\"error\""))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no error event in {all}"));
    assert_eq!(
        template_json(c, ns, "hello").await.ok(),
        before,
        "the workload changed: {all}"
    );
    format!(
        "{}\nhelp: {}",
        error["message"].as_str().unwrap_or_default(),
        error["help"].as_str().unwrap_or_default()
    )
}

/// Asks several times: every answer contains `want`.
async fn always(host: &str, path: &str, headers: &[&str], want: &str) {
    for _ in 0..4 {
        let r = ingress::get(host, path, true, headers)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            r.body.contains(want),
            "{path} {headers:?}: wanted {want:?}, got {r:?}"
        );
    }
}

pub async fn links(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let host = ingress::host_for(ns);
    ingress::deploy_ingress(c, ns, &host, true).await?;
    let alice = ProjectDir::new(&preview_project(
        ns,
        free_port(),
        "alice",
        "preview.enabled = true",
    ));
    let mut up_a = alice.up(&[]);
    up_a.wait_for(ACTIVE, UP).await;
    ingress::settled(&host, true, "hello from hello-").await?;
    let url_a = preview_url(&up_a);
    let prefix = format!("https://{host}/?tpr_preview=");
    assert!(url_a.starts_with(&prefix), "{url_a}");
    let token_a = token_of(&url_a);
    assert!(
        token_a.len() >= 32 && token_a.bytes().all(|b| b.is_ascii_hexdigit()),
        "{token_a}"
    );
    // What was detected, said before the intercept.
    assert!(
        up_a.stderr().contains(&format!(
            "preview of intercept hello: https://{host} through {NODE_IP}:443 (detected ingress/hello)"
        )),
        "{}",
        up_a.stderr()
    );

    // The link reaches alice, and sets the cookie; the cookie alone then
    // does too; without either the cluster answers.
    let link_path = format!("/?tpr_preview={token_a}");
    let (body, r) = get_until(&host, &link_path, true, &[], "hello from alice").await;
    assert!(
        body.contains("hello from alice"),
        "{body}\n{}",
        up_a.stderr()
    );
    let r = r.expect("a response");
    let cookie = r.cookie_header();
    assert_eq!(cookie, format!("tpr_preview={token_a}"), "{r:?}");
    let set = r.header("set-cookie").unwrap_or_default();
    assert!(
        set.contains("HttpOnly") && set.contains("Secure"),
        "https: a Secure, HttpOnly cookie: {set}"
    );
    let alice_cookie = format!("Cookie: {cookie}");
    always(&host, "/", &[&alice_cookie], "hello from alice").await;
    always(&host, "/", &[], "hello from hello-").await;

    // Bob's own preview of the same workload (his install id, his config
    // directory), in JSON: his link is his, alice's stays alice's.
    let bob = ProjectDir::new(&preview_project(
        ns,
        free_port(),
        "bob",
        "preview.enabled = true",
    ));
    let mut up_b = bob.up(&["--output", "json"]);
    up_b.wait_for("\"event\":\"intercept_active\"", UP).await;
    let active: serde_json::Value = up_b
        .stdout()
        .lines()
        .find(|l| l.contains("\"event\":\"intercept_active\""))
        .and_then(|l| serde_json::from_str(l).ok())
        .expect("an intercept_active line");
    let url_b = active["preview_url"]
        .as_str()
        .expect("preview_url")
        .to_owned();
    assert!(url_b.starts_with(&prefix), "{active}");
    let token_b = token_of(&url_b);
    assert_ne!(token_a, token_b);
    let detected = up_b
        .stdout()
        .lines()
        .find(|l| l.contains("\"event\":\"preview_ingress\""))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        detected.contains("\"ingress\":\"hello\"")
            && detected.contains(&format!("\"l5\":\"{host}\""))
            && detected.contains("\"tls\":true"),
        "{}",
        up_b.stdout()
    );
    let (body, _) = get_until(
        &host,
        &format!("/?tpr_preview={token_b}"),
        true,
        &[],
        "hello from bob",
    )
    .await;
    assert!(body.contains("hello from bob"), "{body}\n{}", up_b.stderr());
    let bob_cookie = format!("Cookie: tpr_preview={token_b}");
    for _ in 0..2 {
        always(&host, &link_path, &[], "hello from alice").await;
        always(&host, "/", &[&alice_cookie], "hello from alice").await;
        always(&host, "/", &[&bob_cookie], "hello from bob").await;
        always(&host, "/", &[], "hello from hello-").await;
    }

    // status and `preview url` show the running link.
    let status = alice.tpr(&["status", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(v["intercepts"][0]["preview_url"], url_a.as_str(), "{v}");
    let status = alice.tpr(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(&format!("preview URL: {url_a}")),
        "{}",
        text(&status)
    );
    let shown = alice.tpr(&["preview", "url", "hello"]);
    assert!(shown.status.success(), "{}", text(&shown));
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), url_a);

    // Rotation: the running tpr up takes the new token at once; the old
    // link and its cookie reach the cluster.
    let rotated = alice.tpr(&["preview", "rotate", "hello"]);
    assert!(rotated.status.success(), "{}", text(&rotated));
    let url_a2 = String::from_utf8_lossy(&rotated.stdout).trim().to_owned();
    assert!(url_a2.starts_with(&prefix), "{}", text(&rotated));
    let token_a2 = token_of(&url_a2);
    assert_ne!(token_a2, token_a);
    up_a.wait_for("new preview URL", Duration::from_secs(10))
        .await;
    assert_eq!(preview_url(&up_a), url_a2);
    let (body, _) = get_until(&host, &link_path, true, &[], "hello from hello-").await;
    assert!(body.contains("hello from hello-"), "old link: {body}");
    always(&host, &link_path, &[], "hello from hello-").await;
    always(&host, "/", &[&alice_cookie], "hello from hello-").await;
    let new_path = format!("/?tpr_preview={token_a2}");
    always(&host, &new_path, &[], "hello from alice").await;
    always(&host, "/", &[&bob_cookie], "hello from bob").await;

    // Tokens appear only in the link lines, never in tpr's logs.
    for token in [&token_a, &token_a2] {
        assert!(!up_a.stderr().contains(token.as_str()), "{}", up_a.stderr());
        let out = up_a.stdout();
        let lines: Vec<&str> = out.lines().filter(|l| l.contains(token.as_str())).collect();
        assert!(
            !lines.is_empty() && lines.iter().all(|l| l.contains("Preview URL")),
            "{lines:?}"
        );
    }
    assert!(
        !up_b.stderr().contains(token_b.as_str()),
        "{}",
        up_b.stderr()
    );

    // tpr down: alice's link (and cookie) reach the cluster; bob's stays.
    let down = alice.tpr(&["down"]);
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(up_a.wait_exit(Duration::from_secs(20)).await, Some(0));
    let (body, _) = get_until(&host, &new_path, true, &[], "hello from hello-").await;
    assert!(body.contains("hello from hello-"), "ended: {body}");
    always(
        &host,
        "/",
        &[&format!("Cookie: tpr_preview={token_a2}")],
        "hello from hello-",
    )
    .await;
    always(&host, "/", &[&bob_cookie], "hello from bob").await;
    // The token is kept until rotated: the next tpr up has the same link.
    let later = alice.tpr(&["preview", "url", "hello"]);
    assert!(later.status.success(), "{}", text(&later));
    assert_eq!(String::from_utf8_lossy(&later.stdout).trim(), url_a2);
    assert!(
        String::from_utf8_lossy(&later.stderr).contains("not running"),
        "{}",
        text(&later)
    );
    drop(up_b);
    Ok(())
}

pub async fn detection(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let original = template_json(c, ns, "hello").await?;
    let project = ProjectDir::new(&preview_project(
        ns,
        free_port(),
        "local",
        "preview.enabled = true",
    ));
    // No Ingress: an error before any change.
    let error = up_fails(c, ns, &project, &[]).await;
    assert!(
        error.contains(&format!(
            "preview of intercept hello: no Ingress in namespace {ns} routes to Service hello port http"
        )) && error.contains("add [intercept.preview.ingress] with host ="),
        "{error}"
    );

    // Two Ingresses to the port: an error listing both, and how to choose.
    let host_a = format!("{ns}-a.{}", ingress::DOMAIN);
    let host_b = format!("{ns}-b.{}", ingress::DOMAIN);
    ingress::deploy_ingress_for(c, ns, "a", &host_a, "hello", "http", false).await?;
    ingress::deploy_ingress_for(c, ns, "b", &host_b, "hello", "80", false).await?;
    let error = up_fails(c, ns, &project, &[]).await;
    let choose_a =
        format!("preview.ingress = {{ host = \"{NODE_IP}\", tls = false, l5 = \"{host_a}\" }}");
    for want in [
        "2 Ingress routes reach Service hello port http",
        &format!("ingress/a: http://{host_a} (address {NODE_IP})"),
        &format!("ingress/b: http://{host_b} (address {NODE_IP})"),
        &choose_a,
    ] {
        assert!(error.contains(want), "missing {want:?} in {error}");
    }
    assert_eq!(template_json(c, ns, "hello").await?, original);

    // Chosen in the personal file, as the help says: the link goes there.
    std::fs::write(
        project.path().join("telepresence.local.toml"),
        format!("[[intercept]]\nworkload = \"hello\"\n{choose_a}\n"),
    )?;
    let mut up = project.up(&[]);
    up.wait_for(ACTIVE, UP).await;
    let url = preview_url(&up);
    assert!(
        url.starts_with(&format!("http://{host_a}/?tpr_preview=")),
        "{url}"
    );
    let path = format!("/?tpr_preview={}", token_of(&url));
    let (body, r) = get_until(&host_a, &path, false, &[], "hello from local").await;
    assert!(body.contains("hello from local"), "{body}\n{}", up.stderr());
    let set = r.and_then(|r| r.header("set-cookie").map(str::to_owned));
    assert!(
        set.as_deref().is_some_and(|s| !s.contains("Secure")),
        "http: no Secure cookie: {set:?}"
    );
    // The same Ingress route, through b's host: the token works on any
    // host reaching the workload.
    let (body, _) = get_until(&host_b, &path, false, &[], "hello from local").await;
    assert!(body.contains("hello from local"), "{body}");
    drop(up);
    Ok(())
}

/// Without `list` on Ingresses, detection says so (and how to do without
/// it) before any change.
pub async fn forbidden(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let original = template_json(c, ns, "hello").await?;
    let dir = tempfile::tempdir()?;
    let kc = dir.path().join("dev");
    crate::rbac::kubeconfig_for(c, ns, "dev", &kc).await?;
    c.apply_yaml(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: no-ingress}
rules:
  - {apiGroups: ["apps"], resources: ["deployments", "replicasets", "statefulsets"], verbs: ["get", "list", "watch", "patch", "update"]}
  - {apiGroups: [""], resources: ["services", "pods"], verbs: ["get", "list", "watch"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: dev-no-ingress}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: no-ingress}
subjects: [{kind: ServiceAccount, name: dev}]
"#,
        Some(ns),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let project = ProjectDir::new(&preview_project(
        ns,
        free_port(),
        "local",
        "preview.enabled = true",
    ));
    let kc = kc.display().to_string();
    let error = up_fails(c, ns, &project, &[("KUBECONFIG", &kc)]).await;
    assert!(
        error.contains("preview of intercept hello: cannot detect its ingress: forbidden: tpr needs `list` on `ingresses.networking.k8s.io`")
            && error.contains("set [intercept.preview.ingress] host"),
        "{error}"
    );
    assert_eq!(template_json(c, ns, "hello").await?, original);
    Ok(())
}
