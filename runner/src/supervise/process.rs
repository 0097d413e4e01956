//! One running local process, seen from tpr: the shim child, its control
//! pipe and its output pumps.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::process::{Child, Command};

use super::shim::shim_args;
use super::{Error, ProcessSpec};

/// Where a process's output goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Output {
    /// `false`: straight to tpr's stdout/stderr (one process: the child may
    /// see the terminal, so colours and progress bars keep working).
    /// `true`: line by line, each line prefixed `[name] `.
    pub prefixed: bool,
    /// The process's stdout goes to tpr's stderr (tpr's stdout carries
    /// JSON events).
    pub stdout_to_stderr: bool,
}

/// A started process (or, gated, one ready to start). Dropping it closes
/// the control pipe, and the shim then kills the whole process tree (or, if
/// gated, exits): no path out of tpr leaves one running.
pub struct Running {
    /// The shim's pid.
    pub pid: u32,
    pub started: Instant,
    /// A blocking pipe: every message is a few bytes, far below the pipe's
    /// capacity, so writes never wait, and can be made from sync code.
    control: std::fs::File,
    child: Option<Child>,
}

impl Running {
    /// Starts `spec` under a shim (`shim_exe` must call
    /// [`super::shim_main_if_requested`] first thing in `main`). `gated`:
    /// the shim starts but waits for [`Running::go`] to start the command.
    pub fn spawn(
        spec: &ProcessSpec,
        shim_exe: &Path,
        output: Output,
        gated: bool,
    ) -> Result<Running, Error> {
        check_startable(spec)?;
        // In an outbound namespace, the shim starts `tpr __tpr-netns-exec`,
        // which joins it and executes the command.
        let mut argv = spec.argv();
        if let Some(ns) = &spec.namespace {
            let mut wrapped = vec![shim_exe.to_string_lossy().into_owned()];
            wrapped.extend(crate::outbound::netns_exec_args(ns));
            wrapped.append(&mut argv);
            argv = wrapped;
        }
        let mut command = Command::new(shim_exe);
        command
            // Shows as `tpr __tpr-supervise-shim ...` in ps, whatever path
            // the binary was started through.
            .arg0("tpr")
            .args(shim_args(spec.stop_signal, spec.stop_timeout, gated, &argv))
            .env_clear()
            .envs(&spec.env)
            .current_dir(&spec.workdir)
            .process_group(0)
            .stdin(Stdio::piped());
        if output.prefixed {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        } else if output.stdout_to_stderr {
            let stderr = std::io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| Error::Spawn {
                    name: spec.name.clone(),
                    source,
                })?;
            command.stdout(Stdio::from(stderr));
        }
        let mut child = command.spawn().map_err(|source| Error::Spawn {
            name: spec.name.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        let control = child
            .stdin
            .take()
            .and_then(|stdin| stdin.into_owned_fd().ok())
            .map(std::fs::File::from)
            .ok_or_else(|| Error::Spawn {
                name: spec.name.clone(),
                source: std::io::Error::other("no control pipe to the shim"),
            })?;
        if output.prefixed {
            let prefix = format!("[{}] ", spec.name);
            if let Some(out) = child.stdout.take().and_then(|s| s.into_owned_fd().ok()) {
                let file = std::fs::File::from(out);
                if output.stdout_to_stderr {
                    pump(prefix.clone(), file, std::io::stderr);
                } else {
                    pump(prefix.clone(), file, std::io::stdout);
                }
            }
            if let Some(err) = child.stderr.take().and_then(|s| s.into_owned_fd().ok()) {
                pump(prefix, std::fs::File::from(err), std::io::stderr);
            }
        }
        Ok(Running {
            pid,
            started: Instant::now(),
            control,
            child: Some(child),
        })
    }

    /// Starts the command of a gated shim.
    pub fn go(&mut self) {
        self.started = Instant::now();
        self.send("go\n");
    }

    /// Asks for a graceful stop: `signal` to the group, SIGKILL after
    /// `timeout`. Returns at once; the child's exit says when it is over.
    pub fn stop(&mut self, signal: Signal, timeout: Duration) {
        self.send(&format!("stop {} {}\n", signal as i32, timeout.as_millis()));
    }

    /// Kills the whole tree now (second Ctrl-C).
    pub fn kill(&mut self) {
        self.send("kill\n");
    }

    fn send(&mut self, line: &str) {
        // A write error means the shim is already gone: nothing to do.
        let _ = self.control.write_all(line.as_bytes());
    }

    /// Takes the child so that a task can wait for it while this handle keeps
    /// the control pipe (and so the tree's life) in the caller's hands.
    pub fn take_child(&mut self) -> Option<Child> {
        self.child.take()
    }
}

/// Waits for a taken child; an error waiting is reported as a failure.
pub async fn wait_child(mut child: Child) -> ExitStatus {
    child
        .wait()
        .await
        .unwrap_or_else(|_| ExitStatus::from_raw(1 << 8))
}

/// "status 3" or "signal SIGSEGV".
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("signal {signal}"),
            Err(_) => format!("signal {signal}"),
        },
        (None, None) => "unknown status".to_string(),
    }
}

/// Copies `from` to `to` line by line with `prefix`; each line goes out in
/// one write so lines of different processes never interleave.
fn pump<W: Write + 'static>(prefix: String, from: std::fs::File, to: fn() -> W) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::with_capacity(256);
        let mut out = Vec::with_capacity(256);
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    out.clear();
                    out.extend_from_slice(prefix.as_bytes());
                    out.extend_from_slice(&line);
                    if !line.ends_with(b"\n") {
                        out.push(b'\n');
                    }
                    let mut sink = to();
                    let _ = sink.write_all(&out);
                    let _ = sink.flush();
                }
            }
        }
    });
}

/// Catches the usual start failures before forking, with a message that
/// names the fix.
fn check_startable(spec: &ProcessSpec) -> Result<(), Error> {
    if !spec.workdir.is_dir() {
        return Err(Error::Workdir {
            name: spec.name.clone(),
            path: spec.workdir.clone(),
        });
    }
    let argv = spec.argv();
    let Some(program) = argv.first().filter(|p| !p.is_empty()) else {
        return Err(Error::EmptyCommand {
            name: spec.name.clone(),
        });
    };
    if find_program(
        program,
        &spec.workdir,
        spec.env.get("PATH").map(String::as_str),
    )
    .is_none()
    {
        return Err(Error::ProgramNotFound {
            name: spec.name.clone(),
            program: program.clone(),
        });
    }
    Ok(())
}

/// Resolves a program the way `execvp` will: with a slash, relative to the
/// working directory; without, along `PATH` (the child's, not tpr's).
pub(crate) fn find_program(program: &str, workdir: &Path, path: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let candidate = workdir.join(program);
        return executable(&candidate).then_some(candidate);
    }
    let path = path.unwrap_or("/usr/local/bin:/usr/bin:/bin");
    path.split(':')
        .map(|dir| {
            if dir.is_empty() {
                workdir.to_path_buf()
            } else {
                workdir.join(dir)
            }
        })
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_along_the_given_path() {
        assert_eq!(
            find_program("sh", Path::new("/"), Some("/nonexistent:/bin")),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            find_program("sh", Path::new("/"), Some("/nonexistent")),
            None
        );
        assert_eq!(
            find_program("/bin/sh", Path::new("/tmp"), Some("")),
            Some(PathBuf::from("/bin/sh"))
        );
    }

    #[test]
    fn statuses_read_like_a_shell() {
        assert_eq!(describe_status(ExitStatus::from_raw(3 << 8)), "status 3");
        assert_eq!(describe_status(ExitStatus::from_raw(9)), "signal SIGKILL");
    }
}
