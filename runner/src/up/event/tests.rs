use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use super::*;
use crate::session_loop::ReloadCause;
use crate::up::UpError;

fn hello() -> WorkloadRef {
    WorkloadRef {
        workload: "hello".into(),
        kind: "Deployment".into(),
        namespace: "shop".into(),
    }
}

fn human(e: &UpEvent) -> (&'static str, String) {
    match e.human() {
        Some(Human::Out(t)) => ("out", t),
        Some(Human::Err(t)) => ("err", t),
        None => ("none", String::new()),
    }
}

#[test]
fn cluster_events_are_one_flat_object_each() {
    let cases = [
        (
            UpEvent::Installed {
                workload: hello(),
                seconds: 2.5,
            },
            r#"{"event":"installed","workload":"hello","kind":"Deployment","namespace":"shop","seconds":2.5}"#,
        ),
        (
            UpEvent::ToPodListening {
                workload: hello(),
                ports: vec![6379, 9000],
            },
            r#"{"event":"to_pod_listening","workload":"hello","kind":"Deployment","namespace":"shop","ports":[6379,9000]}"#,
        ),
        (
            UpEvent::InterceptEnded {
                name: "hello".into(),
                reason: EndReason::Leave,
                detail: None,
                processes: vec!["main".into()],
            },
            r#"{"event":"intercept_ended","name":"hello","reason":"leave","processes":["main"]}"#,
        ),
        (
            UpEvent::InterceptEnded {
                name: "hello".into(),
                reason: EndReason::WorkloadDeleted,
                detail: Some("deployment/hello was deleted".into()),
                processes: vec![],
            },
            r#"{"event":"intercept_ended","name":"hello","reason":"workload_deleted","detail":"deployment/hello was deleted","processes":[]}"#,
        ),
        (
            UpEvent::PodJoined {
                workload: hello(),
                pod: "hello-2".into(),
                pods: 2,
            },
            r#"{"event":"pod_joined","workload":"hello","kind":"Deployment","namespace":"shop","pod":"hello-2","pods":2}"#,
        ),
        (
            UpEvent::TemplateDrift {
                workload: hello(),
                change: "the agent container was removed".into(),
            },
            r#"{"event":"template_drift","workload":"hello","kind":"Deployment","namespace":"shop","change":"the agent container was removed"}"#,
        ),
        (
            UpEvent::ConnectionLost {
                workload: hello(),
                pod: "hello-1".into(),
                reason: "stream closed".into(),
            },
            r#"{"event":"connection_lost","workload":"hello","kind":"Deployment","namespace":"shop","pod":"hello-1","reason":"stream closed"}"#,
        ),
        (UpEvent::Reconciled, r#"{"event":"reconciled"}"#),
        (UpEvent::NoProcesses, r#"{"event":"no_processes"}"#),
        (
            UpEvent::Error {
                message: "no Service".into(),
                help: Some("add one".into()),
                problems: vec![],
            },
            r#"{"event":"error","message":"no Service","help":"add one","problems":[]}"#,
        ),
        (
            UpEvent::Stopped { exit_code: 7 },
            r#"{"event":"stopped","exit_code":7}"#,
        ),
    ];
    for (event, line) in cases {
        assert_eq!(event.json(), line);
    }
}

#[test]
fn an_outbound_namespace_is_announced_with_how_it_was_made() {
    let cases = [
        (
            crate::outbound::Mode::Namespace,
            r#"{"event":"outbound_ready","intercept":"hello","mode":"namespace"}"#,
            "outbound namespace of intercept hello ready (as root)",
        ),
        (
            crate::outbound::Mode::UserNamespace,
            r#"{"event":"outbound_ready","intercept":"hello","mode":"user_namespace"}"#,
            "outbound namespace of intercept hello ready (in a user namespace, without root)",
        ),
    ];
    for (mode, line, person) in cases {
        let event = UpEvent::OutboundReady {
            intercept: "hello".into(),
            mode,
        };
        assert_eq!(event.json(), line);
        assert_eq!(human(&event), ("err", person.to_owned()));
    }
}

#[test]
fn the_env_file_event_counts_variables_and_names_only_the_skipped_ones() {
    let e = UpEvent::EnvWritten {
        intercept: "hello".into(),
        file: "/p/.env".into(),
        variables: 7,
        skipped: vec!["A.B".into()],
        format: "compose".into(),
    };
    assert_eq!(
        e.json(),
        r#"{"event":"env_written","intercept":"hello","file":"/p/.env","variables":7,"skipped":["A.B"],"format":"compose"}"#
    );
    assert_eq!(
        human(&e),
        (
            "err",
            "wrote 7 variables of intercept hello to /p/.env (left out A.B: not expressible in compose format)"
                .to_string()
        )
    );
}

#[test]
fn process_events_keep_their_own_names_inside_up_events() {
    let cases = [
        (
            SessionEvent::Started {
                name: "main".into(),
                pid: 42,
            },
            r#"{"event":"process_started","process":"main","pid":42}"#,
        ),
        (
            SessionEvent::Exited {
                name: "main".into(),
                status: ExitStatus::from_raw(7 << 8),
                restart_in: None,
            },
            r#"{"event":"process_exited","process":"main","status":{"code":7},"restart_in_ms":null}"#,
        ),
        (
            SessionEvent::Exited {
                name: "main".into(),
                status: ExitStatus::from_raw(9),
                restart_in: Some(Duration::from_millis(200)),
            },
            r#"{"event":"process_exited","process":"main","status":{"signal":"SIGKILL"},"restart_in_ms":200}"#,
        ),
        (
            SessionEvent::Changed {
                name: "main".into(),
                paths: vec!["/p/src/a.rs".into()],
            },
            r#"{"event":"restarting","process":"main","paths":["/p/src/a.rs"]}"#,
        ),
        (
            SessionEvent::Reloaded {
                cause: ReloadCause::Update,
                started: vec![],
                restarted: vec!["main".into()],
                stopped: vec![],
            },
            r#"{"event":"processes_reloaded","cause":"update","started":[],"restarted":["main"],"stopped":[]}"#,
        ),
        (
            SessionEvent::Stopping { graceful: true },
            r#"{"event":"stopping","graceful":true}"#,
        ),
    ];
    for (event, line) in cases {
        let text = event.to_string();
        let up = UpEvent::Process(event);
        assert_eq!(up.json(), line);
        // People see the session's own wording.
        assert_eq!(human(&up), ("err", text));
    }
}

#[test]
fn an_active_intercept_reads_like_telepresence_for_people() {
    let tcp = UpEvent::InterceptActive {
        name: "hello".into(),
        workload: hello(),
        mechanism: "tcp",
        ports: vec![InterceptPort {
            local: 8080,
            service_port: "http".into(),
        }],
        headers: vec![],
        path_prefix: None,
        pods: vec!["hello-a".into(), "hello-b".into()],
        preview_url: None,
    };
    assert_eq!(
        human(&tcp),
        (
            "out",
            "intercepted\n    Intercept name         : hello\n    State                  : ACTIVE\n    Workload kind          : Deployment\n    Destination            : 127.0.0.1:8080\n    Service Port Identifier: http\n    Pods                   : hello-a, hello-b\n    Intercepting           : all TCP connections\n".to_string()
        )
    );
    let http = UpEvent::InterceptActive {
        name: "hello".into(),
        workload: hello(),
        ports: vec![InterceptPort {
            local: 8080,
            service_port: "http".into(),
        }],
        mechanism: "http",
        headers: vec![HeaderRule {
            header: "x-dev".into(),
            regex: "al.*".into(),
        }],
        path_prefix: Some("/api".into()),
        pods: vec!["hello-a".into()],
        preview_url: Some("https://shop.test/api/?tpr_preview=00ff".into()),
    };
    assert!(
        human(&http).1.ends_with(
            "Intercepting           : HTTP requests that match all of:\n      header(\"x-dev\") ~= regexp(\"al.*\")\n      path starts with \"/api\"\n    Preview URL            : https://shop.test/api/?tpr_preview=00ff\n"
        ),
        "{}",
        human(&http).1
    );
    assert!(
        http.json().ends_with(
            r#""pods":["hello-a"],"preview_url":"https://shop.test/api/?tpr_preview=00ff"}"#
        ),
        "{}",
        http.json()
    );
}

#[test]
fn a_preview_says_where_it_goes_and_a_rotation_gives_the_new_link() {
    let detected = UpEvent::PreviewIngress {
        intercept: "hello".into(),
        ingress: Some("hello".into()),
        host: "10.244.0.1".into(),
        port: 443,
        tls: true,
        l5: Some("shop.tpr.test".into()),
        path: "/".into(),
    };
    assert_eq!(
        human(&detected),
        (
            "err",
            "preview of intercept hello: https://shop.tpr.test through 10.244.0.1:443 (detected ingress/hello)".to_string()
        )
    );
    assert_eq!(
        detected.json(),
        r#"{"event":"preview_ingress","intercept":"hello","ingress":"hello","host":"10.244.0.1","port":443,"tls":true,"l5":"shop.tpr.test","path":"/"}"#
    );
    let rotated = UpEvent::PreviewRotated {
        name: "hello".into(),
        preview_url: "http://a.test/?tpr_preview=01".into(),
    };
    assert_eq!(
        rotated.json(),
        r#"{"event":"preview_rotated","name":"hello","preview_url":"http://a.test/?tpr_preview=01"}"#
    );
    assert!(
        human(&rotated)
            .1
            .contains("Preview URL            : http://a.test/?tpr_preview=01")
    );
}

#[test]
fn intercept_ended_says_which_processes_lose_its_env() {
    let e = UpEvent::InterceptEnded {
        name: "hello".into(),
        reason: EndReason::Leave,
        detail: None,
        processes: vec!["main".into()],
    };
    assert_eq!(
        human(&e),
        (
            "out",
            "ended intercept hello\nrestarting main without the environment of intercept hello\n"
                .to_string()
        )
    );
}

#[test]
fn an_error_event_carries_the_causes_and_the_help() {
    let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
    let e = UpError::Io {
        what: "reading telepresence.toml".into(),
        source: io,
    };
    // The cause is already in the message: not repeated.
    assert_eq!(
        UpEvent::error(&miette::Report::new(e)).json(),
        r#"{"event":"error","message":"reading telepresence.toml: No such file","help":null,"problems":[]}"#
    );
    // A cause that is not in the message is appended; the help comes along.
    let missing = tpr_schema::load(std::path::Path::new("/nonexistent/telepresence.toml"))
        .expect_err("no such file");
    let UpEvent::Error { message, help, .. } = UpEvent::error(&miette::Report::new(missing)) else {
        unreachable!()
    };
    assert!(
        message.starts_with("cannot read /nonexistent/telepresence.toml: "),
        "{message}"
    );
    assert!(message.contains("No such file"), "{message}");
    assert!(help.is_some_and(|h| h.contains("-f FILE")));
}

#[test]
fn an_invalid_file_lists_each_problem_where_it_is() {
    let team = tpr_schema::SourceFile::new(
        "telepresence.toml".to_string(),
        "format_version = 1\n[[intercept]]\nworkload = 3\n".to_string(),
    );
    let invalid = tpr_schema::parse(&team, None, std::path::Path::new("/p")).expect_err("invalid");
    let UpEvent::Error { problems, .. } = UpEvent::error(&miette::Report::new(invalid)) else {
        unreachable!()
    };
    let workload = problems
        .iter()
        .find(|p| p.line == 3)
        .unwrap_or_else(|| panic!("{problems:?}"));
    assert_eq!(workload.file, "telepresence.toml");
    assert_eq!(workload.column, 12, "{workload:?}");
}
