//! The `tpr` command line: one module per subcommand.

mod completions;
mod config;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::project_file::ProjectArgs;

/// Run one service of a Kubernetes application on this machine, as declared
/// in telepresence.toml.
#[derive(Parser, Debug)]
#[command(name = "tpr", version, about, max_term_width = 100)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check telepresence.toml and telepresence.local.toml; touches no cluster.
    Validate(ProjectArgs),
    /// Print the resolved configuration: both files merged, defaults applied.
    Config(config::ConfigArgs),
    /// Print the JSON Schema of telepresence.toml (for editors).
    Schema,
    /// Print a shell completion script.
    Completions(completions::CompletionsArgs),
}

/// Runs a parsed command line.
pub fn run(args: Args) -> miette::Result<ExitCode> {
    match args.command {
        Command::Validate(project) => validate::run(&project),
        Command::Config(config) => config::run(&config),
        Command::Schema => {
            print!("{}", tpr_schema::json_schema());
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions(c) => completions::run(&c),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        super::Args::command().debug_assert();
    }
}
