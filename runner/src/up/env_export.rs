//! The env file of an intercept: the pod's environment, include/exclude
//! applied, in the file's format, written only when it changed, mode 0600
//! (values are secrets: only names are ever printed).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use tpr_schema::Intercept;

use super::UpError;
use super::event::{Events, UpEvent};
use crate::envfile;

/// Writes `intercept`'s env file from the pod's `env`, if it has one, and
/// says so to `events`. Returns whether the file was (re)written.
pub fn export(
    intercept: &Intercept,
    env: &BTreeMap<String, String>,
    events: Events,
) -> Result<bool, UpError> {
    let Some(file) = &intercept.env.file else {
        return Ok(false);
    };
    let selected: BTreeMap<String, String> = env
        .iter()
        .filter(|(k, _)| intercept.env.selects(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let rendered = envfile::render(&selected, intercept.env.format);
    if std::fs::read_to_string(file).ok().as_deref() == Some(rendered.text.as_str()) {
        return Ok(false);
    }
    write_private(file, &rendered.text)?;
    events.emit(UpEvent::EnvWritten {
        intercept: intercept.name.clone(),
        file: file.clone(),
        variables: selected.len() - rendered.skipped.len(),
        skipped: rendered.skipped,
        format: intercept.env.format.to_string(),
    });
    Ok(true)
}

/// Writes a file only the user can read (env files hold secrets), replacing
/// it atomically.
pub fn write_private(path: &Path, text: &str) -> Result<(), UpError> {
    let io = |source| UpError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    let tmp = path.with_file_name(format!(
        ".{}.tpr-tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("env")
    ));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    // A leftover temporary file keeps its old mode: set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_holds_the_selected_variables_with_mode_0600_and_is_kept_when_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "format_version = 1\n[[intercept]]\nworkload = \"a\"\nport = \"1\"\nenv.file = \"{}/e.env\"\nenv.exclude = [\"SECRET*\"]\n",
            dir.path().display()
        );
        let team = tpr_schema::SourceFile::new("telepresence.toml".to_string(), text);
        let project = tpr_schema::parse(&team, None, dir.path()).expect("valid");
        let env = BTreeMap::from([
            ("A".to_string(), "1".to_string()),
            ("SECRET_KEY".to_string(), "k".to_string()),
        ]);
        let i = &project.intercepts[0];
        assert!(export(i, &env, Events::Human).unwrap());
        let path = dir.path().join("e.env");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "A='1'\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            !export(i, &env, Events::Human).unwrap(),
            "an unchanged file is not rewritten"
        );
    }
}
