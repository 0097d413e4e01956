//! `tpr up` and its sibling commands on the real test cluster: each case
//! deploys real workloads in its own namespace, runs the real `tpr`, sends
//! real requests from a client pod and checks where they arrive.

mod admission;
mod continuity;
mod env;
mod errors;
mod interrupt;
mod json;
mod lifecycle;
mod outbound;
mod outbound_userns;
mod preview;
mod preview_browser;
mod rbac;
mod replicas;
mod support;
mod variants;
mod volumes;
mod watch;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::{ClientPod, ProjectDir, deploy_hello, free_port, local_hello, local_hello_as};
use tpr_e2e::{Cluster, Result};

const ACTIVE: &str = "State                  : ACTIVE";
const UP: Duration = Duration::from_secs(150);

async fn cluster() -> Cluster {
    Cluster::connect().await.unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `body` in a fresh namespace, deletes it whatever the outcome
/// (error or panic).
macro_rules! in_namespace {
    ($prefix:expr, $body:expr) => {{
        let c = cluster().await;
        let ns = c.namespace($prefix).await.unwrap_or_else(|e| panic!("{e}"));
        // A failed assertion panics: the namespace goes anyway.
        let result =
            futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe($body(&c, &ns))).await;
        let _ = c.delete_namespace(&ns).await;
        match result {
            Ok(r) => r.unwrap_or_else(|e| panic!("{e}")),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }};
}

fn hello_project(ns: &str, port: u16, extra: &str) -> String {
    format!(
        "format_version = 1\n[cluster]\nnamespace = \"{ns}\"\n[[intercept]]\nworkload = \"hello\"\nport = \"{port}:http\"\n{extra}\n{}",
        local_hello(port, "hello")
    )
}

pub(crate) fn text(out: &std::process::Output) -> String {
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
    let v: serde_json::Value = serde_json::from_str(env.trim()).unwrap_or_default();
    assert_eq!(v["value"], "cluster", "{env}");
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
    // The agent itself says who holds the intercept.
    assert!(
        listed.contains("intercepted: hello by ")
            && listed.contains(&format!("(install id {})", project.install_id)),
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

fn http_project(ns: &str, port: u16, who: &str) -> String {
    format!(
        "format_version = 1\n[cluster]\nnamespace = \"{ns}\"\n[[intercept]]\nworkload = \"hello\"\nport = \"{port}:http\"\nmechanism = \"http\"\n{}",
        local_hello_as(port, "hello", who)
    )
}

async fn http_personal(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let client = ClientPod::start(c, ns).await?;
    let url = format!("http://hello.{ns}/");
    let alice = ProjectDir::new(&http_project(ns, free_port(), "alice"));
    let bob = ProjectDir::new(&http_project(ns, free_port(), "bob"));
    let mut up_a = alice.up(&[]);
    up_a.wait_for(ACTIVE, UP).await;
    let mut up_b = bob.up(&[]);
    up_b.wait_for(ACTIVE, UP).await;
    let header = |p: &ProjectDir| format!("x-telepresence-intercept-id:{}:hello", p.install_id);
    assert!(
        up_a.stdout().contains(&format!(
            "HTTP requests that match all of:\n      header(\"x-telepresence-intercept-id\") ~= regexp(\"{}:hello\")",
            alice.install_id
        )),
        "{}",
        up_a.stdout()
    );
    let (a, _) = client
        .get_until(
            &url,
            &[&header(&alice)],
            "hello from alice",
            Duration::from_secs(20),
        )
        .await;
    assert!(a.contains("hello from alice"), "{a}\n{}", up_a.stderr());
    let (b, _) = client
        .get_until(
            &url,
            &[&header(&bob)],
            "hello from bob",
            Duration::from_secs(20),
        )
        .await;
    assert!(b.contains("hello from bob"), "{b}\n{}", up_b.stderr());
    // Unmatched traffic is the app's.
    for _ in 0..3 {
        let plain = client.get(&url, &[]).await;
        assert!(plain.contains("hello from hello-"), "{plain}");
    }
    // A tcp intercept would take Alice's and Bob's requests: refused, naming a holder.
    let carol = ProjectDir::new(&bare_project(
        ns,
        "hello",
        &format!("{}:http", free_port()),
        "",
    ));
    let out = carol.tpr(&["up", "--once"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("refused") && all.contains("install id"),
        "{all}"
    );
    // Alice leaves: her requests go to the app, Bob keeps his.
    let leave = alice.tpr(&["leave", "hello"]);
    assert!(leave.status.success(), "{}", text(&leave));
    let (a, _) = client
        .get_until(
            &url,
            &[&header(&alice)],
            "hello from hello-",
            Duration::from_secs(10),
        )
        .await;
    assert!(a.contains("hello from hello-"), "{a}");
    assert!(
        client
            .get(&url, &[&header(&bob)])
            .await
            .contains("hello from bob")
    );
    drop(up_a);
    drop(up_b);
    Ok(())
}

#[tokio::test]
async fn http_personal_intercepts_leave_other_traffic_to_the_app() {
    in_namespace!("up-http", http_personal);
}

/// An ingress or a mesh keeps keep-alive connections to the pod, opened
/// before anyone intercepts: a personal intercept still gets its requests
/// on them.
async fn http_keep_alive(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let client = ClientPod::start(c, ns).await?;
    let url = format!("http://hello.{ns}/");
    let alice = ProjectDir::new(&http_project(ns, free_port(), "alice"));
    // The agent goes in; alice stops for now (the agent stays).
    let mut up = alice.up(&[]);
    up.wait_for(ACTIVE, UP).await;
    drop(up);
    let header = format!("x-telepresence-intercept-id:{}:hello", alice.install_id);
    // One connection, a request every 250 ms for 20 s; alice comes back
    // while it is open.
    let headers = [header.as_str()];
    let pooled = client.get_with(&url, &headers, &["-n", "80", "-interval", "250ms"]);
    let again = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut up = alice.up(&[]);
        up.wait_for(ACTIVE, UP).await;
        up
    };
    let (out, up) = tokio::join!(pooled, again);
    let lines: Vec<&str> = out.lines().collect();
    let context = format!("{out}\n{}", up.stderr());
    assert_eq!(lines.len(), 80, "{context}");
    assert!(
        lines[0].starts_with("reused=false hello from hello-"),
        "{context}"
    );
    assert!(
        lines[1..].iter().all(|l| l.starts_with("reused=true ")),
        "one connection throughout: {context}"
    );
    let first_alice = lines.iter().position(|l| l.ends_with("hello from alice"));
    let first_alice = first_alice.unwrap_or_else(|| panic!("alice never answered: {context}"));
    assert!(
        lines[first_alice..]
            .iter()
            .all(|l| l.ends_with("hello from alice")),
        "{context}"
    );
    Ok(())
}

#[tokio::test]
async fn a_keep_alive_connection_from_before_a_personal_intercept_reaches_it() {
    in_namespace!("up-keepalive", http_keep_alive);
}

async fn sigkill(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let client = ClientPod::start(c, ns).await?;
    let url = format!("http://hello.{ns}/");
    let project = ProjectDir::new(&hello_project(ns, free_port(), ""));
    let mut up = project.up(&[]);
    up.wait_for(ACTIVE, UP).await;
    let (body, _) = client
        .get_until(&url, &[], "hello from local", Duration::from_secs(20))
        .await;
    assert!(body.contains("hello from local"), "{body}");
    up.kill9();
    let (body, took) = client
        .get_until(&url, &[], "hello from hello-", Duration::from_secs(10))
        .await;
    assert!(body.contains("hello from hello-"), "{body}");
    eprintln!("traffic back to the app {took:?} after SIGKILL");
    assert!(
        took <= Duration::from_secs(3),
        "traffic came back after {took:?}"
    );
    // status knows tpr up died; down cleans the state and asks the agent.
    let status = project.tpr(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("ended without cleaning up"),
        "{}",
        text(&status)
    );
    let down = project.tpr(&["down"]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(
        String::from_utf8_lossy(&down.stdout).contains("ended intercept hello"),
        "{}",
        text(&down)
    );
    // A new tpr up starts cleanly (the agent is already installed).
    let mut again = project.up(&[]);
    again.wait_for(ACTIVE, UP).await;
    assert!(
        !again.stderr().contains("installed the traffic agent"),
        "{}",
        again.stderr()
    );
    Ok(())
}

#[tokio::test]
async fn sigkilled_up_gives_traffic_back_within_3_seconds() {
    in_namespace!("up-kill", sigkill);
}

pub(crate) async fn template_json(c: &Cluster, ns: &str, name: &str) -> Result<serde_json::Value> {
    let api = kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(c.client.clone(), ns);
    let d = api.get(name).await?;
    Ok(serde_json::to_value(d.spec.expect("spec").template).expect("json"))
}

async fn uninstall(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let original = template_json(c, ns, "hello").await?;
    let project = ProjectDir::new(&bare_project(
        ns,
        "hello",
        &format!("{}:http", free_port()),
        "",
    ));
    let once = project.tpr(&["up", "--once"]);
    assert!(once.status.success(), "{}", text(&once));
    let installed = template_json(c, ns, "hello").await?;
    assert_ne!(installed, original, "the agent was not installed");
    // --once: tpr up ends with the process's status, the env in place.
    let once = ProjectDir::new(&format!(
        "{}[[process]]\ncommand = [\"sh\", \"-c\", \"test \\\"$HELLO_ENV\\\" = cluster && exit 7\"]\nwatch = [\"src\"]\n",
        bare_project(ns, "hello", &format!("{}:http", free_port()), "")
    ));
    let out = once.tpr(&["up", "--once"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(ACTIVE),
        "{}",
        text(&out)
    );
    let out = project.tpr(&["uninstall", "hello"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(template_json(c, ns, "hello").await?, original);
    let again = project.tpr(&["uninstall", "hello"]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("not installed"),
        "{}",
        text(&again)
    );
    Ok(())
}

#[tokio::test]
async fn uninstall_restores_the_template_exactly() {
    in_namespace!("up-uninst", uninstall);
}

/// A project with one intercept and no process (`tpr up --once` then ends
/// right after the intercept is made).
pub(crate) fn bare_project(ns: &str, workload: &str, port: &str, extra: &str) -> String {
    format!(
        "format_version = 1\n[cluster]\nnamespace = \"{ns}\"\n[[intercept]]\nworkload = \"{workload}\"\nport = \"{port}\"\n{extra}\n"
    )
}

#[tokio::test]
async fn errors_name_the_problem_and_change_nothing() {
    in_namespace!("up-err", (errors::errors));
}

#[tokio::test]
async fn numeric_headless_statefulset_ondelete_bare_replicaset_two_ports_two_services_sidecar() {
    in_namespace!("up-shapes", (variants::shapes));
}

#[tokio::test]
async fn env_from_env_configmap_secret_and_downward_api() {
    in_namespace!("up-env", (env::env));
}

#[tokio::test]
async fn a_file_edit_ends_only_the_intercept_that_left() {
    in_namespace!("up-reconcile", (lifecycle::reconcile));
}

#[tokio::test]
async fn every_replica_routes_through_scaling_a_reapplied_manifest_and_a_replaced_template() {
    in_namespace!("up-replicas", (replicas::replicas));
}

#[tokio::test]
async fn ctrl_c_at_any_moment_of_the_start_exits_cleanly_and_changes_nothing() {
    in_namespace!("up-sigint", (interrupt::interrupt));
}

#[tokio::test]
async fn connections_wait_for_a_starting_or_restarting_process_and_none_is_lost() {
    in_namespace!("up-continuity", (continuity::continuity));
}

#[tokio::test]
async fn a_deleted_service_port_or_workload_ends_the_intercept_saying_why() {
    in_namespace!("up-gone", (replicas::cluster_changes));
}

#[tokio::test]
async fn a_restarted_agent_pod_is_reconnected_and_the_intercept_restored() {
    in_namespace!("up-reconnect", (lifecycle::reconnect));
}

#[tokio::test]
async fn forbidden_requests_name_the_missing_right_and_change_nothing() {
    in_namespace!("up-rbac", (rbac::forbidden));
}

#[tokio::test]
async fn up_output_json_streams_events_and_leave_restarts_without_the_env() {
    in_namespace!("up-json", (json::json));
}

#[tokio::test]
async fn files_tpr_writes_itself_never_restart_a_process() {
    watch::own_files().await;
}

#[tokio::test]
async fn a_taken_to_pod_port_is_the_workstations_error_said_once() {
    in_namespace!("up-topod", (errors::to_pod_port_taken));
}

#[tokio::test]
async fn a_restricted_namespace_takes_a_named_port_and_refuses_a_numeric_one_before_any_change() {
    in_namespace!("up-restricted", (admission::restricted));
}

#[tokio::test]
async fn a_quota_that_refuses_the_agents_pods_is_reported_and_rolled_back() {
    in_namespace!("up-quota", (admission::quota));
}

#[tokio::test]
async fn the_pods_mounted_files_are_copied_kept_current_and_removed() {
    in_namespace!("up-vol", (volumes::volumes));
}

#[tokio::test]
async fn outbound_reaches_the_cluster_as_the_intercepted_pod() {
    in_namespace!("up-out", (outbound::outbound));
}

#[tokio::test]
async fn outbound_namespace_is_gone_after_sigkill() {
    in_namespace!("up-out-kill", (outbound::sigkill));
}

#[tokio::test]
async fn outbound_connection_ends_when_the_agent_pod_goes_and_new_ones_work_after() {
    in_namespace!("up-out-gone", (outbound::pod_deleted));
}

#[tokio::test]
async fn outbound_reaches_a_to_pod_sidecar_on_the_namespaces_localhost() {
    in_namespace!("up-out-topod", (outbound::to_pod));
}

#[tokio::test]
async fn outbound_keeps_pace_with_a_slow_reader_and_passes_refusals_and_resets_on() {
    in_namespace!("up-out-flow", (outbound::slow_reader_and_refusals));
}

#[tokio::test]
async fn outbound_udp_leaves_through_the_agent() {
    in_namespace!("up-out-udp", (outbound::udp));
}

#[tokio::test]
async fn outbound_dns_answers_externalname_srv_and_ptr_as_the_cluster() {
    in_namespace!("up-out-dns", (outbound::dns_records));
}

#[tokio::test]
async fn outbound_without_root_runs_in_a_user_namespace() {
    in_namespace!("up-out-userns", (outbound_userns::unprivileged));
}

#[tokio::test]
async fn preview_links_through_the_ingress_reach_only_their_developer_until_rotated_or_down() {
    in_namespace!("up-preview", (preview::links));
}

#[tokio::test]
async fn preview_ingress_detection_none_several_and_chosen() {
    in_namespace!("up-prev-detect", (preview::detection));
}

#[tokio::test]
async fn preview_detection_without_list_on_ingresses_says_so_and_changes_nothing() {
    in_namespace!("up-prev-rbac", (preview::forbidden));
}

#[tokio::test]
async fn preview_browser_shows_the_workstations_page_by_the_link_and_the_clusters_without() {
    in_namespace!("up-prev-browser", (preview_browser::browser));
}
