//! What to run: plain structs the caller builds from the project file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

/// One local process. `env` is the complete environment (see
/// [`super::env_merge`]); nothing else from tpr's own environment leaks in.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    pub name: String,
    /// Program and arguments; with `shell`, `command[0]` is a script for
    /// `sh -c` and the rest become its positional parameters `$1`, `$2`...
    pub command: Vec<String>,
    pub shell: bool,
    pub workdir: PathBuf,
    pub env: BTreeMap<String, String>,
    /// Files and directories to watch; relative ones are taken from
    /// `workdir`. Empty: no watching.
    pub watch: Vec<PathBuf>,
    /// Gitignore-style patterns, rooted at `workdir`.
    pub ignore: Vec<String>,
    pub debounce: Duration,
    pub max_wait: Duration,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    /// Restart by itself after an exit; `None`: wait for the next change.
    pub restart_on_exit: Option<Backoff>,
    /// Run inside this outbound namespace (`crate::outbound`); `None`: the
    /// host's network.
    pub namespace: Option<crate::outbound::NsPaths>,
    /// When a run counts as ready (`process_ready`); `None`: not checked.
    pub ready: Option<crate::session_loop::Readiness>,
}

impl ProcessSpec {
    /// A spec with the documented defaults: 50 ms debounce, 1 s max wait,
    /// SIGTERM with 5 s grace, no restart on exit, nothing watched.
    pub fn new(name: impl Into<String>, command: Vec<String>, workdir: impl Into<PathBuf>) -> Self {
        ProcessSpec {
            name: name.into(),
            command,
            shell: false,
            workdir: workdir.into(),
            env: BTreeMap::new(),
            watch: Vec::new(),
            ignore: Vec::new(),
            debounce: Duration::from_millis(50),
            max_wait: Duration::from_secs(1),
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(5),
            restart_on_exit: None,
            namespace: None,
            ready: None,
        }
    }

    /// The argv actually executed.
    pub fn argv(&self) -> Vec<String> {
        if self.shell {
            let mut argv = vec!["sh".to_string(), "-c".to_string()];
            argv.push(self.command.first().cloned().unwrap_or_default());
            argv.push("sh".to_string());
            argv.extend(self.command.iter().skip(1).cloned());
            argv
        } else {
            self.command.clone()
        }
    }

    /// Whether a change from `self` to `new` needs a restart: command,
    /// environment or watch set. Stop settings and backoff apply in place.
    pub fn needs_restart(&self, new: &ProcessSpec) -> bool {
        self.command != new.command
            || self.shell != new.shell
            || self.workdir != new.workdir
            || self.env != new.env
            || self.namespace != new.namespace
            || self.watch_changed(new)
    }

    /// Whether the watcher must be rebuilt.
    pub fn watch_changed(&self, new: &ProcessSpec) -> bool {
        self.watch != new.watch
            || self.ignore != new.ignore
            || self.debounce != new.debounce
            || self.max_wait != new.max_wait
    }
}

/// Exponential backoff for restarts after the process exits by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay before restart number `attempt` (0-based) of a run of quick
    /// exits. A process that ran longer than `max` starts the run again.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Parses `SIGTERM`, `TERM`, `sigterm` or a number.
pub fn parse_signal(text: &str) -> Option<Signal> {
    let trimmed = text.trim();
    if let Ok(number) = trimmed.parse::<i32>() {
        return Signal::try_from(number).ok();
    }
    let upper = trimmed.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_or_number() {
        assert_eq!(parse_signal("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("int"), Some(Signal::SIGINT));
        assert_eq!(parse_signal("15"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGNOPE"), None);
    }

    #[test]
    fn backoff_doubles_up_to_max() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(3), Duration::from_millis(800));
        assert_eq!(b.delay(4), Duration::from_secs(1));
        assert_eq!(b.delay(100), Duration::from_secs(1));
    }

    #[test]
    fn shell_argv_passes_extra_words_as_positional_parameters() {
        let mut spec = ProcessSpec::new("a", vec!["echo $1".into(), "hi".into()], "/");
        spec.shell = true;
        assert_eq!(spec.argv(), ["sh", "-c", "echo $1", "sh", "hi"]);
    }

    #[test]
    fn only_command_env_and_watch_changes_restart() {
        let old = ProcessSpec::new("a", vec!["x".into()], "/");
        let mut new = old.clone();
        new.stop_timeout = Duration::from_secs(1);
        assert!(!old.needs_restart(&new));
        new.env.insert("A".into(), "1".into());
        assert!(old.needs_restart(&new));
        let mut new = old.clone();
        new.ignore.push("*.log".into());
        assert!(old.needs_restart(&new));
    }
}
