//! The supervisor shim: the direct child of tpr for every local process.
//!
//! Why a shim: the kernel's parent-death signal reaches only the direct
//! child, and only when the forking *thread* dies; grandchildren in the
//! process group would survive a SIGKILL of tpr. So tpr re-executes its own
//! binary in this hidden mode (`tpr __tpr-supervise-shim ...`). The shim
//!
//! - runs in its own process group (so the terminal's Ctrl-C reaches only
//!   tpr, which then stops processes gracefully) and starts the command in a
//!   new process group of its own;
//! - sends the stop signal to the command's group and to every descendant
//!   that left it (`setsid`, detached workers: found through /proc), then
//!   SIGKILL to all of them after the timeout;
//! - is a child subreaper, so a descendant whose parent dies is re-parented
//!   to the shim rather than to init and cannot slip away;
//! - reads commands from its stdin, a pipe whose write end only tpr holds:
//!   EOF means tpr is gone, however it ended (exit, panic, SIGKILL), and the
//!   shim kills everything at once. No signal races, no thread caveats;
//! - exits only when no descendant is left, with the leader's status (or
//!   dying by the same signal), so tpr sees exactly what the command did.
//!
//! Protocol on stdin, one line each: `go` (first, for a gated shim),
//! `stop <signal number> <timeout ms>` (graceful: the signal to the group,
//! SIGKILL after the timeout) and `kill`.

use std::ffi::{OsStr, OsString};
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal, kill, killpg};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

/// The hidden first argument that selects shim mode.
pub const SHIM_ARG: &str = "__tpr-supervise-shim";

/// How often the shim re-checks while stopping; while killing, the tick
/// grows to `MAX_TICK` so that an unkillable process (uninterruptible
/// sleep) does not make the shim spin.
const TICK: Duration = Duration::from_millis(5);
const MAX_TICK: Duration = Duration::from_millis(200);

/// Runs the shim and exits if this process was started as one; returns
/// otherwise. `main` must call this first, before any other work.
pub fn shim_main_if_requested() {
    let mut args = std::env::args_os();
    args.next();
    if args.next().as_deref() != Some(OsStr::new(SHIM_ARG)) {
        return;
    }
    let rest: Vec<OsString> = args.collect();
    let code = match ShimArgs::parse(&rest) {
        Some(parsed) => run(parsed),
        None => {
            eprintln!(
                "tpr: {SHIM_ARG} is internal to tpr and takes: SIGNAL TIMEOUT_MS PROGRAM [ARGS...]"
            );
            64
        }
    };
    std::process::exit(code);
}

/// The argv tpr uses to start a shim for `command`. A `gated` shim waits
/// for a `go` line before starting the command: tpr starts it while the old
/// process is still stopping, which takes the shim's own start out of the
/// restart's critical path.
pub(crate) fn shim_args(
    stop_signal: Signal,
    stop_timeout: Duration,
    gated: bool,
    command: &[String],
) -> Vec<OsString> {
    let mut args = vec![
        OsString::from(SHIM_ARG),
        OsString::from((stop_signal as i32).to_string()),
        OsString::from(stop_timeout.as_millis().to_string()),
        OsString::from(if gated { "gated" } else { "now" }),
    ];
    args.extend(command.iter().map(OsString::from));
    args
}

struct ShimArgs {
    stop_signal: Signal,
    stop_timeout: Duration,
    gated: bool,
    program: OsString,
    args: Vec<OsString>,
}

impl ShimArgs {
    fn parse(args: &[OsString]) -> Option<ShimArgs> {
        let number = |s: &OsString| s.to_str()?.parse::<u64>().ok();
        let stop_signal = Signal::try_from(i32::try_from(number(args.first()?)?).ok()?).ok()?;
        let stop_timeout = Duration::from_millis(number(args.get(1)?)?);
        let gated = match args.get(2)?.to_str()? {
            "gated" => true,
            "now" => false,
            _ => return None,
        };
        Some(ShimArgs {
            stop_signal,
            stop_timeout,
            gated,
            program: args.get(3)?.clone(),
            args: args[4..].to_vec(),
        })
    }
}

enum ShimEvent {
    /// Graceful stop with this signal and timeout.
    Stop(Signal, Duration),
    /// Kill now: a second Ctrl-C, or tpr is gone (stdin EOF).
    Kill,
    LeaderExited(WaitStatus),
    /// No child left at all.
    AllGone,
}

fn run(args: ShimArgs) -> i32 {
    if args.gated {
        let mut line = String::new();
        // Anything but `go` (EOF: tpr dropped the prepared start) ends here.
        if std::io::stdin().read_line(&mut line).is_err() || line.trim() != "go" {
            return 0;
        }
    }
    // Best effort: without it (very old kernels) only the group is killed.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    // The command starts with no signal blocked (std does not reset the
    // mask it inherits from us, nor ours from tpr's threads).
    let _ = SigSet::all().thread_unblock();
    let leader = match Command::new(&args.program)
        .args(&args.args)
        .process_group(0)
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(child) => Pid::from_raw(child.id() as i32),
        Err(err) => {
            eprintln!(
                "tpr: cannot start {}: {err}",
                args.program.to_string_lossy()
            );
            return 127;
        }
    };
    // Terminating signals sent to the shim itself (`kill <shim pid>`) become
    // a graceful stop: blocked here, before the helper threads start so they
    // inherit the mask, and taken by `sigwait` on one of them.
    let mut terminating = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        terminating.add(signal);
    }
    let _ = terminating.thread_block();

    let (tx, rx) = mpsc::channel();
    let control = tx.clone();
    std::thread::spawn(move || read_control(control));
    let signals = tx.clone();
    let (stop_signal, stop_timeout) = (args.stop_signal, args.stop_timeout);
    std::thread::spawn(move || {
        while terminating.wait().is_ok() {
            if signals
                .send(ShimEvent::Stop(stop_signal, stop_timeout))
                .is_err()
            {
                break;
            }
        }
    });
    std::thread::spawn(move || reap(leader, tx));

    let mut leader_status = None;
    let mut deadline: Option<Instant> = None;
    let mut killing = false;
    let mut tick = TICK;
    loop {
        let event = if killing || deadline.is_some() {
            match rx.recv_timeout(tick) {
                Ok(event) => Some(event),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(event) => Some(event),
                Err(_) => break,
            }
        };
        match event {
            Some(ShimEvent::Stop(signal, timeout)) if deadline.is_none() && !killing => {
                signal_tree(leader, signal);
                deadline = Some(Instant::now() + timeout);
            }
            // Already stopping: the first request's deadline stands.
            Some(ShimEvent::Stop(..)) => {}
            Some(ShimEvent::Kill) => killing = true,
            Some(ShimEvent::LeaderExited(status)) => {
                leader_status = Some(status);
                // Exited by itself: whatever it left behind in the group
                // gets the same graceful stop.
                if deadline.is_none() && !killing {
                    signal_tree(leader, args.stop_signal);
                    deadline = Some(Instant::now() + args.stop_timeout);
                }
            }
            Some(ShimEvent::AllGone) => break,
            None => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            killing = true;
        }
        // The leader and its group are gone but descendants that left the
        // group remain: they got the stop signal with the group; wait out
        // the grace period for them, then SIGKILL.
        if killing {
            kill_all(leader);
            tick = (tick * 2).min(MAX_TICK);
        }
    }
    exit_like(leader_status)
}

/// Reads the control pipe; EOF or an error means tpr is gone.
fn read_control(tx: mpsc::Sender<ShimEvent>) {
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        let event = match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => ShimEvent::Kill,
            Ok(_) => match parse_control(&line) {
                Some(event) => event,
                None => continue,
            },
        };
        let eof = matches!(event, ShimEvent::Kill);
        if tx.send(event).is_err() || eof {
            return;
        }
    }
}

fn parse_control(line: &str) -> Option<ShimEvent> {
    let mut words = line.split_whitespace();
    match words.next()? {
        "kill" => Some(ShimEvent::Kill),
        "stop" => {
            let signal = Signal::try_from(words.next()?.parse::<i32>().ok()?).ok()?;
            let timeout = Duration::from_millis(words.next()?.parse().ok()?);
            Some(ShimEvent::Stop(signal, timeout))
        }
        _ => None,
    }
}

/// Reaps every child (the leader and re-parented orphans).
fn reap(leader: Pid, tx: mpsc::Sender<ShimEvent>) {
    loop {
        match waitpid(None, None) {
            Ok(status) if status.pid() == Some(leader) => {
                if tx.send(ShimEvent::LeaderExited(status)).is_err() {
                    return;
                }
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => {
                let _ = tx.send(ShimEvent::AllGone);
                return;
            }
        }
    }
}

/// The stop signal to the group and to every descendant that left it
/// (`setsid`, detached workers), so that they too get their grace period.
fn signal_tree(leader: Pid, signal: Signal) {
    let _ = killpg(leader, signal);
    for pid in descendants_outside(leader) {
        let _ = kill(pid, signal);
    }
}

/// SIGKILL to the group and to every descendant of the shim, wherever it
/// is; any that forks meanwhile is re-parented here and caught next tick.
fn kill_all(leader: Pid) {
    signal_tree(leader, Signal::SIGKILL);
}

/// Descendants of the shim that are not in the command's process group.
fn descendants_outside(group: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let table: Vec<(i32, i32, i32)> = entries
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (ppid, pgrp) = parent_and_group(&stat)?;
            Some((pid, ppid, pgrp))
        })
        .collect();
    let mut tree = vec![nix::unistd::getpid().as_raw()];
    let mut next = 0;
    while next < tree.len() {
        let parent = tree[next];
        tree.extend(
            table
                .iter()
                .filter(|(_, ppid, _)| *ppid == parent)
                .map(|(pid, _, _)| *pid),
        );
        next += 1;
    }
    table
        .iter()
        .filter(|(pid, _, pgrp)| tree[1..].contains(pid) && *pgrp != group.as_raw())
        .map(|(pid, _, _)| Pid::from_raw(*pid))
        .collect()
}

/// The ppid and pgrp fields of /proc/PID/stat; the command name may hold
/// spaces and parentheses, so fields are counted from the last `)`.
pub(crate) fn parent_and_group(stat: &str) -> Option<(i32, i32)> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace().skip(1);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// Ends the shim the way the leader ended.
fn exit_like(status: Option<WaitStatus>) -> i32 {
    match status {
        Some(WaitStatus::Exited(_, code)) => code,
        Some(WaitStatus::Signaled(_, signal, _)) => {
            // Die by the same signal so tpr reports it as such; no core file
            // of the shim, and SIGPIPE (ignored by Rust programs) falls back
            // to the shell's 128+N.
            let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
            let _ = nix::sys::signal::raise(signal);
            128 + signal as i32
        }
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_is_read_after_the_command_name() {
        assert_eq!(parent_and_group("42 (a) b) c) S 7 40 42 0"), Some((7, 40)));
        assert_eq!(parent_and_group("1 (init) S 0 1 1"), Some((0, 1)));
    }

    #[test]
    fn control_lines_parse() {
        assert!(matches!(
            parse_control("stop 15 2500\n"),
            Some(ShimEvent::Stop(Signal::SIGTERM, t)) if t == Duration::from_millis(2500)
        ));
        assert!(matches!(parse_control("kill\n"), Some(ShimEvent::Kill)));
        assert!(parse_control("stop x\n").is_none());
    }

    #[test]
    fn shim_args_round_trip() {
        let args = shim_args(
            Signal::SIGINT,
            Duration::from_millis(300),
            true,
            &["a".into(), "b".into()],
        );
        let parsed = ShimArgs::parse(&args[1..]).unwrap();
        assert_eq!(parsed.stop_signal, Signal::SIGINT);
        assert_eq!(parsed.stop_timeout, Duration::from_millis(300));
        assert!(parsed.gated);
        assert_eq!(parsed.program, "a");
        assert_eq!(parsed.args, vec![OsString::from("b")]);
    }
}
