use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Must come first: tpr re-executes itself as the supervisor shim.
    tpr::supervise::shim_main_if_requested();
    let args = tpr::cli::Args::parse();
    match tpr::cli::run(args) {
        Ok(code) => code,
        Err(report) => {
            eprint!("{}", tpr::report::render(&report));
            ExitCode::FAILURE
        }
    }
}
