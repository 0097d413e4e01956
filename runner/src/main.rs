use std::process::ExitCode;

use clap::Parser;

/// glibc's allocator gives freed buffers back to the kernel eagerly; the
/// tunnel frees a 64 KiB frame buffer per chunk, and page faults refilling
/// them cost more than the copies. mimalloc keeps them (see bench/agent).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Must come first: tpr re-executes itself as the supervisor shim.
    tpr::supervise::shim_main_if_requested();
    // Also first: a process joining its outbound namespace, and the helper
    // holding one without root (both need a single-threaded process).
    tpr::outbound::netns_exec_main_if_requested();
    tpr::outbound::netns_hold_main_if_requested();
    let args = tpr::cli::Args::parse();
    match tpr::cli::run(args) {
        Ok(code) => code,
        Err(report) => {
            eprint!("{}", tpr::report::render(&report));
            ExitCode::FAILURE
        }
    }
}
