//! Project file edits: valid ones restart only what changed, invalid ones
//! are reported and change nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tpr::session_loop::SessionEvent;
use tpr::supervise::ProcessSpec;

use crate::support::{Project, Session, eventually, processes_with_marker};

const SLEEP: &str = "exec sleep 1000";

#[tokio::test]
async fn a_valid_edit_restarts_only_what_changed_and_an_invalid_one_keeps_the_state() {
    let project = Project::new();
    let config = project.root.join("telepresence.toml");
    project.write("telepresence.toml", "v1\n");
    let web = project.spec("web", SLEEP);
    let worker = project.spec("worker", SLEEP);
    let mut gone = project.spec("gone", SLEEP);
    gone.watch.clear();
    let next: Arc<Mutex<Result<Vec<ProcessSpec>, String>>> =
        Arc::new(Mutex::new(Err("not yet".into())));
    let reload_next = next.clone();
    let session = Session::start_with_reload(
        vec![web.clone(), worker.clone(), gone.clone()],
        Box::new(move || reload_next.lock().unwrap().clone()),
        |options| {
            options.project_files =
                vec![config.clone(), project.root.join("telepresence.local.toml")]
        },
    );
    eventually("all started", || {
        ["web", "worker", "gone"]
            .iter()
            .all(|n| project.count(n, "start") == 1)
    })
    .await;

    // Valid: worker's env changes, web's stop timeout only, gone removed,
    // extra added.
    let mut web2 = web.clone();
    web2.stop_timeout = Duration::from_secs(1);
    let mut worker2 = worker.clone();
    worker2.env.insert("LEVEL".into(), "debug".into());
    let mut extra = project.spec("extra", SLEEP);
    extra.watch.clear();
    *next.lock().unwrap() = Ok(vec![web2, worker2, extra]);
    project.write("telepresence.toml", "v2\n");
    eventually("reloaded", || {
        session
            .events
            .count(|e| matches!(e, SessionEvent::Reloaded { .. }))
            == 1
    })
    .await;
    eventually("worker restarted, extra started", || {
        project.count("worker", "start") == 2 && project.count("extra", "start") == 1
    })
    .await;
    let reloaded = session
        .events
        .lines()
        .into_iter()
        .find(|l| l.starts_with("project file reloaded"))
        .unwrap();
    assert_eq!(
        reloaded,
        "project file reloaded: started extra restarted worker stopped gone"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The project file sits in web's watch set but is not a restart trigger.
    assert_eq!(project.count("web", "start"), 1);
    assert_eq!(project.count("gone", "start"), 1);

    // Invalid: reported, nothing restarts or stops. The optional local
    // file, created now, is watched too.
    *next.lock().unwrap() = Err("telepresence.local.toml:3:1: unknown field `comand`".into());
    let before = processes_with_marker(&project.marker);
    project.write("telepresence.local.toml", "comand = 1\n");
    eventually("invalid edit reported", || {
        session.events.lines().iter().any(|l| {
            l == "project file not applied, still running the previous version: \
                  telepresence.local.toml:3:1: unknown field `comand`"
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut after = processes_with_marker(&project.marker);
    let mut before_sorted = before.clone();
    before_sorted.sort();
    after.sort();
    assert_eq!(
        after, before_sorted,
        "an invalid edit changed running processes"
    );
    for (name, starts) in [("web", 1), ("worker", 2), ("extra", 1)] {
        assert_eq!(project.count(name, "start"), starts, "{name}");
    }
    session.stop().await;
    assert!(processes_with_marker(&project.marker).is_empty());
}

#[tokio::test]
async fn a_changed_watch_set_takes_effect() {
    let project = Project::new();
    let config = project.root.join("telepresence.toml");
    project.write("telepresence.toml", "v1\n");
    project.write("other/file.txt", "x\n");
    let mut web = project.spec("web", SLEEP);
    web.watch = vec![project.root.join("src")];
    let mut web2 = web.clone();
    web2.watch = vec![project.root.join("other")];
    let next = Arc::new(Mutex::new(Ok(vec![web2])));
    let reload_next = next.clone();
    let session = Session::start_with_reload(
        vec![web],
        Box::new(move || reload_next.lock().unwrap().clone()),
        |options| options.project_files = vec![config.clone()],
    );
    eventually("started", || project.count("web", "start") == 1).await;
    project.write("telepresence.toml", "v2\n");
    eventually("restarted for the new watch set", || {
        project.count("web", "start") == 2
    })
    .await;
    project.write("src/main.txt", "v2\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        project.count("web", "start"),
        2,
        "the old watch set still triggers"
    );
    project.write("other/file.txt", "y\n");
    eventually("the new watch set triggers", || {
        project.count("web", "start") == 3
    })
    .await;
    session.stop().await;
}
