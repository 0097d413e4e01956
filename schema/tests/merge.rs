//! The merge rules of `telepresence.local.toml` over `telepresence.toml`.

use std::path::Path;

use tpr_schema::*;

const TEAM: &str = r#"
[cluster]
context = "dev"
namespace = "shop"

[agent.resources.limits]
cpu = "500m"
memory = "128Mi"

[[intercept]]
workload = "orders"
port = "8080:http"
mechanism = "http"
http.headers = { "x-dev" = "team" }
to_pod = [6379]

[[intercept]]
workload = "billing"
namespace = "money"
port = "8081"

[[process]]
name = "orders"
command = ["cargo", "run"]
env = { RUST_LOG = "info", COLOR = "1" }
watch = ["src"]
"#;

fn merged(local: &str) -> Project {
    let team = SourceFile::new(TEAM_FILE, TEAM);
    let local = SourceFile::new(LOCAL_FILE, local);
    parse(&team, Some(&local), Path::new("/p")).unwrap_or_else(|e| panic!("{e:?}"))
}

#[test]
fn without_a_local_file_the_team_file_stands() {
    let p = parse(&SourceFile::new(TEAM_FILE, TEAM), None, Path::new("/p")).unwrap();
    assert_eq!(p.intercepts[0].ports[0].local, 8080);
    assert_eq!(p.intercepts[1].name, "billing-money");
}

#[test]
fn tables_merge_key_by_key() {
    let p = merged("[cluster]\ncontext = \"kind\"\n[agent.resources.limits]\nmemory = \"1Gi\"\n");
    assert_eq!(p.cluster.context.as_deref(), Some("kind"));
    assert_eq!(p.cluster.namespace.as_deref(), Some("shop"));
    assert_eq!(p.agent.resources.limits.memory.as_deref(), Some("1Gi"));
    assert_eq!(p.agent.resources.limits.cpu.as_deref(), Some("500m"));
}

#[test]
fn intercepts_match_by_name_not_position() {
    // The billing intercept is second in the team file and first here; its
    // computed name is billing-money.
    let p = merged(
        "[[intercept]]\nname = \"billing-money\"\nport = \"9091\"\n\n\
         [[intercept]]\nworkload = \"orders\"\nport = \"9090:http\"\nhttp.headers = { \"x-dev\" = \"alice\" }\n",
    );
    assert_eq!(p.intercepts.len(), 2);
    let orders = p.intercept("orders").unwrap();
    assert_eq!(orders.ports[0].to_string(), "9090:http");
    assert_eq!(
        orders.to_pod,
        vec![6379],
        "keys the local file does not set stay"
    );
    let Mechanism::Http(http) = &orders.mechanism else {
        panic!()
    };
    assert_eq!(
        http.headers[0].regex, "alice",
        "header values merge key by key"
    );
    assert_eq!(p.intercept("billing-money").unwrap().ports[0].local, 9091);
}

#[test]
fn processes_match_by_name_lists_replace_and_maps_merge() {
    let p = merged(
        "[[process]]\nname = \"orders\"\ncommand = [\"cargo\", \"watch\"]\nenv = { RUST_LOG = \"debug\" }\nwatch = [\"lib\"]\n",
    );
    let orders = &p.processes[0];
    assert_eq!(orders.command, vec!["cargo", "watch"]);
    assert_eq!(orders.env["RUST_LOG"], "debug");
    assert_eq!(orders.env["COLOR"], "1");
    assert_eq!(orders.watch, vec![Path::new("/p/lib")]);
}

#[test]
fn entries_that_match_nothing_are_added() {
    let p = merged("[[process]]\nname = \"tail\"\ncommand = \"tail -f log\"\n");
    assert_eq!(p.processes.len(), 2);
    assert_eq!(p.processes[1].command, vec!["sh", "-c", "tail -f log"]);
    assert_eq!(
        p.processes[1].env_from, None,
        "two intercepts: no default env_from"
    );
}

#[test]
fn a_problem_in_an_override_points_into_the_local_file() {
    let team = SourceFile::new(TEAM_FILE, TEAM);
    let local = SourceFile::new(
        LOCAL_FILE,
        "[[intercept]]\nworkload = \"orders\"\nport = \"8081\"\n",
    );
    let e = parse(&team, Some(&local), Path::new("/p")).unwrap_err();
    assert_eq!(e.problems.len(), 1);
    let problem = &e.problems[0];
    assert_eq!(problem.kind.to_string(), "local port 8081 is used twice");
    assert_eq!(
        (problem.file.as_str(), problem.line, problem.column),
        (LOCAL_FILE, 3, 8)
    );
}

#[test]
fn a_personal_file_turns_a_preview_on_and_chooses_its_ingress_key_by_key() {
    // `preview.enabled = true` alone: every ingress setting detected.
    let p = merged("[[intercept]]\nworkload = \"orders\"\npreview.enabled = true\n");
    let preview = p.intercept("orders").unwrap().preview.clone().unwrap();
    assert_eq!(preview, Preview::default());
    // The team's ingress, one key overridden here; disabled stays off.
    let team = SourceFile::new(
        TEAM_FILE,
        format!(
            "{TEAM}[intercept.preview]\nenabled = false\npath = \"/orders/\"\ningress = {{ host = \"shop.example.com\", port = 8443 }}\n"
        ),
    );
    // The team file's preview table follows the last [[intercept]] (billing): tcp, but disabled.
    let off = parse(&team, None, Path::new("/p")).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(off.intercept("billing-money").unwrap().preview, None);
    let local = SourceFile::new(
        LOCAL_FILE,
        "[[intercept]]\nworkload = \"billing\"\nmechanism = \"http\"\npreview.enabled = true\npreview.ingress.l5 = \"billing.example.com\"\n",
    );
    let on = parse(&team, Some(&local), Path::new("/p")).unwrap_or_else(|e| panic!("{e:?}"));
    let preview = on
        .intercept("billing-money")
        .unwrap()
        .preview
        .clone()
        .unwrap();
    assert_eq!(preview.path.as_deref(), Some("/orders/"));
    assert_eq!(
        preview.ingress,
        PreviewIngress {
            host: Some("shop.example.com".into()),
            port: Some(8443),
            tls: None,
            l5: Some("billing.example.com".into()),
        }
    );
    let address = preview.ingress.complete(None).unwrap();
    assert_eq!(
        address.url("/orders/", "abc"),
        "http://billing.example.com:8443/orders/?tpr_preview=abc"
    );
}
