//! A process joins an outbound namespace: `tpr __tpr-netns-exec` (how the
//! shim starts a process inside) and `tpr exec` join by the paths of
//! [`NsPaths`], then execute the command.
//!
//! In a namespace made without root the user namespace comes first: its
//! owner (this user) has every capability in it, which joining the network
//! and mount namespaces it owns needs. Joining a user or mount namespace
//! needs a single-threaded process, which both callers are.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use nix::sched::{CloneFlags, setns};
use tracing::debug;

use super::NsPaths;

/// The hidden first argument of `tpr` that joins namespaces and executes a
/// command (how the shim starts a process inside them).
pub const NETNS_EXEC_ARG: &str = "__tpr-netns-exec";

/// Marks the user namespace's path in the arguments (absent: made as root,
/// the form before user namespaces).
const USER_FLAG: &str = "--user";

/// The arguments after tpr's binary that start a command in `paths`:
/// `__tpr-netns-exec [--user USER] NET MNT`, the command to follow.
pub fn netns_exec_args(paths: &NsPaths) -> Vec<String> {
    let mut args = vec![NETNS_EXEC_ARG.to_owned()];
    if let Some(user) = &paths.user {
        args.push(USER_FLAG.to_owned());
        args.push(user.to_string_lossy().into_owned());
    }
    args.push(paths.net.to_string_lossy().into_owned());
    args.push(paths.mnt.to_string_lossy().into_owned());
    args
}

/// The namespaces and the command of `[--user USER] NET MNT PROGRAM
/// [ARGS...]`; `None` when it is not that.
fn parse(args: &[OsString]) -> Option<(NsPaths, &[OsString])> {
    let (user, rest) = match args {
        [flag, user, rest @ ..] if flag == OsStr::new(USER_FLAG) => {
            (Some(PathBuf::from(user)), rest)
        }
        rest => (None, rest),
    };
    match rest {
        [net, mnt, command @ ..] if !command.is_empty() => Some((
            NsPaths {
                user,
                net: PathBuf::from(net),
                mnt: PathBuf::from(mnt),
            },
            command,
        )),
        _ => None,
    }
}

/// `tpr __tpr-netns-exec [--user USER] NET MNT PROGRAM [ARGS...]`: joins
/// the namespaces and executes the program. Runs before anything else in
/// `main` (a single-threaded process); never returns when requested.
pub fn netns_exec_main_if_requested() {
    let mut args = std::env::args_os();
    args.next();
    if args.next().as_deref() != Some(OsStr::new(NETNS_EXEC_ARG)) {
        return;
    }
    let rest: Vec<OsString> = args.collect();
    let code = match parse(&rest) {
        Some((paths, command)) => {
            let e = join_and_exec(&paths, command);
            eprintln!("tpr: cannot start {}: {e}", command[0].to_string_lossy());
            127
        }
        None => {
            eprintln!(
                "tpr: {NETNS_EXEC_ARG} is internal to tpr and takes: [{USER_FLAG} USER] NET MNT PROGRAM [ARGS...]"
            );
            64
        }
    };
    std::process::exit(code);
}

/// Joins the namespaces of `paths` and executes `command`; returns only on
/// failure. The working directory is kept (joining a mount namespace moves
/// to its root).
pub fn join_and_exec(paths: &NsPaths, command: &[OsString]) -> io::Error {
    let cwd = std::env::current_dir().ok();
    let join = || -> io::Result<()> {
        // All opened first: the paths are tpr's files, seen from here.
        let user = paths.user.as_ref().map(File::open).transpose()?;
        let net = File::open(&paths.net)?;
        let mnt = File::open(&paths.mnt)?;
        if let Some(user) = &user {
            setns(user, CloneFlags::CLONE_NEWUSER).map_err(io::Error::from)?;
        }
        setns(&net, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        setns(&mnt, CloneFlags::CLONE_NEWNS).map_err(io::Error::from)?;
        if let Some(dir) = &cwd {
            std::env::set_current_dir(dir)?;
        }
        Ok(())
    };
    if let Err(e) = join() {
        return io::Error::new(e.kind(), format!("cannot join the outbound namespace: {e}"));
    }
    debug!("joined the outbound namespace");
    std::process::Command::new(&command[0])
        .args(&command[1..])
        .exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_arguments_read_back_with_and_without_a_user_namespace() {
        for user in [None, Some(PathBuf::from("/proc/1/fd/7"))] {
            let paths = NsPaths {
                user,
                net: "/proc/1/fd/5".into(),
                mnt: "/proc/1/fd/6".into(),
            };
            let mut args = os(&netns_exec_args(&paths)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>());
            assert_eq!(args.remove(0), NETNS_EXEC_ARG);
            args.extend(os(&["env", "A=1"]));
            let (parsed, command) = parse(&args).expect("parses");
            assert_eq!(parsed, paths);
            assert_eq!(command, os(&["env", "A=1"]).as_slice());
        }
        // The form before user namespaces still reads; no command: no.
        let (old, _) = parse(&os(&["/n", "/m", "true"])).expect("old form");
        assert_eq!(old.user, None);
        assert!(parse(&os(&["/n", "/m"])).is_none());
        assert!(parse(&os(&["--user", "/u", "/n", "/m"])).is_none());
    }
}
