//! `tpr exec [--intercept NAME] -- CMD...`: runs a command in the network
//! view of the running `tpr up`'s processes (their outbound namespace):
//! cluster names and addresses through the intercepted pod, everything
//! else as on this machine. tpr joins the namespace and becomes the
//! command, so its exit status, terminal and signals are the command's own.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Args;
use miette::miette;

use crate::outbound;
use crate::project_file::ProjectArgs;
use crate::up::state::StatePaths;

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The intercept whose pod the command's traffic leaves from; default:
    /// the project's first intercept.
    #[arg(long, short = 'i', value_name = "NAME")]
    pub intercept: Option<String>,
    #[command(flatten)]
    pub project: ProjectArgs,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

pub fn run(args: &ExecArgs) -> miette::Result<ExitCode> {
    let project = args.project.load()?;
    let paths = StatePaths::for_project(&args.project.file)?;
    let file = args.project.file.display();
    let Some(state) = outbound::read_state(&outbound::state_path(&paths.file)) else {
        return Err(miette!(
            "no tpr up with outbound is running for {file}; start `tpr up` first (outbound needs an intercept and `[network] outbound` not false)"
        ));
    };
    if let Some(reason) = &state.disabled {
        return Err(miette!("outbound is off in the running tpr up: {reason}"));
    }
    let wanted = args
        .intercept
        .clone()
        .or_else(|| project.intercepts.first().map(|i| i.name.clone()));
    let Some(space) = state
        .spaces
        .iter()
        .find(|s| Some(&s.intercept) == wanted.as_ref())
    else {
        let known: Vec<&str> = state.spaces.iter().map(|s| s.intercept.as_str()).collect();
        return Err(miette!(
            "no outbound namespace for intercept {}; namespaces of the running tpr up: {}",
            wanted.as_deref().unwrap_or("-"),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ));
    };
    let error = outbound::join_and_exec(&space.paths, &args.command);
    Err(miette!(
        "cannot run {}: {error}",
        args.command[0].to_string_lossy()
    ))
}
