//! The session state of a project's `tpr up`, kept under the user's state
//! directory so that `tpr down`, `leave` and `status` find it, also after a
//! crash: `$XDG_STATE_HOME/tpr/<project hash>.json` (else
//! `~/.local/state/tpr/`), and the control socket beside it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::UpError;

/// One intercept as `tpr up` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterceptState {
    /// The intercept's name in the file.
    pub name: String,
    /// `Deployment/hello`.
    pub workload: String,
    pub namespace: String,
    /// The first pod that routes here, when connected.
    pub pod: Option<String>,
    /// `ACTIVE` (every ready pod routes here), `PARTIAL (...)`,
    /// `RECONNECTING`.
    pub state: String,
    /// Every ready agent pod of the workload and whether it routes here.
    #[serde(default)]
    pub pods: Vec<PodState>,
    /// `127.0.0.1:8080 <- http` for each port.
    pub ports: Vec<String>,
    /// `tcp` or `http`.
    pub mechanism: String,
    /// The read-only copy of the pod's mounted files (`TELEPRESENCE_ROOT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<PathBuf>,
    /// The preview link (`[intercept.preview]`); its token is a secret
    /// (the state file is 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_url: Option<String>,
}

/// One ready agent pod of an intercepted workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodState {
    pub name: String,
    /// `ACTIVE` (its session carries the intercepts) or `CONNECTING`.
    pub state: String,
    /// Why it is not routing yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What a running `tpr up` writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub pid: u32,
    /// The project file, absolute.
    pub project: PathBuf,
    pub context: String,
    pub cluster_url: String,
    pub install_id: String,
    pub intercepts: Vec<InterceptState>,
}

/// Where one project's state lives.
#[derive(Debug, Clone)]
pub struct StatePaths {
    pub file: PathBuf,
    pub socket: PathBuf,
}

pub(super) fn state_dir() -> Result<PathBuf, UpError> {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .map(|d| d.join("tpr"))
        .ok_or(UpError::NoHome)
}

/// FNV-1a: stable across builds, unlike std's hasher, so every tpr finds
/// the same file for a project.
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The absolute path that identifies a project.
pub fn project_key(file: &Path) -> PathBuf {
    std::fs::canonicalize(file)
        .or_else(|_| std::path::absolute(file))
        .unwrap_or_else(|_| file.to_owned())
}

impl StatePaths {
    /// The paths for the project whose file is `file`.
    pub fn for_project(file: &Path) -> Result<Self, UpError> {
        let key = project_key(file);
        let hash = fnv1a(key.as_os_str().as_encoded_bytes());
        let dir = state_dir()?;
        Ok(StatePaths {
            file: dir.join(format!("{hash:016x}.json")),
            socket: dir.join(format!("{hash:016x}.sock")),
        })
    }

    /// The state, if a `tpr up` wrote one.
    pub fn read(&self) -> Option<State> {
        let text = std::fs::read_to_string(&self.file).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the state atomically (mode 0600: it names the cluster).
    pub fn write(&self, state: &State) -> Result<(), UpError> {
        let io = |source| UpError::Io {
            what: format!("writing the session state {}", self.file.display()),
            source,
        };
        let dir = self.file.parent().expect("the state file has a directory");
        std::fs::create_dir_all(dir).map_err(io)?;
        let json = serde_json::to_string_pretty(state).expect("state serializes");
        super::env_export::write_private(&self.file, &json)
    }

    /// Removes the state file and the socket (missing is fine), and the
    /// copies of mounted files the state names (after a crash).
    pub fn remove(&self) {
        if let Some(state) = self.read() {
            super::volumes::remove_stale(&state);
        }
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_file(&self.socket);
    }
}

pub use crate::supervise::pid_alive;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn this_process_is_alive_and_a_dead_one_is_not() {
        assert!(pid_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!pid_alive(pid));
    }

    #[test]
    fn state_round_trips_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = StatePaths {
            file: dir.path().join("s/x.json"),
            socket: dir.path().join("s/x.sock"),
        };
        let state = State {
            pid: 1,
            project: "/p/telepresence.toml".into(),
            context: "c".into(),
            cluster_url: "https://x".into(),
            install_id: "id".into(),
            intercepts: vec![],
        };
        paths.write(&state).unwrap();
        assert_eq!(paths.read(), Some(state));
        let mode = std::fs::metadata(&paths.file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        paths.remove();
        assert_eq!(paths.read(), None);
    }
}
