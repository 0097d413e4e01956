//! Stopping: the whole tree goes, on every way out; the grace period is
//! honoured and SIGKILL follows it; a second Ctrl-C skips it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tpr::session_loop::Outcome;

use crate::support::{
    MARKER_VAR, Project, Session, eventually, eventually_blocking, harness, processes_with_marker,
};

/// A script whose children keep running in the background.
const TREE: &str = "sleep 1000 & sleep 1000 & setsid sleep 1000 & wait";

#[tokio::test]
async fn grandchildren_die_with_the_group_even_those_that_left_it() {
    let project = Project::new();
    let session = Session::start(vec![project.spec("app", TREE)], |_| {});
    // shim + sh + three sleeps.
    eventually("the tree is up", || {
        processes_with_marker(&project.marker).len() == 5
    })
    .await;
    session.stop().await;
    // The session returns only once the shim saw every descendant gone.
    assert_eq!(processes_with_marker(&project.marker), Vec::<i32>::new());
}

#[tokio::test]
async fn descendants_that_left_the_group_get_the_stop_signal_too() {
    let project = Project::new();
    let script = "setsid sh -c 'trap \"echo escaped-term >> \\\"$LOG\\\"; exit 0\" TERM; \
                  echo escaped-ready >> \"$LOG\"; while :; do sleep 0.02; done' & wait";
    let session = Session::start(vec![project.spec("app", script)], |_| {});
    eventually("the escaped shell runs", || {
        project.count("app", "escaped-ready") == 1
    })
    .await;
    session.stop().await;
    assert_eq!(project.count("app", "escaped-term"), 1);
    assert_eq!(processes_with_marker(&project.marker), Vec::<i32>::new());
}

#[tokio::test]
async fn the_grace_period_is_honoured() {
    let project = Project::new();
    let script = "trap 'echo term >> \"$LOG\"; sleep 0.3; echo done >> \"$LOG\"; exit 0' TERM; \
                  while :; do sleep 0.02; done";
    let session = Session::start(vec![project.spec("app", script)], |_| {});
    eventually("started", || project.count("app", "start") == 1).await;
    session.stop().await;
    assert_eq!(project.count("app", "term"), 1);
    assert_eq!(
        project.count("app", "done"),
        1,
        "killed before its handler finished"
    );
    assert_eq!(processes_with_marker(&project.marker), Vec::<i32>::new());
}

#[tokio::test]
async fn sigkill_follows_the_timeout() {
    let project = Project::new();
    let script = "trap 'echo term >> \"$LOG\"' TERM; while :; do sleep 0.02; done";
    let mut spec = project.spec("app", script);
    spec.stop_timeout = Duration::from_millis(300);
    let session = Session::start(vec![spec], |_| {});
    eventually("started", || project.count("app", "start") == 1).await;
    let asked = Instant::now();
    session.stop().await;
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "killed before the timeout"
    );
    assert!(
        project.count("app", "term") >= 1,
        "the stop signal was not sent first"
    );
    assert_eq!(processes_with_marker(&project.marker), Vec::<i32>::new());
}

#[tokio::test]
async fn the_configured_stop_signal_is_sent() {
    let project = Project::new();
    let script = "trap 'echo int >> \"$LOG\"; exit 0' INT; trap 'echo term >> \"$LOG\"; exit 0' TERM; \
                  while :; do sleep 0.02; done";
    let mut spec = project.spec("app", script);
    spec.stop_signal = Signal::SIGINT;
    let session = Session::start(vec![spec], |_| {});
    eventually("started", || project.count("app", "start") == 1).await;
    session.stop().await;
    assert_eq!(
        (project.count("app", "int"), project.count("app", "term")),
        (1, 0)
    );
}

/// Runs the harness (tpr's stand-in) as a separate process.
fn run_harness(project: &Project, args: &[&str]) -> Child {
    Command::new(harness())
        .args(args)
        .current_dir(&project.root)
        .env(MARKER_VAR, &project.marker)
        .env("LOG", project.log("app"))
        .stdin(Stdio::null())
        // Files, not pipes: a leftover process holding a pipe would make a
        // failing test hang instead of fail.
        .stdout(std::fs::File::create(project.logs.join("stdout")).expect("stdout file"))
        .stderr(std::fs::File::create(project.logs.join("stderr")).expect("stderr file"))
        .spawn()
        .expect("harness starts")
}

fn wait_with_timeout(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "harness did not exit"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn output_of(project: &Project, stream: &str) -> String {
    std::fs::read_to_string(project.logs.join(stream)).expect("harness output")
}

#[test]
fn no_orphan_after_sigkill_of_tpr() {
    let project = Project::new();
    let mut tpr = run_harness(&project, &["--", "sh", "-c", TREE]);
    // harness + shim + sh + three sleeps.
    eventually_blocking("the tree is up", || {
        processes_with_marker(&project.marker).len() == 6
    });
    kill(Pid::from_raw(tpr.id() as i32), Signal::SIGKILL).unwrap();
    tpr.wait().unwrap();
    eventually_blocking("every process of the tree is gone", || {
        processes_with_marker(&project.marker).is_empty()
    });
}

#[test]
fn no_orphan_after_a_panic_in_tpr() {
    let project = Project::new();
    let mut tpr = run_harness(
        &project,
        &[
            "--panic-on-change",
            "--watch",
            "src",
            "--",
            "sh",
            "-c",
            TREE,
        ],
    );
    eventually_blocking("the tree is up", || {
        processes_with_marker(&project.marker).len() == 6
    });
    project.write("src/main.txt", "v2\n");
    let status = wait_with_timeout(&mut tpr);
    assert_eq!(
        status.code(),
        Some(101),
        "{}",
        output_of(&project, "stderr")
    );
    eventually_blocking("every process of the tree is gone", || {
        processes_with_marker(&project.marker).is_empty()
    });
}

#[test]
fn once_with_a_missing_program_exits_127() {
    let project = Project::new();
    let mut tpr = run_harness(&project, &["--once", "--", "./missing.sh"]);
    let status = wait_with_timeout(&mut tpr);
    assert_eq!(status.code(), Some(127));
    let stderr = output_of(&project, "stderr");
    assert!(
        stderr.contains("program `./missing.sh` not found"),
        "{stderr}"
    );
}

#[test]
fn sigterm_stops_gracefully_and_exits_143() {
    let project = Project::new();
    let script =
        "echo start >> \"$LOG\"; trap 'echo term >> \"$LOG\"; exit 0' TERM; sleep 1000 & wait";
    let mut tpr = run_harness(&project, &["--", "sh", "-c", script]);
    eventually_blocking("started", || project.count("app", "start") == 1);
    kill(Pid::from_raw(tpr.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_with_timeout(&mut tpr);
    assert_eq!(status.code(), Some(143));
    assert_eq!(project.count("app", "term"), 1);
    assert!(processes_with_marker(&project.marker).is_empty());
}

#[test]
fn a_second_ctrl_c_skips_the_grace_period() {
    let project = Project::new();
    // Ignores the stop signal; the grace period is a minute.
    let script = "echo start >> \"$LOG\"; trap '' INT TERM; while :; do sleep 0.02; done";
    let mut tpr = run_harness(
        &project,
        &["--stop-timeout-ms", "60000", "--", "sh", "-c", script],
    );
    eventually_blocking("started", || project.count("app", "start") == 1);
    let pid = Pid::from_raw(tpr.id() as i32);
    kill(pid, Signal::SIGINT).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        tpr.try_wait().unwrap().is_none(),
        "the first Ctrl-C must wait for the grace period"
    );
    kill(pid, Signal::SIGINT).unwrap();
    let status = wait_with_timeout(&mut tpr);
    assert_eq!(status.code(), Some(130));
    let stderr = output_of(&project, "stderr");
    assert!(
        stderr.contains("stopping (press Ctrl-C again to stop at once)"),
        "{stderr}"
    );
    assert!(stderr.contains("stopping at once"), "{stderr}");
    assert!(processes_with_marker(&project.marker).is_empty());
}

#[test]
fn once_returns_the_exit_status() {
    let project = Project::new();
    let mut tpr = run_harness(&project, &["--once", "--", "sh", "-c", "exit 7"]);
    let status = wait_with_timeout(&mut tpr);
    assert_eq!(status.code(), Some(7));
    let stderr = output_of(&project, "stderr");
    assert!(
        stderr.contains("process p0 exited with status 7"),
        "{stderr}"
    );
}

#[test]
fn output_is_prefixed_when_several_processes_run() {
    let project = Project::new();
    let mut tpr = run_harness(
        &project,
        &[
            "--once",
            "--name",
            "web",
            "--",
            "sh",
            "-c",
            // Exits (ending the --once session) only after worker printed.
            "while [ ! -e worker-ready ]; do sleep 0.01; done; echo hello; echo oops >&2; printf partial",
            "::",
            "--name",
            "worker",
            "--",
            "sh",
            "-c",
            "echo from worker; touch worker-ready; exec sleep 1000",
        ],
    );
    let status = wait_with_timeout(&mut tpr);
    assert_eq!(status.code(), Some(0));
    let stdout = output_of(&project, "stdout");
    let stderr = output_of(&project, "stderr");
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        ["[web] hello", "[web] partial", "[worker] from worker"]
    );
    assert!(stderr.lines().any(|l| l == "[web] oops"), "{stderr}");
}

#[tokio::test]
async fn shutdown_outcome_is_reported() {
    let project = Project::new();
    let session = Session::start(vec![project.spec("app", "exec sleep 1000")], |_| {});
    eventually("started", || project.count("app", "start") == 1).await;
    assert_eq!(session.stop().await, Outcome::Shutdown);
}
