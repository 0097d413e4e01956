//! What restarts a local process: the files it watches, never the files
//! tpr writes itself.

use std::time::Duration;

use crate::support::ProjectDir;

const STARTED: &str = r#""event":"process_started""#;

/// `tpr up > up.log` in the project directory (as `ProjectDir::up` runs
/// it: stdout and stderr to files in the project), with the session state
/// under a HOME in the project too, and a process that watches the whole
/// directory and writes to that stderr: only the two source edits restart
/// it.
pub async fn own_files() {
    let project = ProjectDir::new(
        "format_version = 1\n[[process]]\nname = \"p\"\ncommand = [\"sh\", \"-c\", \"echo process says hi >&2; exec sleep 600\"]\nwatch = [\".\"]\n",
    );
    let mut up = project.up(&["--output", "json"]);
    let guard = Duration::from_secs(60);
    let sources = ["a.rs", "b.rs"].map(|name| project.path().join("src").join(name));
    for (n, source) in sources.iter().enumerate() {
        up.wait_for_n(STARTED, n + 1, guard).await;
        std::fs::write(source, "fn main() {}\n").expect("write a source file");
    }
    up.wait_for_n(STARTED, 3, guard).await;

    let out = up.stdout();
    let restarts: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["event"] == "restarting")
        .collect();
    let expected: Vec<serde_json::Value> = sources
        .iter()
        .map(|source| {
            let path = source.canonicalize().expect("the source file");
            serde_json::json!({"event": "restarting", "process": "p", "paths": [path]})
        })
        .collect();
    assert_eq!(restarts, expected, "{out}\n--- stderr\n{}", up.stderr());
}
