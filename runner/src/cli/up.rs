//! `tpr up`: make the cluster match the file, run the processes, stay up.

use std::process::ExitCode;

use clap::Args;

use super::status::Output;
use crate::project_file::ProjectArgs;
use crate::up::interrupt::Interrupt;
use crate::up::run::{UpOptions, up};
use crate::up::{Events, UpEvent};

/// The event vocabulary of `--output json` (README, "Machine-readable output").
const EVENTS_HELP: &str = "\
With --output json, stdout carries one JSON object per line (NDJSON) and nothing else; \
the processes' own output (stdout too) and tpr's diagnostics go to stderr. \
Each object has an \"event\" field:
  validated             file, intercepts, processes
  connected             context, server, install_id
  stale_session         pid (a previous tpr up ended without cleaning up)
  installing            workload, kind, namespace
  progress              message
  installed             workload, kind, namespace, seconds
  intercept_active      name, workload, kind, namespace, mechanism, ports[{local, service_port}],
                        headers[{header, regex}], path_prefix, pods (every ready pod routes),
                        preview_url (null without [intercept.preview]; its token is a secret)
  preview_ingress       intercept, ingress (detected from; null: the file), host, port, tls, l5, path
  preview_rotated       name, preview_url (tpr preview rotate: the old link no longer routes here)
  to_pod_listening      workload, kind, namespace, ports
  env_written           intercept, file, variables (a count), skipped (names), format
  no_processes
  process_started       process, pid
  process_ready         process, seconds (its [process.ready] check passed)
  restarting            process, paths (files changed)
  process_exited        process, status {code} or {signal}, restart_in_ms
  process_start_failed  process, error
  watch_failed          process, error
  processes_reloaded    cause (project_file or update), started, restarted, stopped
  reload_failed         error
  reconciled            (a file edit changed the intercepts)
  reconcile_failed      error
  intercept_ended       name, reason (left_file, leave, workload_deleted, service_changed,
                        agent_lost), detail, processes (restarted without its env)
  pod_joined            workload, kind, namespace, pod, pods (how many route here now)
  pod_left              workload, kind, namespace, pod, reason, pods
  pod_pending           workload, kind, namespace, pod, error (ready, not connected yet)
  template_drift        workload, kind, namespace, change (someone else's; the agent is re-applied)
  connection_lost       workload, kind, namespace, pod, reason (no pod routes here any more)
  reconnecting          workload, kind, namespace, seconds, error
  connection_restored   workload, kind, namespace, pod, intercepts
  local_unreachable     intercept, target, error
  local_reachable       intercept, target
  agent_notice          intercept, message
  outbound_ready        intercept, mode (namespace: as root; user_namespace: without root)
  outbound_failed       intercept, destination, reason
  stopping              graceful
  warning               message
  error                 message, help, problems[{file, line, column, message, help}] (invalid file)
  stopped               exit_code (always the last line)
Env values never appear in events.";

#[derive(Args, Debug)]
#[command(after_long_help = EVENTS_HELP)]
pub struct UpArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Exit when a process exits, with its status (and end the intercepts).
    #[arg(long)]
    pub once: bool,
    /// Output format: `json` prints one event object per line on stdout and
    /// sends the processes' output to stderr (see --help).
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(args: &UpArgs) -> miette::Result<ExitCode> {
    let events = match args.output {
        Output::Text => Events::Human,
        Output::Json => Events::Json,
    };
    let result = run_up(args, events);
    let code = match &result {
        Ok(code) => *code,
        Err(report) => {
            events.emit(UpEvent::error(report));
            1
        }
    };
    events.emit(UpEvent::Stopped { exit_code: code });
    // The error is also rendered on stderr by `main`.
    result.map(|code| ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn run_up(args: &UpArgs, events: Events) -> miette::Result<i32> {
    super::block_on(async {
        // Ctrl-C is handled from the first step on.
        let interrupt = Interrupt::listen(events)?;
        // An invalid file stops here: nothing in the cluster changes.
        let project = args.project.load()?;
        let code = up(
            project,
            UpOptions {
                file: args.project.file.clone(),
                once: args.once,
                events,
            },
            interrupt,
        )
        .await?;
        Ok(code)
    })
}
