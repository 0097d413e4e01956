//! The `tpr` binary, run for real in temporary project directories.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const VALID: &str = r#"
[[intercept]]
workload = "orders"
port = "8080:http"

[[process]]
command = ["cargo", "run"]
"#;

/// A project directory with files, and a `tpr` command line to run in it.
struct Test {
    dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Test {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tpr-cli-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self {
            dir,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    fn file(self, name: &str, text: &str) -> Self {
        let path = self.dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
        self
    }

    fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    #[track_caller]
    fn run(&self) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_tpr"))
            .args(&self.args)
            .current_dir(&self.dir)
            .env_remove("TPR_FILE")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().cloned())
            .output()
            .unwrap();
        Run { output }
    }
}

impl Drop for Test {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

struct Run {
    output: Output,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    #[track_caller]
    fn status(&self, code: i32) -> &Self {
        assert_eq!(
            self.output.status.code(),
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }

    #[track_caller]
    fn stdout_has(&self, text: &str) -> &Self {
        assert!(
            self.stdout().contains(text),
            "stdout lacks {text:?}:\n{}",
            self.stdout()
        );
        self
    }

    #[track_caller]
    fn stderr_has(&self, text: &str) -> &Self {
        assert!(
            self.stderr().contains(text),
            "stderr lacks {text:?}:\n{}",
            self.stderr()
        );
        self
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn validate_accepts_a_valid_file() {
    Test::new()
        .file("telepresence.toml", VALID)
        .args(&["validate"])
        .run()
        .status(0)
        .stdout_has("telepresence.toml: valid (1 intercept, 1 process)");
}

#[test]
fn validate_reports_every_problem_with_file_line_column_snippet_and_help() {
    let run = Test::new()
        .file(
            "telepresence.toml",
            "[[intercept]]\nwrokload = \"orders\"\nport = \"70000\"\n\n[[process]]\ncommand = []\n",
        )
        .args(&["validate"])
        .run();
    run.status(1)
        .stderr_has("unknown key `wrokload` in [[intercept]]")
        .stderr_has("telepresence.toml:2:1]")
        .stderr_has("did you mean `workload`?")
        .stderr_has("port 70000 is out of range")
        .stderr_has("telepresence.toml:3:8]")
        .stderr_has("port = \"70000\"")
        .stderr_has("a port is a number from 1 to 65535")
        .stderr_has("the command of process `main` is empty")
        .stderr_has("telepresence.toml:6:11]")
        .stderr_has("error: telepresence.toml: 3 problems; nothing was done");
    assert_eq!(run.stdout(), "");
}

#[test]
fn validate_finds_the_file_by_flag_or_environment() {
    let t = Test::new().file("sub/telepresence.toml", VALID);
    t.run_with(&["validate", "-f", "sub/telepresence.toml"])
        .status(0)
        .stdout_has("valid");
    t.run_with(&["validate", "--file=sub/telepresence.toml"])
        .status(0);
    Test::new()
        .file("sub/other.toml", VALID)
        .env("TPR_FILE", "sub/other.toml")
        .args(&["validate"])
        .run()
        .status(0)
        .stdout_has("sub/other.toml: valid");
}

#[test]
fn a_missing_file_is_an_error_that_says_what_to_do() {
    Test::new()
        .args(&["validate"])
        .run()
        .status(1)
        .stderr_has("cannot read telepresence.toml")
        .stderr_has("pass -f FILE");
}

#[test]
fn the_local_file_overrides_and_its_problems_point_into_it() {
    let t = Test::new().file("telepresence.toml", VALID).file(
        "telepresence.local.toml",
        "[[intercept]]\nworkload = \"orders\"\nport = \"9090:http\"\n",
    );
    let run = t.run_with(&["config", "--output", "json"]);
    run.status(0);
    let config: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(config["intercept"][0]["ports"][0], "9090:http");
    assert_eq!(config["intercept"][0]["name"], "orders");
    assert_eq!(config["process"][0]["env_from"], "orders");

    let bad = Test::new().file("telepresence.toml", VALID).file(
        "telepresence.local.toml",
        "[[process]]\nname = \"main\"\nstop_signal = \"TERM\"\n",
    );
    bad.run_with(&["validate"])
        .status(1)
        .stderr_has("unknown stop signal `TERM`")
        .stderr_has("telepresence.local.toml:3:15]")
        .stderr_has("did you mean `SIGTERM`?");
}

#[test]
fn config_prints_the_resolved_configuration_as_toml() {
    let run = Test::new()
        .file("telepresence.toml", VALID)
        .args(&["config"])
        .run();
    run.status(0);
    let config: toml::Table = toml::from_str(&run.stdout()).unwrap();
    let agent = config["agent"].as_table().unwrap();
    assert_eq!(
        agent["image"].as_str(),
        Some(concat!("tpr-agent:", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(agent["port"].as_integer(), Some(9900));
    let process = &config["process"].as_array().unwrap()[0];
    assert_eq!(process["debounce_ms"].as_integer(), Some(100));
    assert_eq!(process["stop_signal"].as_str(), Some("SIGTERM"));
}

#[test]
fn config_refuses_an_invalid_file() {
    Test::new()
        .file("telepresence.toml", "[cluster]\nnamespace = 3\n")
        .args(&["config"])
        .run()
        .status(1)
        .stderr_has("`namespace` must be a string, found an integer");
}

#[test]
fn schema_prints_the_committed_json_schema() {
    let run = Test::new().args(&["schema"]).run();
    run.status(0);
    let committed = fs::read_to_string(repo().join("schema/telepresence.schema.json")).unwrap();
    assert_eq!(run.stdout(), committed);
}

#[test]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        Test::new()
            .args(&["completions", shell])
            .run()
            .status(0)
            .stdout_has("validate");
    }
    Test::new().args(&["completions", "tcsh"]).run().status(2);
}

#[test]
fn the_repository_examples_validate() {
    let t = Test::new();
    for file in [
        "telepresence.toml.example",
        "examples/hello/telepresence.toml",
    ] {
        let path = repo().join(file);
        t.run_with(&["validate", "-f", path.to_str().unwrap()])
            .status(0)
            .stdout_has("valid");
    }
}

#[test]
fn up_without_a_project_file_names_the_fix_and_touches_no_cluster() {
    // No kubeconfig at all: the file is checked before any cluster access.
    Test::new()
        .args(&["up"])
        .env("KUBECONFIG", "/nonexistent")
        .run()
        .status(1)
        .stderr_has("cannot read telepresence.toml")
        .stderr_has("-f FILE");
}

impl Test {
    fn run_with(&self, args: &[&str]) -> Run {
        let test = Test {
            dir: self.dir.clone(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: self.env.clone(),
        };
        let run = test.run();
        std::mem::forget(test); // `self` owns the directory
        run
    }
}

#[test]
fn preview_rotate_without_a_running_up_keeps_a_private_token_for_the_next_one() {
    let mut t = Test::new().file(
        "telepresence.toml",
        "[[intercept]]\nworkload = \"orders\"\nport = \"8080:http\"\nmechanism = \"http\"\npreview.ingress.host = \"orders.example.com\"\n\n[[intercept]]\nworkload = \"cart\"\nport = \"8081:http\"\n",
    );
    let home = t.dir.join("home").to_str().unwrap().to_owned();
    let id = "7a1e0000-0000-4000-8000-000000000000";
    t = t
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", &format!("{home}/config"))
        .env("XDG_STATE_HOME", &format!("{home}/state"))
        .env("TPR_INSTALL_ID", id)
        .args(&["preview", "rotate", "orders"]);
    t.run()
        .status(0)
        .stderr_has("takes effect on the next `tpr up`");
    let tokens = t.dir.join("home/config/tpr/preview-tokens.json");
    let read = || -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(&tokens).unwrap()).unwrap()
    };
    let token = read()[id]["orders"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 32, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&tokens).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Rotating again: another token.
    t.run().status(0);
    assert_ne!(read()[id]["orders"].as_str().unwrap(), token);
    // An intercept without a preview, and one that is not there.
    t.args = vec!["preview".into(), "url".into(), "cart".into()];
    t.run()
        .status(1)
        .stderr_has("intercept cart has no preview link")
        .stderr_has("[intercept.preview]");
    t.args = vec!["preview".into(), "rotate".into(), "nope".into()];
    t.run()
        .status(1)
        .stderr_has("no intercept named `nope`; intercepts: orders, cart");
}
