//! Which changed paths matter: not the ones .gitignore/.ignore or the
//! file's patterns exclude, not editor temporary files, not `.git`, not the
//! files tpr writes itself (the env file, the session state, its own
//! stdout and stderr when redirected into the project) or routes elsewhere
//! (the project file), and only paths inside the watch set.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::WatchError;

#[derive(Debug, Default)]
pub struct IgnoreRules {
    /// Directory trees in the watch set.
    dirs: Vec<PathBuf>,
    /// Single files in the watch set.
    files: HashSet<PathBuf>,
    /// One matcher per directory holding a .gitignore or .ignore, deepest
    /// first so that a nested file's rules (and its `!` re-includes) win.
    gitignores: Vec<(PathBuf, Gitignore)>,
    /// The file's own patterns, rooted at `patterns_root`.
    patterns: Option<(PathBuf, Gitignore)>,
    /// Files never to react to, nor to siblings whose name starts with
    /// theirs (`.env.tpr.tmp`, `.env.tpr~`: the writer's temp files).
    ignored_files: HashSet<PathBuf>,
}

impl IgnoreRules {
    pub fn new(
        patterns_root: &Path,
        patterns: &[String],
        ignored_files: &[PathBuf],
    ) -> Result<Self, WatchError> {
        let mut builder = GitignoreBuilder::new(patterns_root);
        for pattern in patterns {
            builder
                .add_line(None, pattern)
                .map_err(|source| WatchError::Pattern {
                    pattern: pattern.clone(),
                    source,
                })?;
        }
        let matcher = builder.build().map_err(|source| WatchError::Pattern {
            pattern: patterns.join(", "),
            source,
        })?;
        Ok(IgnoreRules {
            patterns: Some((patterns_root.to_path_buf(), matcher)),
            ignored_files: ignored_files
                .iter()
                .map(|p| normalize(p))
                .chain(own_output_files())
                .collect(),
            ..IgnoreRules::default()
        })
    }

    pub fn add_dir_root(&mut self, dir: PathBuf) {
        self.dirs.push(dir);
    }

    pub fn add_file_root(&mut self, file: PathBuf) {
        self.files.insert(file);
    }

    /// Reads `dir`'s .gitignore and .ignore, if any (.ignore wins).
    pub fn add_ignore_files_of(&mut self, dir: &Path) {
        if self.gitignores.iter().any(|(d, _)| d == dir) {
            return;
        }
        let files: Vec<PathBuf> = [".gitignore", ".ignore"]
            .iter()
            .map(|name| dir.join(name))
            .filter(|path| path.is_file())
            .collect();
        if files.is_empty() {
            return;
        }
        let mut builder = GitignoreBuilder::new(dir);
        for file in &files {
            // A malformed line is skipped by the matcher, as git does.
            let _ = builder.add(file);
        }
        if let Ok(matcher) = builder.build() {
            self.gitignores.push((dir.to_path_buf(), matcher));
            self.gitignores
                .sort_by_key(|(d, _)| std::cmp::Reverse(d.components().count()));
        }
    }

    /// Re-reads `dir`'s ignore files after one of them changed.
    pub fn reload_ignore_files_of(&mut self, dir: &Path) {
        self.gitignores.retain(|(d, _)| d != dir);
        self.add_ignore_files_of(dir);
    }

    /// The file's patterns and their root.
    pub fn patterns(&self) -> Option<&(PathBuf, Gitignore)> {
        self.patterns.as_ref()
    }

    fn is_ignored_file(&self, path: &Path) -> bool {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(OsStr::to_str))
        else {
            return false;
        };
        self.ignored_files.iter().any(|file| {
            file.parent() == Some(dir)
                && file
                    .file_name()
                    .and_then(OsStr::to_str)
                    .is_some_and(|ignored| name.starts_with(ignored))
        })
    }

    /// Whether a change at `path` should be ignored.
    pub fn is_ignored(&self, path: &Path) -> bool {
        let in_scope = self.files.contains(path) || self.dirs.iter().any(|d| path.starts_with(d));
        if !in_scope || self.is_ignored_file(path) {
            return true;
        }
        if path.components().any(|c| c.as_os_str() == ".git") {
            return true;
        }
        if path.file_name().is_some_and(is_editor_temp) {
            return true;
        }
        let is_dir = path.is_dir();
        if let Some((root, matcher)) = &self.patterns
            && path.starts_with(root)
            && matcher
                .matched_path_or_any_parents(path, is_dir)
                .is_ignore()
        {
            return true;
        }
        for (dir, matcher) in &self.gitignores {
            if !path.starts_with(dir) {
                continue;
            }
            match matcher.matched_path_or_any_parents(path, is_dir) {
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
                Match::None => {}
            }
        }
        false
    }
}

/// The files tpr's own stdout and stderr are redirected to (`tpr up >
/// up.log`): tpr and its processes write them, so a change there must never
/// restart a process. Terminals, pipes and sockets are not files: left out.
fn own_output_files() -> Vec<PathBuf> {
    [1, 2]
        .iter()
        .filter_map(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok())
        .filter(|path| path.is_absolute() && path.is_file())
        .collect()
}

/// Temporary files of common editors: vim's write test file `4913` (and its
/// successors 5036, 5159... when taken) and swap files, backup files `*~`,
/// emacs lock and auto-save files, JetBrains' safe-write files.
pub fn is_editor_temp(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    let vim_probe = name
        .parse::<u64>()
        .is_ok_and(|n| n >= 4913 && (n - 4913) % 123 == 0);
    vim_probe
        || [".swp", ".swx", ".swo", "~", "___jb_tmp___", "___jb_old___"]
            .iter()
            .any(|suffix| name.ends_with(suffix))
        || name.starts_with(".#")
        || (name.len() > 1 && name.starts_with('#') && name.ends_with('#'))
}

/// Absolute, symlink-free form of a path that may not exist yet: the parent
/// is resolved, the name kept.
pub fn normalize(path: &Path) -> PathBuf {
    if let Ok(real) = path.canonicalize() {
        return real;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => parent
            .canonicalize()
            .map(|p| p.join(name))
            .unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn editor_temp_files_are_recognised() {
        for name in [
            "4913",
            "5036",
            ".main.rs.swp",
            "a.swx",
            "main.rs~",
            ".#main.rs",
            "#main.rs#",
            "main.rs___jb_tmp___",
            "main.rs___jb_old___",
        ] {
            assert!(is_editor_temp(OsStr::new(name)), "{name}");
        }
        for name in ["main.rs", "4914", "123", "#", "a#b", "swp"] {
            assert!(!is_editor_temp(OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn gitignore_patterns_and_scope_apply() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("src/gen")).unwrap();
        std::fs::write(root.join(".gitignore"), "target/\n*.log\n").unwrap();
        std::fs::write(root.join("src/.gitignore"), "!keep.log\ngen/\n").unwrap();
        let env_file = root.join(".env.tpr");
        let mut rules = IgnoreRules::new(
            &root,
            &["*.tmp".to_string(), "/docs".to_string()],
            std::slice::from_ref(&env_file),
        )
        .unwrap();
        rules.add_dir_root(root.clone());
        rules.add_ignore_files_of(&root);
        rules.add_ignore_files_of(&root.join("src"));

        assert!(!rules.is_ignored(&root.join("src/main.rs")));
        assert!(rules.is_ignored(&root.join("target/debug/x")));
        assert!(rules.is_ignored(&root.join("a.log")));
        assert!(!rules.is_ignored(&root.join("src/keep.log")));
        assert!(rules.is_ignored(&root.join("src/gen/out.rs")));
        assert!(rules.is_ignored(&root.join("x.tmp")));
        assert!(rules.is_ignored(&root.join("docs/index.md")));
        assert!(!rules.is_ignored(&root.join("src/docs/index.md")));
        assert!(rules.is_ignored(&env_file));
        assert!(rules.is_ignored(&root.join(".env.tpr.tmp")));
        assert!(!rules.is_ignored(&root.join("src/.env.tpr")));
        assert!(rules.is_ignored(&root.join(".git/index")));
        assert!(rules.is_ignored(&root.join("src/.main.rs.swp")));
        assert!(rules.is_ignored(Path::new("/elsewhere/file")));
    }
}
