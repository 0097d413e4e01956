//! `tpr validate`: all problems of the project files, or a one-line summary.

use std::process::ExitCode;

use crate::project_file::ProjectArgs;

pub fn run(args: &ProjectArgs) -> miette::Result<ExitCode> {
    let project = args.load()?;
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    println!(
        "{}: valid ({}, {})",
        args.file.display(),
        count(project.intercepts.len(), "intercept"),
        count(project.processes.len(), "process")
    );
    Ok(ExitCode::SUCCESS)
}
