//! The example files validate, and the committed JSON Schema is current.

use std::fs;
use std::path::{Path, PathBuf};

use tpr_schema::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn load_ok(path: &Path) -> Project {
    match load(path) {
        Ok(p) => p,
        Err(e) => panic!("{} is invalid: {e}\n{e:?}", path.display()),
    }
}

#[test]
fn the_commented_example_validates_and_sets_every_field() {
    let p = load_ok(&repo().join("telepresence.toml.example"));
    assert_eq!(p.cluster.context.as_deref(), Some("dev"));
    assert_eq!(p.agent.resources.limits.memory.as_deref(), Some("128Mi"));
    let orders = p.intercept("orders").unwrap();
    assert_eq!(orders.ports.len(), 2);
    assert_eq!(orders.ports[1].to_string(), "9090:grpc");
    let Mechanism::Http(http) = &orders.mechanism else {
        panic!("http expected")
    };
    assert_eq!(
        http.headers,
        vec![HeaderMatch {
            name: "x-dev".into(),
            regex: "alice|bob".into()
        }]
    );
    assert!(!http.id_header);
    assert_eq!(p.processes[0].env_from.as_deref(), Some("orders"));
    assert_eq!(p.processes[0].stop_signal, StopSignal::Term);
}

#[test]
fn the_example_projects_validate() {
    let mut found = 0;
    for entry in fs::read_dir(repo().join("examples")).unwrap() {
        let file = entry.unwrap().path().join(TEAM_FILE);
        if file.exists() {
            found += 1;
            load_ok(&file);
        }
    }
    assert!(found >= 1);
    let hello = load_ok(&repo().join("examples/hello").join(TEAM_FILE));
    assert_eq!(hello.intercepts[0].name, "hello");
    assert_eq!(hello.intercepts[0].namespace.as_deref(), Some("default"));
    assert_eq!(hello.processes[0].env["HELLO_WHO"], "local");
}

#[test]
fn the_committed_json_schema_is_current() {
    let path = repo().join("schema/telepresence.schema.json");
    let fresh = json_schema();
    if std::env::var_os("TPR_BLESS").is_some() {
        fs::write(&path, &fresh).unwrap();
    }
    let committed = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "schema/telepresence.schema.json is stale: regenerate it with\n  cargo run -p tpr -- schema > schema/telepresence.schema.json"
    );
}

#[test]
fn every_example_starts_with_a_schema_line_that_resolves() {
    for file in [
        repo().join("telepresence.toml.example"),
        repo().join("examples/hello").join(TEAM_FILE),
    ] {
        let text = fs::read_to_string(&file).unwrap();
        let first = text.lines().next().unwrap();
        let target = first
            .strip_prefix("#:schema ")
            .expect("a #:schema first line");
        assert!(
            file.parent().unwrap().join(target).exists(),
            "{}: {target} does not exist",
            file.display()
        );
    }
}
