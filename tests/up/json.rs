//! `tpr up --output json`: stdout is one JSON event per line and nothing
//! else, from `validated` to `stopped`; the process's output goes to
//! stderr; errors arrive as an `error` event; `tpr leave` restarts the
//! process without the intercept's environment.

use std::time::Duration;

use serde_json::Value;
use tpr_e2e::{Cluster, Result};

use crate::support::{ProjectDir, deploy_hello, free_port};
use crate::{UP, bare_project, text};

/// Every stdout line parsed; panics naming the line that is not JSON.
fn events(stdout: &str, all: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\n{all}"))
        })
        .collect()
}

fn names(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event"].as_str().expect("every object has an event"))
        .collect()
}

/// `want` appears in `names` in this order (other events between).
fn assert_in_order(names: &[&str], want: &[&str]) {
    let mut rest = names.iter();
    for w in want {
        assert!(
            rest.any(|n| n == w),
            "{w} missing or out of order in {names:?}"
        );
    }
}

fn first<'a>(events: &'a [Value], name: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == name)
        .unwrap_or_else(|| panic!("no {name} event"))
}

/// No string anywhere in `v` is `secret` (env values never reach events).
fn assert_no_value(v: &Value, secret: &str) {
    match v {
        Value::String(s) => assert_ne!(s, secret, "an env value in an event"),
        Value::Array(a) => a.iter().for_each(|v| assert_no_value(v, secret)),
        Value::Object(o) => o.values().for_each(|v| assert_no_value(v, secret)),
        _ => {}
    }
}

const ONCE_PROCESS: &str = r#"[[process]]
name = "app"
command = ["sh", "-c", "echo OUT-MARKER; echo ERR-MARKER >&2; test \"$HELLO_ENV\" = cluster && exit 3"]
watch = ["src"]
"#;

const LONG_PROCESS: &str = r#"[[process]]
name = "app"
env_from = "hello"
command = ["sh", "-c", "echo HELLO_ENV=${HELLO_ENV:-unset}; exec sleep 600"]
watch = ["src"]
"#;

pub async fn json(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let port = format!("{}:http", free_port());

    // 1. --once from start to end: the expected events in order, the
    //    process's stdout on stderr, its status the exit status.
    let once = ProjectDir::new(&format!(
        "{}{ONCE_PROCESS}",
        bare_project(ns, "hello", &port, "env.file = \".env.hello\"")
    ));
    let out = once.tpr(&["up", "--once", "--output", "json"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ev = events(&stdout, &all);
    let n = names(&ev);
    assert_in_order(
        &n,
        &[
            "validated",
            "connected",
            "installing",
            "installed",
            "intercept_active",
            "env_written",
            "process_started",
            "process_exited",
            "stopped",
        ],
    );
    assert_eq!(n.last(), Some(&"stopped"), "{n:?}");
    assert_eq!(ev.last().unwrap()["exit_code"], 3, "{all}");
    let active = first(&ev, "intercept_active");
    assert_eq!(active["name"], "hello", "{active}");
    assert_eq!(active["workload"], "hello", "{active}");
    assert_eq!(active["kind"], "Deployment", "{active}");
    assert_eq!(active["namespace"], ns, "{active}");
    assert_eq!(active["mechanism"], "tcp", "{active}");
    assert_eq!(active["ports"][0]["service_port"], "http", "{active}");
    let written = first(&ev, "env_written");
    assert!(written["variables"].as_u64() > Some(0), "{written}");
    assert!(
        written["file"].as_str().unwrap().ends_with(".env.hello"),
        "{written}"
    );
    let exited = first(&ev, "process_exited");
    assert_eq!(exited["process"], "app", "{exited}");
    assert_eq!(exited["status"]["code"], 3, "{exited}");
    assert!(
        !stdout.contains("MARKER"),
        "process output on stdout\n{all}"
    );
    assert!(
        stderr.contains("OUT-MARKER") && stderr.contains("ERR-MARKER"),
        "{all}"
    );
    ev.iter().for_each(|e| assert_no_value(e, "cluster"));

    // 2. An error: an `error` event, then `stopped`, a non-zero exit, and
    //    the diagnostic on stderr as usual.
    let missing = ProjectDir::new(&bare_project(ns, "nope", &port, ""));
    let out = missing.tpr(&["up", "--once", "--output", "json"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let ev = events(&String::from_utf8_lossy(&out.stdout), &all);
    let n = names(&ev);
    assert_eq!(&n[n.len() - 2..], ["error", "stopped"], "{all}");
    let error = &ev[ev.len() - 2];
    assert!(
        error["message"].as_str().unwrap().contains("nope"),
        "{error}"
    );
    assert_eq!(ev.last().unwrap()["exit_code"], 1, "{all}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope"),
        "{all}"
    );

    // 3. `tpr leave`: the process that ran with the intercept's env is
    //    restarted without it, and the stream says so.
    let long = ProjectDir::new(&format!(
        "{}{LONG_PROCESS}",
        bare_project(ns, "hello", &port, "")
    ));
    let mut up = long.up(&["--output", "json"]);
    up.wait_for("HELLO_ENV=cluster", UP).await;
    let leave = long.tpr(&["leave", "hello"]);
    assert!(leave.status.success(), "{}", text(&leave));
    up.wait_for("HELLO_ENV=unset", Duration::from_secs(30))
        .await;
    let down = long.tpr(&["down"]);
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(
        up.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        up.stderr()
    );
    let all = format!("--- stdout\n{}--- stderr\n{}", up.stdout(), up.stderr());
    let ev = events(&up.stdout(), &all);
    let n = names(&ev);
    assert_in_order(
        &n,
        &[
            "intercept_active",
            "process_started",
            "intercept_ended",
            "processes_reloaded",
            "process_started",
            "stopping",
            "stopped",
        ],
    );
    let ended = first(&ev, "intercept_ended");
    assert_eq!(ended["reason"], "leave", "{ended}");
    assert_eq!(ended["processes"], serde_json::json!(["app"]), "{ended}");
    let reloaded = first(&ev, "processes_reloaded");
    assert_eq!(reloaded["cause"], "update", "{reloaded}");
    assert_eq!(
        reloaded["restarted"],
        serde_json::json!(["app"]),
        "{reloaded}"
    );
    assert_eq!(ev.last().unwrap()["exit_code"], 0, "{all}");
    assert!(!up.stdout().contains("HELLO_ENV="), "{all}");
    Ok(())
}
