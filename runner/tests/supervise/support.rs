//! Helpers: a temp project, specs running `sh` scripts that log their
//! starts, an in-process session, process lookup through /proc.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tpr::session_loop::{
    Outcome, SessionError, SessionEvent, SessionHandle, SessionOptions, control_channel,
    run_session,
};
use tpr::supervise::ProcessSpec;

/// The harness example: tpr's stand-in and the shim binary. Built here
/// (once per test run) because `cargo test --test supervise` alone would
/// not rebuild examples and could run a stale one.
pub fn harness() -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "tpr",
                "--example",
                "supervise_harness",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for the harness");
        assert!(
            status.success(),
            "building the supervise_harness example failed"
        );
    });
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("examples/supervise_harness");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test -p tpr` (it builds the examples)",
        path.display()
    );
    path
}

/// Polls `check` until it holds; panics naming `what` after 10 s.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Blocking variant for tests that drive a subprocess.
pub fn eventually_blocking(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A value unique to this test, put in each process's environment.
pub fn marker() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

pub const MARKER_VAR: &str = "TPR_TEST_MARKER";

/// Live (non-zombie) processes whose environment holds the marker: every
/// descendant of a test process, whatever its group or session.
pub fn processes_with_marker(marker: &str) -> Vec<i32> {
    let needle = format!("{MARKER_VAR}={marker}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// A temporary project directory and a separate directory for logs (so
/// that logging never triggers the watcher).
pub struct Project {
    _dir: tempfile::TempDir,
    _logs: tempfile::TempDir,
    pub root: PathBuf,
    pub logs: PathBuf,
    pub marker: String,
}

impl Project {
    pub fn new() -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical");
        let log_root = logs.path().canonicalize().expect("canonical");
        std::fs::create_dir_all(root.join("src")).expect("mkdir");
        std::fs::write(root.join("src/main.txt"), "v1\n").expect("write");
        Project {
            _dir: dir,
            _logs: logs,
            root,
            logs: log_root,
            marker: marker(),
        }
    }

    pub fn write(&self, relative: &str, content: &str) {
        let path = self.root.join(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write");
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// How many lines of `name`'s log equal `line`.
    pub fn count(&self, name: &str, line: &str) -> usize {
        std::fs::read_to_string(self.log(name))
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == line)
            .count()
    }

    /// A process that logs `start`, runs `script` (default: sleep), with
    /// `LOG` pointing at its log and the marker in its environment.
    pub fn spec(&self, name: &str, script: &str) -> ProcessSpec {
        let mut spec = ProcessSpec::new(
            name,
            vec![format!("echo start >> \"$LOG\"; {script}")],
            self.root.clone(),
        );
        spec.shell = true;
        spec.env = BTreeMap::from([
            (
                "PATH".to_string(),
                std::env::var("PATH").unwrap_or_default(),
            ),
            ("LOG".to_string(), self.log(name).display().to_string()),
            (MARKER_VAR.to_string(), self.marker.clone()),
        ]);
        spec.watch = vec![self.root.clone()];
        spec
    }
}

/// Events collected from a session.
#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<SessionEvent>>>);

impl Events {
    pub fn all(&self) -> Vec<SessionEvent> {
        self.0.lock().unwrap().clone()
    }

    pub fn lines(&self) -> Vec<String> {
        self.all().iter().map(ToString::to_string).collect()
    }

    pub fn count(&self, pred: impl Fn(&SessionEvent) -> bool) -> usize {
        self.all().iter().filter(|e| pred(e)).count()
    }
}

/// A session running on the test's runtime.
pub struct Session {
    pub handle: SessionHandle,
    pub events: Events,
    task: JoinHandle<Result<Outcome, SessionError>>,
}

pub type Reload = Box<dyn FnMut() -> Result<Vec<ProcessSpec>, String> + Send>;

impl Session {
    pub fn start(specs: Vec<ProcessSpec>, configure: impl FnOnce(&mut SessionOptions)) -> Session {
        Session::start_with_reload(
            specs,
            Box::new(|| Err("no reload in this test".into())),
            configure,
        )
    }

    pub fn start_with_reload(
        specs: Vec<ProcessSpec>,
        reload: Reload,
        configure: impl FnOnce(&mut SessionOptions),
    ) -> Session {
        let (handle, control) = control_channel();
        let mut options = SessionOptions::new().expect("options");
        options.shim_exe = harness();
        options.handle_signals = false;
        options.control = Some(control);
        configure(&mut options);
        let events = Events::default();
        let sink = events.clone();
        let task = tokio::spawn(run_session(specs, reload, options, move |event| {
            sink.0.lock().unwrap().push(event.clone());
        }));
        Session {
            handle,
            events,
            task,
        }
    }

    /// Graceful shutdown; returns the outcome once every process is gone.
    pub async fn stop(self) -> Outcome {
        self.handle.shutdown(true);
        self.finish().await
    }

    pub async fn finish(self) -> Outcome {
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("session ends")
            .expect("session task")
            .expect("session result")
    }
}
