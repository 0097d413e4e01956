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
    let preview = orders.preview.as_ref().expect("a preview");
    assert_eq!(preview.path.as_deref(), Some("/api/orders/"));
    assert_eq!(
        preview
            .ingress
            .complete(None)
            .unwrap()
            .url("/api/orders/", "t"),
        "https://orders.dev.example.com/api/orders/?tpr_preview=t"
    );
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

/// Key paths of a TOML/JSON document, descending only into tables that the
/// schema describes key by key (not into free-form maps like `env`).
fn key_paths(
    value: &serde_json::Value,
    prefix: &str,
    tables: &std::collections::BTreeSet<String>,
    out: &mut std::collections::BTreeSet<String>,
) {
    match value {
        serde_json::Value::Object(map) if prefix.is_empty() || tables.contains(prefix) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(path.clone());
                key_paths(v, &path, tables, out);
            }
        }
        serde_json::Value::Array(items) => {
            items.iter().for_each(|i| key_paths(i, prefix, tables, out))
        }
        _ => {}
    }
}

/// Every key path of the schema, and which of them are tables with keys.
fn schema_paths() -> (
    std::collections::BTreeSet<String>,
    std::collections::BTreeSet<String>,
) {
    fn walk(
        s: &serde_json::Value,
        root: &serde_json::Value,
        prefix: &str,
        all: &mut std::collections::BTreeSet<String>,
        tables: &mut std::collections::BTreeSet<String>,
    ) {
        let s = match s.get("$ref").and_then(|r| r.as_str()) {
            Some(r) => &root["definitions"][r.trim_start_matches("#/definitions/")],
            None => s,
        };
        if let Some(items) = s.get("items") {
            return walk(items, root, prefix, all, tables);
        }
        if let Some(props) = s.get("properties").and_then(|p| p.as_object()) {
            tables.insert(prefix.to_owned());
            for (k, v) in props {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                all.insert(path.clone());
                walk(v, root, &path, all, tables);
            }
        }
    }
    let root: serde_json::Value = serde_json::from_str(&json_schema()).unwrap();
    let (mut all, mut tables) = Default::default();
    walk(&root, &root, "", &mut all, &mut tables);
    (all, tables)
}

#[test]
fn the_example_sets_every_key_of_the_schema_and_the_reader_reads_each_under_its_name() {
    let text = fs::read_to_string(repo().join("telepresence.toml.example")).unwrap();
    let (schema, tables) = schema_paths();
    let as_written: serde_json::Value =
        serde_json::to_value(toml::from_str::<toml::Value>(&text).unwrap()).unwrap();
    let mut written = Default::default();
    key_paths(&as_written, "", &tables, &mut written);
    assert_eq!(
        written, schema,
        "telepresence.toml.example vs the JSON Schema"
    );
    let (raw, problems) = read::read_file(FileId::Team, &text);
    assert!(problems.is_empty());
    let mut read_back = Default::default();
    key_paths(
        &serde_json::to_value(&raw).unwrap(),
        "",
        &tables,
        &mut read_back,
    );
    assert_eq!(
        read_back, schema,
        "what the reader fills vs the JSON Schema"
    );
}

#[test]
fn the_readme_examples_validate() {
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    let blocks: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    // The team file is the block with `format_version`, the personal one
    // starts with its own name; any other block is a fragment that must be
    // valid as a personal override of the team file.
    let team_block = *blocks
        .iter()
        .find(|b| b.contains("format_version"))
        .expect("README: a team file block with format_version");
    let local_block = *blocks
        .iter()
        .find(|b| b.starts_with("# telepresence.local.toml"))
        .expect("README: a block starting `# telepresence.local.toml`");
    let team = SourceFile::new(TEAM_FILE, team_block);
    let local = SourceFile::new(LOCAL_FILE, local_block);
    for fragment in blocks
        .iter()
        .filter(|b| **b != team_block && **b != local_block)
    {
        let over = SourceFile::new(LOCAL_FILE, *fragment);
        parse(&team, Some(&over), Path::new("/p"))
            .unwrap_or_else(|e| panic!("README fragment {fragment:?}: {e:?}"));
    }
    let p = parse(&team, Some(&local), Path::new("/p")).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(p.intercepts[0].ports[0].to_string(), "9090:http");
    assert_eq!(p.processes[0].env_from.as_deref(), Some("orders"));
}

/// As Telepresence's `--http-*` flags imply `--mechanism=http`, `http`
/// settings without a `mechanism` make an http intercept.
#[test]
fn http_settings_imply_the_http_mechanism() {
    let dir = std::env::temp_dir().join(format!("tpr-http-implied-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("telepresence.toml");
    fs::write(
        &file,
        "[[intercept]]\nworkload = \"orders\"\nport = \"8080:http\"\nhttp.path_prefix = \"/api\"\n",
    )
    .unwrap();
    let p = load_ok(&file);
    fs::remove_dir_all(&dir).unwrap();
    let Mechanism::Http(http) = &p.intercept("orders").unwrap().mechanism else {
        panic!("http expected")
    };
    assert_eq!(http.path_prefix.as_deref(), Some("/api"));
    assert!(http.id_header, "the default match stays on");
}
