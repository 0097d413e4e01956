//! Restarts: on save, on atomic save (exactly once), never for ignored
//! files or tpr's own env file; exits reported; backoff.

use std::time::Duration;

use tpr::session_loop::SessionEvent;
use tpr::supervise::Backoff;

use crate::support::{Project, Session, eventually};

const SLEEP: &str = "exec sleep 1000";

/// Long enough for a burst to be seen and debounced if there was one; used
/// only to let a wrong restart happen before checking there was none.
const SETTLE: Duration = Duration::from_millis(400);

#[tokio::test]
async fn restarts_on_save() {
    let project = Project::new();
    let session = Session::start(vec![project.spec("app", SLEEP)], |_| {});
    eventually("first start", || project.count("app", "start") == 1).await;

    project.write("src/main.txt", "v2\n");
    eventually("restart after save", || project.count("app", "start") == 2).await;
    let changed = session.events.count(|e| {
        matches!(e, SessionEvent::Changed { paths, .. } if paths == &[project.root.join("src/main.txt")])
    });
    assert_eq!(changed, 1, "{:?}", session.events.lines());

    session.stop().await;
    assert_eq!(
        crate::support::processes_with_marker(&project.marker),
        Vec::<i32>::new()
    );
}

#[tokio::test]
async fn atomic_save_restarts_exactly_once() {
    let project = Project::new();
    let session = Session::start(vec![project.spec("app", SLEEP)], |_| {});
    eventually("first start", || project.count("app", "start") == 1).await;

    // What most editors and formatters do: write a temp file, rename it
    // over the original.
    let temp = project.root.join("src/main.txt.tmp.4242");
    std::fs::write(&temp, "v2\n").unwrap();
    std::fs::rename(&temp, project.root.join("src/main.txt")).unwrap();
    eventually("restart after atomic save", || {
        project.count("app", "start") == 2
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        project.count("app", "start"),
        2,
        "{:?}",
        session.events.lines()
    );

    session.stop().await;
}

#[tokio::test]
async fn ignored_files_and_the_env_file_do_not_restart() {
    let project = Project::new();
    project.write(".gitignore", "*.log\nbuild/\n");
    project.write("src/.ignore", "generated.rs\n");
    std::fs::create_dir_all(project.root.join(".git")).unwrap();
    let env_file = project.root.join(".env.tpr");
    let mut spec = project.spec("app", SLEEP);
    spec.ignore = vec!["*.tmp".into(), "/docs".into()];
    let session = Session::start(vec![spec], |options| {
        options.ignored_files = vec![env_file.clone()];
    });
    eventually("first start", || project.count("app", "start") == 1).await;

    for ignored in [
        "server.log",               // .gitignore
        "build/out.bin",            // .gitignore directory (created now)
        "src/generated.rs",         // .ignore
        "notes.tmp",                // the file's pattern
        "docs/index.md",            // the file's rooted pattern
        "src/4913",                 // vim's write test
        "src/.main.txt.swp",        // vim swap
        "src/.main.txt.swx",        // vim swap
        "src/main.txt~",            // backup
        "src/.#main.txt",           // emacs lock
        "src/#main.txt#",           // emacs auto-save
        "src/main.txt___jb_tmp___", // JetBrains safe write
        "src/main.txt___jb_old___", // JetBrains safe write
        ".git/index",               // git itself
        ".env.tpr",                 // tpr's own env file
    ] {
        project.write(ignored, "x\n");
    }
    std::fs::remove_file(project.root.join("src/4913")).unwrap();
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        project.count("app", "start"),
        1,
        "{:?}",
        session.events.lines()
    );

    // The watcher is alive: a real change still restarts, and the burst
    // names only the real change.
    project.write("src/main.txt", "v2\n");
    eventually("restart after a real change", || {
        project.count("app", "start") == 2
    })
    .await;
    let changes: Vec<_> = session
        .events
        .all()
        .into_iter()
        .filter_map(|e| match e {
            SessionEvent::Changed { paths, .. } => Some(paths),
            _ => None,
        })
        .collect();
    assert_eq!(changes, vec![vec![project.root.join("src/main.txt")]]);
    session.stop().await;
}

#[tokio::test]
async fn a_new_directory_is_watched() {
    let project = Project::new();
    let session = Session::start(vec![project.spec("app", SLEEP)], |_| {});
    eventually("first start", || project.count("app", "start") == 1).await;
    std::fs::create_dir_all(project.root.join("src/new/deeper")).unwrap();
    eventually("restart for the new directory", || {
        project.count("app", "start") == 2
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    project.write("src/new/deeper/file.txt", "x\n");
    eventually("restart for a file in it", || {
        project.count("app", "start") == 3
    })
    .await;
    session.stop().await;
}

#[tokio::test]
async fn an_exit_is_reported_and_the_next_change_restarts() {
    let project = Project::new();
    let session = Session::start(vec![project.spec("app", "exit 3")], |_| {});
    eventually("exit reported", || {
        session.events.lines().contains(
            &"process app exited with status 3 (waiting for a change to restart)".to_string(),
        )
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(project.count("app", "start"), 1);
    project.write("src/main.txt", "v2\n");
    eventually("restart after change", || {
        project.count("app", "start") == 2
    })
    .await;
    session.stop().await;
}

#[tokio::test]
async fn exits_restart_with_backoff_when_configured() {
    let project = Project::new();
    let mut spec = project.spec("app", "exit 1");
    spec.restart_on_exit = Some(Backoff {
        initial: Duration::from_millis(20),
        // Long enough that no run of a quick-exiting process (even on a
        // loaded machine) counts as healthy and resets the backoff.
        max: Duration::from_secs(30),
    });
    let session = Session::start(vec![spec], |_| {});
    eventually("four exits", || {
        session
            .events
            .count(|e| matches!(e, SessionEvent::Exited { .. }))
            >= 4
    })
    .await;
    assert!(project.count("app", "start") >= 4);
    let delays: Vec<Duration> = session
        .events
        .all()
        .into_iter()
        .filter_map(|e| match e {
            SessionEvent::Exited { restart_in, .. } => restart_in,
            _ => None,
        })
        .take(4)
        .collect();
    assert_eq!(
        delays,
        [20, 40, 80, 160].map(Duration::from_millis).to_vec()
    );
    session.stop().await;
}

#[tokio::test]
async fn a_missing_program_is_reported_and_retried_on_change() {
    let project = Project::new();
    let mut spec = project.spec("app", SLEEP);
    spec.shell = false;
    spec.command = vec!["./start.sh".into()];
    let session = Session::start(vec![spec], |_| {});
    eventually("start failure reported", || {
        session.events.lines().iter().any(|l| {
            l.contains("program `./start.sh` not found")
                && l.contains("waiting for a change to retry")
        })
    })
    .await;
    let script = project.root.join("start.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho start >> \"$LOG\"\nexec sleep 1000\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    eventually("started once the program exists", || {
        project.count("app", "start") == 1
    })
    .await;
    session.stop().await;
}

#[tokio::test]
async fn the_new_run_starts_only_after_the_old_one_exited() {
    let project = Project::new();
    // Slow to stop: a new run started early would log before `stopped`.
    let script =
        "trap 'sleep 0.3; echo stopped >> \"$LOG\"; exit 0' TERM; while :; do sleep 0.02; done";
    let session = Session::start(vec![project.spec("app", script)], |_| {});
    eventually("first start", || project.count("app", "start") == 1).await;
    project.write("src/main.txt", "v2\n");
    eventually("restart", || project.count("app", "start") == 2).await;
    let log = std::fs::read_to_string(project.log("app")).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["start", "stopped", "start"]
    );
    session.stop().await;
}
