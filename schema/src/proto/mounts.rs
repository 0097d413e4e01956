//! The app container's mounts as the installer tells the agent about them
//! (`TPR_AGENT_VOLUMES`, docs/agent-contract.md), and which of them are
//! copied to the workstation: the rules both ends share.

use std::path::{Path, PathBuf};

use crate::project::glob_match;

/// The agent's variable listing the app's mounts: a comma list of
/// `<kind>:<mount path>`, `%` and `,` in paths written `%25` and `%2C`.
pub const VOLUMES_VAR: &str = "TPR_AGENT_VOLUMES";

/// Where the agent container mounts the app's volumes: `<root><mountPath>`.
pub const VOLUMES_ROOT: &str = "/tpr/volumes";

/// The kind of the service-account token that the admission controller
/// mounts into every container (the agent's copy is the app's, at the same
/// path, not under [`VOLUMES_ROOT`]).
pub const AUTOMOUNT_KIND: &str = "serviceAccountToken";
pub const AUTOMOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// One mount of the app container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The app's mount path.
    pub path: String,
    /// The volume source's field name: `configMap`, `secret`, `projected`,
    /// `downwardAPI`, [`AUTOMOUNT_KIND`], `emptyDir`,
    /// `persistentVolumeClaim`, ...
    pub kind: String,
}

impl Mount {
    /// Volumes that hold data rather than configuration: copied only when
    /// named in `include` (they may be large and change all the time).
    pub fn is_data(&self) -> bool {
        !matches!(
            self.kind.as_str(),
            "configMap" | "secret" | "projected" | "downwardAPI" | AUTOMOUNT_KIND
        )
    }

    /// Where the agent reads this mount, its volumes being under `root`.
    pub fn source(&self, root: &Path) -> PathBuf {
        if self.kind == AUTOMOUNT_KIND {
            PathBuf::from(&self.path)
        } else {
            root.join(self.path.trim_start_matches('/'))
        }
    }
}

/// The value of [`VOLUMES_VAR`] for `mounts`.
pub fn encode(mounts: &[Mount]) -> String {
    mounts
        .iter()
        .map(|m| {
            let path = m.path.replace('%', "%25").replace(',', "%2C");
            format!("{}:{path}", m.kind)
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads [`VOLUMES_VAR`]; an error says what is wrong.
pub fn decode(value: &str) -> Result<Vec<Mount>, String> {
    value
        .split(',')
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (kind, path) = entry
                .split_once(':')
                .ok_or_else(|| format!("`{entry}` is not <kind>:<path>"))?;
            let path = path.replace("%2C", ",").replace("%25", "%");
            if kind.is_empty() || !path.starts_with('/') {
                return Err(format!("`{entry}` is not <kind>:<absolute path>"));
            }
            Ok(Mount {
                path,
                kind: kind.to_owned(),
            })
        })
        .collect()
}

/// Whether `pattern` names `path`: a glob of the whole path, or a directory
/// above it.
fn names(pattern: &str, path: &str) -> bool {
    glob_match(pattern, path)
        || path
            .strip_prefix(pattern.trim_end_matches('/'))
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Whether `mount` is copied: with no `include`, every configuration mount;
/// else the mounts it names, a data mount only when a pattern matches its
/// own path (not a directory above it). `exclude` then removes mounts.
pub fn selected(mount: &Mount, include: &[String], exclude: &[String]) -> bool {
    let included = if mount.is_data() {
        include.iter().any(|p| glob_match(p, &mount.path))
    } else {
        include.is_empty() || include.iter().any(|p| names(p, &mount.path))
    };
    included && !exclude.iter().any(|p| names(p, &mount.path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, path: &str) -> Mount {
        Mount {
            path: path.into(),
            kind: kind.into(),
        }
    }

    #[test]
    fn the_variable_round_trips_odd_paths() {
        let mounts = vec![
            mount("configMap", "/etc/a,b"),
            mount("secret", "/etc/100%"),
            mount(AUTOMOUNT_KIND, AUTOMOUNT_PATH),
        ];
        let value = encode(&mounts);
        assert_eq!(value.matches(',').count(), 2);
        assert_eq!(decode(&value).unwrap(), mounts);
        assert_eq!(decode("").unwrap(), vec![]);
        assert!(decode("configMap").is_err());
        assert!(decode("secret:relative").is_err());
    }

    #[test]
    fn data_mounts_are_copied_only_when_named() {
        let config = mount("configMap", "/etc/app/config");
        let data = mount("persistentVolumeClaim", "/data");
        let none: [String; 0] = [];
        assert!(selected(&config, &none, &none));
        assert!(!selected(&data, &none, &none));
        assert!(selected(&data, &["/data".into()], &none));
        assert!(selected(&data, &["/d*".into()], &none));
        // A directory above selects configuration, not data.
        assert!(selected(&config, &["/etc".into()], &none));
        assert!(!selected(
            &mount("emptyDir", "/etc/cache"),
            &["/etc".into()],
            &none
        ));
        assert!(!selected(&config, &["/data".into()], &none));
        assert!(!selected(&config, &none, &["/etc/".into()]));
        assert!(!selected(&data, &["/data".into()], &["/data".into()]));
    }

    #[test]
    fn the_automounted_token_is_read_where_the_agent_has_it() {
        let root = Path::new("/tpr/volumes");
        assert_eq!(
            mount(AUTOMOUNT_KIND, AUTOMOUNT_PATH).source(root),
            Path::new(AUTOMOUNT_PATH)
        );
        assert_eq!(
            mount("secret", "/etc/tls").source(root),
            Path::new("/tpr/volumes/etc/tls")
        );
    }
}
