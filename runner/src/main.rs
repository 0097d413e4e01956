use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = tpr::cli::Args::parse();
    match tpr::cli::run(args) {
        Ok(code) => code,
        Err(report) => {
            eprint!("{}", tpr::report::render(&report));
            ExitCode::FAILURE
        }
    }
}
