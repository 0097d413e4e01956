//! The install id: a UUID per user, kept in the user's config directory. The
//! default http match (`x-telepresence-intercept-id: <install id>:<name>`)
//! uses it, so every developer's personal intercepts stay apart.

use std::path::PathBuf;

use super::UpError;

/// Environment override (tests, or a second identity on one machine).
pub const INSTALL_ID_ENV: &str = "TPR_INSTALL_ID";

/// `$XDG_CONFIG_HOME/tpr/install-id`, else `~/.config/tpr/install-id`.
pub fn install_id_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("tpr").join("install-id"))
}

/// The install id: `$TPR_INSTALL_ID`, else the one on disk, else a new one
/// written there.
pub fn install_id() -> Result<String, UpError> {
    if let Some(id) = std::env::var(INSTALL_ID_ENV).ok().filter(|v| !v.is_empty()) {
        return Ok(id);
    }
    let path = install_id_path().ok_or(UpError::NoHome)?;
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if uuid::Uuid::parse_str(id).is_ok() {
            return Ok(id.to_owned());
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let io = |source| UpError::Io {
        what: format!("writing the install id to {}", path.display()),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(&path, format!("{id}\n")).map_err(io)?;
    Ok(id)
}

/// Who holds a session, for conflict messages and `tpr list`: `user@host`.
pub fn session_label() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}
