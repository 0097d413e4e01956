//! A minimal stand-in for `tpr up`'s local side, for the supervise tests:
//! it is its own supervisor shim, like tpr, and runs a session from
//! arguments.
//!
//! supervise_harness [--once] [--project FILE] [--env-file FILE]
//!     [--panic-on-change] [--name NAME] [--watch PATH] [--stop-timeout-ms N]
//!     -- COMMAND... [:: ...]
//!
//! `--panic-on-change` panics in the event handler on the first restart, to
//! test that a panicking tpr leaves nothing behind.
//!
//! `::` separates processes. Events go to stderr as `tpr: ...`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tpr::session_loop::{SessionEvent, SessionOptions, run_session};
use tpr::supervise::{ProcessSpec, own_env, shim_main_if_requested};

fn main() -> ExitCode {
    shim_main_if_requested();
    let mut options = SessionOptions::new().expect("own executable");
    let mut specs = Vec::new();
    let mut panic_on_change = false;
    let cwd = std::env::current_dir().expect("cwd");
    let mut args = std::env::args().skip(1).peekable();
    while args.peek().is_some() {
        let mut spec = ProcessSpec::new(format!("p{}", specs.len()), Vec::new(), cwd.clone());
        spec.env = own_env();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--once" => options.once = true,
                "--panic-on-change" => panic_on_change = true,
                "--project" => options
                    .project_files
                    .push(PathBuf::from(args.next().expect("FILE"))),
                "--env-file" => options
                    .ignored_files
                    .push(PathBuf::from(args.next().expect("FILE"))),
                "--name" => spec.name = args.next().expect("NAME"),
                "--watch" => spec.watch.push(PathBuf::from(args.next().expect("PATH"))),
                "--stop-timeout-ms" => {
                    let ms = args.next().expect("N").parse().expect("milliseconds");
                    spec.stop_timeout = Duration::from_millis(ms);
                }
                "--" => break,
                other => panic!("unknown argument {other}"),
            }
        }
        for arg in args.by_ref() {
            if arg == "::" {
                break;
            }
            spec.command.push(arg);
        }
        specs.push(spec);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(run_session(
        specs,
        || Err("the harness has no project file to re-read".to_string()),
        options,
        |event| {
            eprintln!("tpr: {event}");
            if panic_on_change && matches!(event, SessionEvent::Changed { .. }) {
                panic!("the harness panics on a change, as asked");
            }
        },
    ));
    match result {
        Ok(outcome) => ExitCode::from(outcome.exit_code() as u8),
        Err(err) => {
            eprintln!("tpr: {err}");
            ExitCode::from(1)
        }
    }
}
