//! `tpr config`: the configuration tpr would use, after merge and defaults.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use miette::IntoDiagnostic;

use crate::project_file::ProjectArgs;

#[derive(Args, Debug)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Toml)]
    pub output: Output,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Toml,
    Json,
}

pub fn run(args: &ConfigArgs) -> miette::Result<ExitCode> {
    let project = args.project.load()?;
    let text = match args.output {
        Output::Toml => toml::to_string_pretty(&project).into_diagnostic()?,
        Output::Json => serde_json::to_string_pretty(&project).into_diagnostic()? + "\n",
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
