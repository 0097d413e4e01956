//! `tpr up`: make the cluster match the file, run the processes, stay up.

use std::process::ExitCode;

use clap::Args;

use crate::project_file::ProjectArgs;
use crate::up::run::{UpOptions, up};

#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Exit when a process exits, with its status (and end the intercepts).
    #[arg(long)]
    pub once: bool,
}

pub fn run(args: &UpArgs) -> miette::Result<ExitCode> {
    // An invalid file stops here: nothing in the cluster changes.
    let project = args.project.load()?;
    let code = super::block_on(up(
        project,
        UpOptions {
            file: args.project.file.clone(),
            once: args.once,
        },
    ))?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
