//! `tpr completions SHELL`.

use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    pub shell: Shell,
}

pub fn run(args: &CompletionsArgs) -> miette::Result<ExitCode> {
    let mut command = super::Args::command();
    clap_complete::generate(args.shell, &mut command, "tpr", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
