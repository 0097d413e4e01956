//! File watching for restarts: inotify (through notify) on every directory
//! of the watch set that .gitignore/.ignore and the file's patterns do not
//! exclude, a filter for irrelevant paths (see [`IgnoreRules`]) and a
//! debouncer with a quiet period and a maximum wait.
//!
//! Directories are walked and watched one by one (non-recursively) rather
//! than with notify's recursive mode, so ignored trees such as `target/` or
//! `node_modules/` cost no inotify watch at all; directories created later
//! are added as they appear.

mod debounce;
mod ignore_rules;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, Instant};

use ignore::gitignore::Gitignore;
use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};

pub use debounce::Debounce;
pub use ignore_rules::{IgnoreRules, is_editor_temp, normalize};

/// What to watch and how to debounce.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchSpec {
    /// Files and directories (trees) to watch.
    pub paths: Vec<PathBuf>,
    /// Where the patterns in `patterns` are rooted.
    pub patterns_root: PathBuf,
    /// Gitignore-style patterns to ignore.
    pub patterns: Vec<String>,
    /// Exact files never to react to: tpr's env file, the project file.
    pub ignored_files: Vec<PathBuf>,
    pub debounce: Duration,
    pub max_wait: Duration,
    /// Accept files in `paths` that do not exist yet (their directory must):
    /// for the project files, of which the local one is optional.
    pub allow_missing_files: bool,
}

/// What can go wrong watching files.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// A watch path does not exist.
    #[error("watch path {} does not exist; create it or remove it from `watch`", .0.display())]
    Missing(PathBuf),
    /// An ignore pattern is not valid gitignore syntax.
    #[error("invalid ignore pattern `{pattern}`: {source}")]
    Pattern {
        pattern: String,
        #[source]
        source: ignore::Error,
    },
    /// The per-user inotify watch limit is reached (ENOSPC).
    #[error(
        "the inotify watch limit is reached while watching {}; raise it with \
         `sudo sysctl fs.inotify.max_user_watches=524288` (to keep it, add \
         `fs.inotify.max_user_watches=524288` to /etc/sysctl.d/90-inotify.conf), \
         or ignore large directories in .gitignore or `ignore`", .0.display()
    )]
    WatchLimit(PathBuf),
    /// The per-user inotify instance limit is reached (EMFILE).
    #[error(
        "the inotify instance limit is reached (too many programs are watching files); \
         raise it with `sudo sysctl fs.inotify.max_user_instances=1024` (to keep it, add \
         `fs.inotify.max_user_instances=1024` to /etc/sysctl.d/90-inotify.conf)"
    )]
    InstanceLimit,
    /// Any other error from the watcher.
    #[error("cannot watch {}: {source}", path.display())]
    Notify {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

impl WatchError {
    /// Classifies a notify error; inotify limits get their own variants.
    pub fn from_notify(path: &Path, source: notify::Error) -> WatchError {
        const ENOSPC: i32 = 28;
        const EMFILE: i32 = 24;
        let os_error = match &source.kind {
            notify::ErrorKind::Io(io) => io.raw_os_error(),
            _ => None,
        };
        match (&source.kind, os_error) {
            (notify::ErrorKind::MaxFilesWatch, _) | (_, Some(ENOSPC)) => {
                WatchError::WatchLimit(path.to_path_buf())
            }
            (_, Some(EMFILE)) => WatchError::InstanceLimit,
            (notify::ErrorKind::PathNotFound, _) => WatchError::Missing(path.to_path_buf()),
            _ => WatchError::Notify {
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

/// A running watcher; dropping it stops watching.
pub struct Watcher {
    _inner: Arc<Mutex<RecommendedWatcher>>,
}

impl Watcher {
    /// Watches `spec` and calls `on_change` (on the watcher's own thread)
    /// with each debounced burst of relevant paths, or with an error that
    /// arose later (e.g. the watch limit hit while adding a new directory).
    pub fn start<F>(spec: &WatchSpec, on_change: F) -> Result<Watcher, WatchError>
    where
        F: FnMut(Result<Vec<PathBuf>, WatchError>) + Send + 'static,
    {
        let mut rules = IgnoreRules::new(
            &normalize(&spec.patterns_root),
            &spec.patterns,
            &spec.ignored_files,
        )?;
        let (raw_tx, raw_rx) = mpsc::channel();
        let watcher = RecommendedWatcher::new(
            move |event| {
                let _ = raw_tx.send(event);
            },
            notify::Config::default(),
        )
        .map_err(|e| WatchError::from_notify(Path::new("."), e))?;
        let inner = Arc::new(Mutex::new(watcher));

        let mut dirs = Vec::new();
        for path in &spec.paths {
            let path = match path.canonicalize() {
                Ok(path) => path,
                Err(_) if spec.allow_missing_files && path.parent().is_some_and(Path::is_dir) => {
                    normalize(path)
                }
                Err(_) => return Err(WatchError::Missing(path.clone())),
            };
            if path.is_dir() {
                for ancestor in path.ancestors() {
                    rules.add_ignore_files_of(ancestor);
                    if ancestor.join(".git").exists() {
                        break;
                    }
                }
                rules.add_dir_root(path.clone());
                dirs.push(path);
            } else {
                let parent = path.parent().unwrap_or(Path::new("/")).to_path_buf();
                rules.add_file_root(path);
                watch_dir(&inner, &parent)?;
            }
        }
        for dir in &dirs {
            add_tree(&inner, &mut rules, dir)?;
        }

        let weak = Arc::downgrade(&inner);
        let debounce = Debounce::new(spec.debounce, spec.max_wait);
        std::thread::Builder::new()
            .name("tpr-watch".into())
            .spawn(move || debounce_loop(raw_rx, rules, debounce, weak, on_change))
            .map_err(|e| WatchError::from_notify(Path::new("."), notify::Error::io(e)))?;
        Ok(Watcher { _inner: inner })
    }
}

fn watch_dir(watcher: &Mutex<RecommendedWatcher>, dir: &Path) -> Result<(), WatchError> {
    let mut watcher = watcher.lock().unwrap_or_else(|e| e.into_inner());
    match watcher.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => Ok(()),
        Err(e) => match WatchError::from_notify(dir, e) {
            // Gone between the walk and the watch: nothing to watch there.
            WatchError::Missing(_) => Ok(()),
            other => Err(other),
        },
    }
}

/// Watches `root` and every directory below it that is not ignored.
fn add_tree(
    watcher: &Mutex<RecommendedWatcher>,
    rules: &mut IgnoreRules,
    root: &Path,
) -> Result<(), WatchError> {
    let patterns: Option<(PathBuf, Gitignore)> = rules.patterns().cloned();
    let walk = ignore::WalkBuilder::new(root)
        .hidden(false)
        .git_ignore(true)
        .git_exclude(true)
        .ignore(true)
        .require_git(false)
        .parents(true)
        .filter_entry(move |entry| {
            let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
            let path = entry.path();
            is_dir
                && entry.file_name() != ".git"
                && !patterns.as_ref().is_some_and(|(base, m)| {
                    path.starts_with(base) && m.matched_path_or_any_parents(path, true).is_ignore()
                })
        })
        .build();
    for entry in walk.flatten() {
        let dir = entry.path();
        rules.add_ignore_files_of(dir);
        watch_dir(watcher, dir)?;
    }
    Ok(())
}

fn debounce_loop<F>(
    raw: mpsc::Receiver<notify::Result<notify::Event>>,
    mut rules: IgnoreRules,
    mut debounce: Debounce,
    watcher: Weak<Mutex<RecommendedWatcher>>,
    mut on_change: F,
) where
    F: FnMut(Result<Vec<PathBuf>, WatchError>),
{
    loop {
        let received = match debounce.deadline() {
            None => raw.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(deadline) => raw.recv_timeout(deadline.saturating_duration_since(Instant::now())),
        };
        match received {
            Ok(Ok(event)) => {
                let Some(watcher) = watcher.upgrade() else {
                    return;
                };
                if let Err(err) = handle_event(&event, &mut rules, &watcher, &mut debounce) {
                    on_change(Err(err));
                }
            }
            Ok(Err(err)) => {
                let path = err
                    .paths
                    .first()
                    .cloned()
                    .unwrap_or_else(|| PathBuf::from("."));
                on_change(Err(WatchError::from_notify(&path, err)));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if let Some(paths) = debounce.take_due(Instant::now()) {
            on_change(Ok(paths));
        }
    }
}

fn handle_event(
    event: &notify::Event,
    rules: &mut IgnoreRules,
    watcher: &Mutex<RecommendedWatcher>,
    debounce: &mut Debounce,
) -> Result<(), WatchError> {
    // Opening and reading files (the process itself does a lot of it) is
    // not a change.
    if matches!(event.kind, EventKind::Access(_)) {
        return Ok(());
    }
    let now = Instant::now();
    for path in &event.paths {
        if let Some(name) = path.file_name()
            && (name == ".gitignore" || name == ".ignore")
            && let Some(dir) = path.parent()
        {
            rules.reload_ignore_files_of(dir);
        }
        if rules.is_ignored(path) {
            continue;
        }
        let appeared = matches!(
            event.kind,
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_))
        );
        if appeared && path.is_dir() {
            add_tree(watcher, rules, path)?;
        }
        debounce.push(now, path.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inotify_limits_name_the_sysctl_to_raise() {
        let watches = WatchError::from_notify(
            Path::new("/p"),
            notify::Error::new(notify::ErrorKind::MaxFilesWatch),
        );
        assert!(
            watches
                .to_string()
                .contains("sysctl fs.inotify.max_user_watches="),
            "{watches}"
        );
        let nospace = WatchError::from_notify(
            Path::new("/p"),
            notify::Error::io(std::io::Error::from_raw_os_error(28)),
        );
        assert!(matches!(nospace, WatchError::WatchLimit(_)));
        let instances = WatchError::from_notify(
            Path::new("/p"),
            notify::Error::io(std::io::Error::from_raw_os_error(24)),
        );
        assert!(
            instances
                .to_string()
                .contains("sysctl fs.inotify.max_user_instances="),
            "{instances}"
        );
    }

    #[test]
    fn a_missing_watch_path_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let spec = WatchSpec {
            paths: vec![dir.path().join("nope")],
            patterns_root: dir.path().to_path_buf(),
            patterns: Vec::new(),
            ignored_files: Vec::new(),
            debounce: Duration::from_millis(50),
            max_wait: Duration::from_secs(1),
            allow_missing_files: false,
        };
        let err = Watcher::start(&spec, |_| {}).err().expect("an error");
        assert!(
            err.to_string().contains("nope") && err.to_string().contains("does not exist"),
            "{err}"
        );
    }
}
