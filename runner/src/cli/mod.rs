//! The `tpr` command line: one module per subcommand.

mod completions;
mod config;
mod down;
mod env;
mod exec;
mod leave;
mod list;
mod preview;
mod status;
mod uninstall;
mod up;
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
    /// Make the cluster match telepresence.toml, run the processes, stay up until Ctrl-C.
    Up(up::UpArgs),
    /// End this project's intercepts (stops a running `tpr up`).
    Down(down::DownArgs),
    /// End one intercept of the running `tpr up`.
    Leave(leave::LeaveArgs),
    /// Show the connection, install id and this project's intercepts.
    Status(status::StatusArgs),
    /// Print an intercept's preview link, or give it a new token (`url`, `rotate`).
    ///
    /// An http intercept with `[intercept.preview]` gets a link through the
    /// team's own ingress: `https://<ingress>/<path>?tpr_preview=<token>`. A
    /// request carrying the token (the `tpr_preview` query parameter, then
    /// the cookie the traffic agent sets) comes to this machine while `tpr
    /// up` runs; all other traffic goes to the cluster as before. No third
    /// party is involved. `tpr up` prints the link in the intercept block
    /// (`Preview URL`), `tpr status` shows it.
    ///
    /// The token is 128 random bits, kept per install id and intercept in
    /// `preview-tokens.json` beside the install id (mode 0600) until
    /// rotated. It is a bearer secret: whoever has the link reaches your
    /// machine through the intercept. Share it like a password; rotate it
    /// when it leaked or is no longer needed.
    Preview(preview::PreviewArgs),
    /// List the workloads of a namespace: interceptable, agent, intercepted.
    List(list::ListArgs),
    /// Remove the traffic agent and restore the workloads' pod templates.
    Uninstall(uninstall::UninstallArgs),
    /// Print an intercept's pod environment.
    Env(env::EnvArgs),
    /// Run a command in the network view of the running `tpr up` (cluster names and addresses through the intercepted pod).
    Exec(exec::ExecArgs),
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
        Command::Up(a) => up::run(&a),
        Command::Down(a) => down::run(&a),
        Command::Leave(a) => leave::run(&a),
        Command::Status(a) => status::run(&a),
        Command::Preview(a) => preview::run(&a),
        Command::List(a) => list::run(&a),
        Command::Uninstall(a) => uninstall::run(&a),
        Command::Env(a) => env::run(&a),
        Command::Exec(a) => exec::run(&a),
        Command::Validate(project) => validate::run(&project),
        Command::Config(config) => config::run(&config),
        Command::Schema => {
            print!("{}", tpr_schema::json_schema());
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions(c) => completions::run(&c),
    }
}

/// Runs the async part of a command on a small runtime.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        super::Args::command().debug_assert();
    }
}
