//! `tpr leave NAME`: end one intercept of the running `tpr up`.

use std::process::ExitCode;

use clap::Args;

use crate::project_file::ProjectArgs;
use crate::up::UpError;
use crate::up::control::{Request, ask};
use crate::up::state::StatePaths;

#[derive(Args, Debug)]
pub struct LeaveArgs {
    /// The intercept's name (as `tpr status` shows it).
    pub name: String,
    #[command(flatten)]
    pub project: ProjectArgs,
}

pub fn run(args: &LeaveArgs) -> miette::Result<ExitCode> {
    let paths = StatePaths::for_project(&args.project.file)?;
    let answer = super::block_on(ask(&paths.socket, &Request::Leave(args.name.clone())))?;
    match answer {
        Some(text) => {
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        None => Err(UpError::NotRunning {
            project: args.project.file.display().to_string(),
        }
        .into()),
    }
}
