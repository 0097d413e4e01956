//! The pod's mounted files on this machine (`TELEPRESENCE_ROOT`): for each
//! intercept with `[intercept.volumes]` enabled, a read-only copy of the
//! app container's mounts at `<dir><mountPath>` that follows the pod's, fed
//! by the agent's `Volumes` stream (agent/src/volumes.rs) from the pod the
//! intercept's environment comes from.
//!
//! The first listing is copied before the processes start. Each file is
//! written to a temporary file in the copy and renamed over the old one, so
//! a reader sees the old or the new content, never half of it. The copy is
//! private (the directory is 0700; files keep the pod's modes) and removed
//! when `tpr up` ends; the session state names it, so the next `tpr up` or
//! `tpr down` removes it after a crash (`remove_stale`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tpr_schema::proto::{
    MountInfo, VolumeFile, VolumesEvent, VolumesRequest, agent_client::AgentClient,
    volumes_event::Kind,
};
use tpr_schema::{Intercept, Project, Volumes};

use super::UpError;
use super::event::{Events, UpEvent};
use super::state::State;

/// In a copy: marks the directory as tpr's, so only tpr's copies are ever
/// removed (a `dir` that holds anything else is refused).
const MARKER: &str = ".tpr-root";
/// Prefix of tpr's own names in a copy (the marker, files being written).
const OWN: &str = ".tpr-";

/// The variables that name the copy for the processes: Telepresence's and
/// tpr's own.
pub const ROOT_VARS: [&str; 2] = ["TELEPRESENCE_ROOT", "TPR_ROOT"];

/// Where an intercept's copy goes: `dir` from the file, else
/// `$XDG_RUNTIME_DIR/tpr/volumes-<project hash>-<intercept>` (else under
/// tpr's state directory). `None` when disabled.
pub fn root_of(project: &Project, intercept: &Intercept) -> Option<PathBuf> {
    let v = &intercept.volumes;
    if !v.enabled {
        return None;
    }
    if let Some(dir) = &v.dir {
        return Some(dir.clone());
    }
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join("tpr"))
        .or_else(|| super::state::state_dir().ok())?;
    let hash = super::state::fnv1a(project.root.as_os_str().as_encoded_bytes());
    Some(base.join(format!("volumes-{hash:016x}-{}", intercept.name)))
}

/// The copy's variables for a process taking `intercept`'s environment.
pub fn env_of(project: &Project, intercept: &Intercept) -> Vec<(String, String)> {
    root_of(project, intercept)
        .map(|root| {
            ROOT_VARS
                .iter()
                .map(|k| (k.to_string(), root.display().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// What the manager wants mirrored: per intercept, its copy's settings and
/// the agent pod to read from (`None` while reconnecting: the copy stays).
pub struct Want {
    pub intercept: String,
    pub root: PathBuf,
    pub settings: Volumes,
    pub source: Option<(String, Channel)>,
}

/// The running copies, by intercept name.
#[derive(Default)]
pub struct Mirrors {
    running: BTreeMap<String, Mirror>,
}

struct Mirror {
    root: PathBuf,
    settings: Volumes,
    /// The pod the stream reads from.
    pod: String,
    task: JoinHandle<()>,
}

impl Mirrors {
    /// Makes the copies match `wants`: new ones are copied before this
    /// returns (an error names the reason, e.g. the size limit); ones whose
    /// pod went away follow the new pod; ones no longer wanted are removed.
    pub async fn sync(&mut self, wants: Vec<Want>, events: Events) -> Result<(), UpError> {
        let keep: BTreeSet<&str> = wants.iter().map(|w| w.intercept.as_str()).collect();
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(n, m)| {
                !keep.contains(n.as_str())
                    || wants.iter().any(|w| {
                        &w.intercept == *n && (w.root != m.root || w.settings != m.settings)
                    })
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            if let Some(m) = self.running.remove(&name) {
                m.task.abort();
                remove_copy(&m.root);
            }
        }
        for want in wants {
            let Some((pod, channel)) = want.source else {
                continue;
            };
            let first = match self.running.get(&want.intercept) {
                None => true,
                Some(m) if m.pod != pod || m.task.is_finished() => false,
                Some(_) => continue,
            };
            if first {
                prepare(&want.root).map_err(|message| UpError::Volumes {
                    intercept: want.intercept.clone(),
                    message,
                })?;
            }
            let (tx, rx) = oneshot::channel();
            let task = tokio::spawn(follow(
                channel,
                request(&want.settings),
                want.root.clone(),
                tx,
            ));
            self.running.insert(
                want.intercept.clone(),
                Mirror {
                    root: want.root.clone(),
                    settings: want.settings.clone(),
                    pod,
                    task,
                },
            );
            // The processes start on the first copy; a new pod's listing
            // replaces the copy in the background.
            if !first {
                continue;
            }
            let outcome = rx
                .await
                .unwrap_or_else(|_| Err("the agent's stream ended".into()));
            match outcome {
                Ok(mounts) => events.emit(copied_event(&want.intercept, &want.root, &mounts)),
                Err(message) => {
                    if let Some(m) = self.running.remove(&want.intercept) {
                        m.task.abort();
                    }
                    remove_copy(&want.root);
                    return Err(UpError::Volumes {
                        intercept: want.intercept,
                        message: too_big_help(message, &want.settings),
                    });
                }
            }
        }
        Ok(())
    }

    /// The copy's directory of an intercept, while there is one.
    pub fn root(&self, intercept: &str) -> Option<PathBuf> {
        self.running.get(intercept).map(|m| m.root.clone())
    }

    /// Stops every copy and removes it.
    pub fn stop(&mut self) {
        for (_, m) in std::mem::take(&mut self.running) {
            m.task.abort();
            remove_copy(&m.root);
        }
    }
}

impl Drop for Mirrors {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The copies a `tpr up` that ended without cleaning up left (its state
/// names them): secrets do not stay on the disk.
pub fn remove_stale(state: &State) {
    for i in &state.intercepts {
        if let Some(root) = &i.volumes {
            remove_copy(root);
        }
    }
}

fn request(v: &Volumes) -> VolumesRequest {
    VolumesRequest {
        include: v.include.clone(),
        exclude: v.exclude.clone(),
        max_size: v.max_size,
    }
}

/// Creates the copy's directory (0700) with the marker; refuses a
/// directory that holds files not of a tpr copy.
fn prepare(root: &Path) -> Result<(), String> {
    let io = |e: std::io::Error| format!("{}: {e}", root.display());
    if root.join(MARKER).exists() {
        // Left by a crash: start afresh.
        remove_copy(root);
    } else if std::fs::read_dir(root).is_ok_and(|mut d| d.next().is_some()) {
        return Err(format!(
            "{} is not empty and not a copy of tpr's; choose another [intercept.volumes] dir",
            root.display()
        ));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(io)?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    std::fs::write(root.join(MARKER), b"").map_err(io)
}

/// Removes a copy, only if it is one (it has the marker).
fn remove_copy(root: &Path) {
    if root.join(MARKER).exists() {
        // Directories of 0500 and the like: make them writable first.
        make_writable(root);
        let _ = std::fs::remove_dir_all(root);
    }
}

fn make_writable(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            make_writable(&e.path());
        }
    }
}

/// The local path of the pod's `path`, if it is a plain absolute path.
fn local(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path).strip_prefix("/").ok()?;
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    (plain && rel.components().next().is_some()).then(|| root.join(rel))
}

/// Reads the agent's stream into the copy until it ends. `first` gets the
/// mounts once the first listing is in (or why it failed); files of an
/// older listing that the first one lacks are removed then.
async fn follow(
    channel: Channel,
    req: VolumesRequest,
    root: PathBuf,
    first: oneshot::Sender<Result<Vec<MountInfo>, String>>,
) {
    let first = Arc::new(Mutex::new(Some(first)));
    let fail = |message: String| {
        if let Some(tx) = first.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(Err(message));
        }
    };
    let mut stream = match AgentClient::new(channel).volumes(req).await {
        Ok(s) => s.into_inner(),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            return fail(
                "the agent's image is older than this tpr and cannot send the pod's files; \
                 use the agent image of this tpr, or set [intercept.volumes] enabled = false"
                    .into(),
            );
        }
        Err(status) => return fail(format!("the agent refused: {}", status.message())),
    };
    let mut copy = Copy::new(root);
    loop {
        let event = match stream.message().await {
            Ok(Some(VolumesEvent { kind: Some(kind) })) => kind,
            Ok(Some(_)) => continue,
            Ok(None) => return fail("the agent ended the stream".into()),
            Err(status) => return fail(format!("the agent's stream broke: {}", status.message())),
        };
        match event {
            Kind::Mounts(list) if list.too_big => return fail(too_big(&list.mounts)),
            Kind::Mounts(list) => copy.mounts = list.mounts,
            Kind::Synced(_) => {
                if let Some(seen) = copy.seen.take() {
                    prune(&copy.root, &copy.root, &seen);
                    if let Some(tx) = first.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        let _ = tx.send(Ok(copy.mounts.clone()));
                    }
                }
            }
            other => {
                if let Err(e) = copy.apply(other) {
                    // The copy may be missing a file now; it is written again
                    // on its next change. Names only: contents are secrets.
                    tracing::warn!("TELEPRESENCE_ROOT copy: {e}");
                }
            }
        }
    }
}

/// The local copy being written.
struct Copy {
    root: PathBuf,
    mounts: Vec<MountInfo>,
    /// Paths of the first listing (until its end).
    seen: Option<BTreeSet<PathBuf>>,
    /// A file whose parts are arriving: its path and the temporary file.
    partial: Option<(String, PathBuf, std::fs::File)>,
    serial: u64,
}

impl Copy {
    fn new(root: PathBuf) -> Self {
        Copy {
            root,
            mounts: Vec::new(),
            seen: Some(BTreeSet::new()),
            partial: None,
            serial: 0,
        }
    }

    fn see(&mut self, path: &Path) {
        if let Some(seen) = self.seen.as_mut() {
            for a in path.ancestors().take_while(|a| *a != self.root) {
                seen.insert(a.to_owned());
            }
        }
    }

    fn apply(&mut self, kind: Kind) -> std::io::Result<()> {
        let bad = |p: &str| std::io::Error::other(format!("not a plain path: {p:?}"));
        match kind {
            Kind::Dir(d) => {
                let path = local(&self.root, &d.path).ok_or_else(|| bad(&d.path))?;
                self.see(&path);
                if !path.is_dir() {
                    let _ = std::fs::remove_file(&path);
                    std::fs::create_dir_all(&path)?;
                }
                // The owner keeps rwx, so updates and the removal work.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(d.mode | 0o700))
            }
            Kind::File(f) => self.file(f),
            Kind::Removed(r) => {
                let path = local(&self.root, &r.path).ok_or_else(|| bad(&r.path))?;
                if path.is_dir() {
                    make_writable(&path);
                    std::fs::remove_dir_all(&path)
                } else {
                    match std::fs::remove_file(&path) {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                        other => other,
                    }
                }
            }
            Kind::Mounts(_) | Kind::Synced(_) => Ok(()),
        }
    }

    /// A part of a file; the last one renames the whole file into place.
    fn file(&mut self, f: VolumeFile) -> std::io::Result<()> {
        let path = local(&self.root, &f.path)
            .ok_or_else(|| std::io::Error::other(format!("not a plain path: {:?}", f.path)))?;
        if self.partial.as_ref().is_some_and(|(p, _, _)| *p != f.path) {
            // A file whose last part never came: drop it.
            if let Some((_, tmp, _)) = self.partial.take() {
                let _ = std::fs::remove_file(tmp);
            }
        }
        if self.partial.is_none() {
            self.serial += 1;
            let tmp = self.root.join(format!("{OWN}part-{}", self.serial));
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            self.partial = Some((f.path.clone(), tmp, file));
        }
        let (_, _, file) = self.partial.as_mut().expect("set above");
        file.write_all(&f.data)?;
        if f.more {
            return Ok(());
        }
        let (_, tmp, file) = self.partial.take().expect("set above");
        drop(file);
        self.see(&path);
        let done = (|| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(f.mode))?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if path.is_dir() {
                make_writable(&path);
                std::fs::remove_dir_all(&path)?;
            }
            std::fs::rename(&tmp, &path)
        })();
        if done.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        done
    }
}

/// Removes what the first listing did not have (a copy that followed an
/// earlier pod).
fn prune(dir: &Path, root: &Path, seen: &BTreeSet<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        let own = dir == root && e.file_name().to_string_lossy().starts_with(OWN);
        if own {
            continue;
        }
        if !seen.contains(&path) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&path);
                let _ = std::fs::remove_dir_all(&path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        } else if e.file_type().is_ok_and(|t| t.is_dir()) {
            prune(&path, root, seen);
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// "the mounts to copy hold 130.0 MiB: /data 120.0 MiB, ..." (biggest first).
fn too_big(mounts: &[MountInfo]) -> String {
    let mut copied: Vec<&MountInfo> = mounts.iter().filter(|m| m.copied).collect();
    copied.sort_by_key(|m| std::cmp::Reverse(m.bytes));
    let total: u64 = copied.iter().map(|m| m.bytes).sum();
    let biggest: Vec<String> = copied
        .iter()
        .take(3)
        .map(|m| format!("{} {}", m.path, mib(m.bytes)))
        .collect();
    format!(
        "the mounts to copy hold {}; biggest: {}",
        mib(total),
        biggest.join(", ")
    )
}

fn too_big_help(message: String, settings: &Volumes) -> String {
    if message.starts_with("the mounts to copy hold") {
        format!(
            "{message}; that is more than max_size ({}): leave mounts out with [intercept.volumes] exclude, or raise max_size",
            mib(settings.max_size)
        )
    } else {
        message
    }
}

fn copied_event(intercept: &str, root: &Path, mounts: &[MountInfo]) -> UpEvent {
    UpEvent::VolumesCopied {
        intercept: intercept.to_owned(),
        dir: root.to_owned(),
        files: mounts.iter().map(|m| m.files).sum(),
        bytes: mounts.iter().map(|m| m.bytes).sum(),
        copied: mounts
            .iter()
            .filter(|m| m.copied)
            .map(|m| m.path.clone())
            .collect(),
        not_copied: mounts
            .iter()
            .filter(|m| !m.copied)
            .map(|m| format!("{} ({})", m.path, m.kind))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use tpr_schema::proto::{VolumeDir, VolumeRemoved};

    use super::*;

    fn file(path: &str, mode: u32, data: &[u8], more: bool) -> Kind {
        Kind::File(VolumeFile {
            path: path.into(),
            mode,
            data: data.to_vec(),
            more,
        })
    }

    #[test]
    fn files_land_whole_with_their_modes_and_go_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        prepare(&root).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&root), 0o700);
        let mut copy = Copy::new(root.clone());
        copy.apply(Kind::Dir(VolumeDir {
            path: "/etc/app".into(),
            mode: 0o755,
        }))
        .unwrap();
        copy.apply(file("/etc/app/key", 0o400, b"sec", true))
            .unwrap();
        // Not there until the last part.
        assert!(!root.join("etc/app/key").exists());
        copy.apply(file("/etc/app/key", 0o400, b"ret", false))
            .unwrap();
        assert_eq!(std::fs::read(root.join("etc/app/key")).unwrap(), b"secret");
        assert_eq!(mode(&root.join("etc/app/key")), 0o400);
        // Replaced even though read-only.
        copy.apply(file("/etc/app/key", 0o400, b"new", false))
            .unwrap();
        assert_eq!(std::fs::read(root.join("etc/app/key")).unwrap(), b"new");
        copy.apply(Kind::Removed(VolumeRemoved {
            path: "/etc/app/key".into(),
        }))
        .unwrap();
        assert!(!root.join("etc/app/key").exists());
        // Nothing of tpr's own is left but the marker.
        let names: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(copy.apply(file("/../escape", 0o600, b"x", false)).is_err());
        assert!(!dir.path().join("escape").exists());
        remove_copy(&root);
        assert!(!root.exists());
    }

    #[test]
    fn a_new_listing_prunes_what_it_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        prepare(&root).unwrap();
        let mut old = Copy::new(root.clone());
        old.apply(file("/a/x", 0o644, b"1", false)).unwrap();
        old.apply(file("/b/y", 0o644, b"2", false)).unwrap();
        let mut new = Copy::new(root.clone());
        new.apply(file("/a/x", 0o644, b"1", false)).unwrap();
        let seen = new.seen.take().unwrap();
        prune(&root, &root, &seen);
        assert!(root.join("a/x").exists());
        assert!(!root.join("b").exists());
        assert!(root.join(MARKER).exists());
    }

    #[test]
    fn a_directory_that_is_not_a_copy_is_refused_and_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mine"), "x").unwrap();
        assert!(prepare(dir.path()).unwrap_err().contains("not empty"));
        remove_copy(dir.path());
        assert!(dir.path().join("mine").exists());
    }

    #[test]
    fn the_size_message_names_the_biggest_mounts() {
        let m = |path: &str, bytes: u64, copied: bool| MountInfo {
            path: path.into(),
            kind: "configMap".into(),
            copied,
            bytes,
            files: 1,
        };
        let text = too_big(&[
            m("/small", 1 << 20, true),
            m("/data", 200 << 20, true),
            m("/skipped", 900 << 20, false),
        ]);
        assert_eq!(
            text,
            "the mounts to copy hold 201.0 MiB; biggest: /data 200.0 MiB, /small 1.0 MiB"
        );
    }
}
