//! `Volumes`: the app container's mounted files for the workstation's
//! `TELEPRESENCE_ROOT`. The installer mounts the app's volumes read-only
//! into the agent under `/tpr/volumes<mountPath>`, so the kubelet keeps
//! them current (ConfigMap and Secret updates, token rotation); the agent
//! reads them from there.
//!
//! Each call gets its own thread that lists the selected mounts, sends
//! them, then polls them every second and sends what changed. Polling (not
//! inotify): the kubelet updates a ConfigMap or Secret volume by swapping
//! its `..data` symlink, which inotify on the files does not see, and a
//! walk of a few config files each second costs nothing. Only file
//! metadata and a hash of each file's content are kept, never contents.

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::Status;
use tpr_schema::proto::mounts::{Mount, selected};
use tpr_schema::proto::{
    MountInfo, MountList, VolumeDir, VolumeFile, VolumeRemoved, VolumesEvent, VolumesRequest,
    VolumesSynced, volumes_event::Kind,
};
use tracing::{debug, info};

/// How often the mounts are checked for changes.
const POLL: Duration = Duration::from_secs(1);
/// Largest part of a file in one message (well under gRPC's 4 MiB limit).
const PART: usize = 256 << 10;
/// Files up to this size are read whole on a change and compared with the
/// hash sent before, so a ConfigMap update (which replaces every file of
/// the volume) sends only the files whose content changed.
const COMPARE_MAX: u64 = 8 << 20;
/// Messages in flight per call: bounds the agent's memory to a few parts.
const QUEUE: usize = 16;
/// Deepest directory followed (symlinked directories could loop).
const MAX_DEPTH: usize = 32;

pub type Sender = mpsc::Sender<Result<VolumesEvent, Status>>;

/// What the agent knows of one file or directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    dir: bool,
    mode: u32,
    /// Changes whenever the kubelet or a writer replaces or edits the file.
    stamp: (u64, u64, u64, i64, i64),
    size: u64,
    /// Of a file's content as last sent.
    hash: u64,
}

/// The selected mounts' files and directories by the app's path.
type Tree = BTreeMap<String, Entry>;

/// Starts serving one `Volumes` call: `mounts` are read under `root`.
pub fn serve(
    mounts: Vec<Mount>,
    root: PathBuf,
    req: VolumesRequest,
) -> mpsc::Receiver<Result<VolumesEvent, Status>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    std::thread::Builder::new()
        .name("tpr-volumes".into())
        .spawn(move || {
            // Ends when the runner goes away (a send fails).
            let _ = run(&mounts, &root, &req, &tx);
            debug!("volumes stream ended");
        })
        .expect("a thread starts");
    rx
}

struct Gone;

fn send(tx: &Sender, kind: Kind) -> Result<(), Gone> {
    tx.blocking_send(Ok(VolumesEvent { kind: Some(kind) }))
        .map_err(|_| Gone)
}

fn run(mounts: &[Mount], root: &Path, req: &VolumesRequest, tx: &Sender) -> Result<(), Gone> {
    let chosen: Vec<&Mount> = mounts
        .iter()
        .filter(|m| selected(m, &req.include, &req.exclude))
        .collect();
    let mut tree = scan(&chosen, mounts, root);
    let infos: Vec<MountInfo> = mounts
        .iter()
        .map(|m| {
            let copied = chosen.contains(&m);
            let files = tree
                .iter()
                .filter(|(p, e)| !e.dir && copied && within(p, &m.path) && owner(mounts, p) == m)
                .map(|(_, e)| e.size);
            let (bytes, files) = files.fold((0, 0), |(b, n), s| (b + s, n + 1));
            MountInfo {
                path: m.path.clone(),
                kind: m.kind.clone(),
                copied,
                bytes,
                files,
            }
        })
        .collect();
    let total: u64 = infos.iter().map(|i| i.bytes).sum();
    let too_big = req.max_size > 0 && total > req.max_size;
    send(
        tx,
        Kind::Mounts(MountList {
            mounts: infos,
            too_big,
        }),
    )?;
    if too_big {
        return Ok(());
    }
    info!(mounts = chosen.len(), files = tree.len(), "sending volumes");
    let paths: Vec<String> = tree.keys().cloned().collect();
    for path in paths {
        let sent = send_entry(tx, &chosen, root, &path, &tree[&path], None)?;
        match sent {
            Some(hash) => tree.get_mut(&path).expect("listed").hash = hash,
            None => {
                tree.remove(&path);
            }
        }
    }
    send(tx, Kind::Synced(VolumesSynced {}))?;
    loop {
        std::thread::sleep(POLL);
        if tx.is_closed() {
            return Err(Gone);
        }
        let now = scan(&chosen, mounts, root);
        if update(tx, &chosen, root, &mut tree, now)? {
            send(tx, Kind::Synced(VolumesSynced {}))?;
        }
    }
}

/// Sends what changed from `tree` to `now` and makes `tree` what was sent.
/// Returns whether anything was sent.
fn update(
    tx: &Sender,
    chosen: &[&Mount],
    root: &Path,
    tree: &mut Tree,
    now: Tree,
) -> Result<bool, Gone> {
    let mut sent = false;
    // Removals deepest first; a path whose kind changed is removed, then
    // sent again.
    let gone: Vec<String> = tree
        .iter()
        .filter(|(p, e)| now.get(*p).is_none_or(|n| n.dir != e.dir))
        .map(|(p, _)| p.clone())
        .collect();
    for path in gone.into_iter().rev() {
        tree.remove(&path);
        send(tx, Kind::Removed(VolumeRemoved { path }))?;
        sent = true;
    }
    for (path, entry) in now {
        let old = tree.get(&path);
        if old.is_some_and(|o| o.stamp == entry.stamp && o.mode == entry.mode) {
            continue;
        }
        if entry.dir && old.is_some_and(|o| o.mode == entry.mode) {
            tree.insert(path, entry);
            continue;
        }
        match send_entry(tx, chosen, root, &path, &entry, old)? {
            Some(hash) => {
                sent |= old.is_none_or(|o| o.hash != hash || o.mode != entry.mode);
                tree.insert(path, Entry { hash, ..entry });
            }
            None => {
                // Unreadable now: the workstation keeps nothing stale.
                if tree.remove(&path).is_some() {
                    send(tx, Kind::Removed(VolumeRemoved { path }))?;
                    sent = true;
                }
            }
        }
    }
    Ok(sent)
}

/// Sends one directory or file (unless `old` shows the same content and
/// mode). Returns the content's hash, or None when it cannot be read.
fn send_entry(
    tx: &Sender,
    chosen: &[&Mount],
    root: &Path,
    path: &str,
    entry: &Entry,
    old: Option<&Entry>,
) -> Result<Option<u64>, Gone> {
    if entry.dir {
        send(
            tx,
            Kind::Dir(VolumeDir {
                path: path.to_owned(),
                mode: entry.mode,
            }),
        )?;
        return Ok(Some(0));
    }
    let source = source_of(chosen, root, path);
    let Ok(mut file) = std::fs::File::open(&source) else {
        return Ok(None);
    };
    let part = |data: Vec<u8>, more: bool| {
        Kind::File(VolumeFile {
            path: path.to_owned(),
            mode: entry.mode,
            data,
            more,
        })
    };
    if entry.size <= COMPARE_MAX {
        let mut data = Vec::with_capacity(entry.size as usize);
        if file.read_to_end(&mut data).is_err() {
            return Ok(None);
        }
        let hash = hash(&data);
        if old.is_some_and(|o| !o.dir && o.hash == hash && o.mode == entry.mode) {
            return Ok(Some(hash));
        }
        let mut parts = data.chunks(PART).peekable();
        if parts.peek().is_none() {
            send(tx, part(Vec::new(), false))?;
        }
        while let Some(p) = parts.next() {
            send(tx, part(p.to_vec(), parts.peek().is_some()))?;
        }
        return Ok(Some(hash));
    }
    // Large: streamed as read, always sent.
    let mut hasher = std::hash::DefaultHasher::new();
    let mut buf = vec![0u8; PART];
    let mut pending: Option<Vec<u8>> = None;
    loop {
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(_) => return Ok(None),
        };
        if n == 0 {
            break;
        }
        hasher.write(&buf[..n]);
        if let Some(p) = pending.replace(buf[..n].to_vec()) {
            send(tx, part(p, true))?;
        }
    }
    send(tx, part(pending.unwrap_or_default(), false))?;
    Ok(Some(hasher.finish()))
}

fn hash(data: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(data);
    h.finish()
}

/// Whether `path` is `mount` or under it.
fn within(path: &str, mount: &str) -> bool {
    path == mount
        || path
            .strip_prefix(mount)
            .is_some_and(|r| r.starts_with('/') || mount.ends_with('/'))
}

/// The innermost mount that holds `path` (mounts may nest: a ConfigMap
/// at /data/config inside a volume at /data).
fn owner<'a>(mounts: &'a [Mount], path: &str) -> &'a Mount {
    mounts
        .iter()
        .filter(|m| within(path, &m.path))
        .max_by_key(|m| m.path.len())
        .expect("every listed path is in a mount")
}

/// Where the agent reads the app's `path`.
fn source_of(chosen: &[&Mount], root: &Path, path: &str) -> PathBuf {
    let m = chosen
        .iter()
        .filter(|m| within(path, &m.path))
        .max_by_key(|m| m.path.len())
        .expect("every listed path is in a chosen mount");
    let rest = path[m.path.len()..].trim_start_matches('/');
    let base = m.source(root);
    if rest.is_empty() {
        base
    } else {
        base.join(rest)
    }
}

/// Lists the chosen mounts' files and directories (symlinks followed when
/// they stay inside their mount; the kubelet's `..` entries skipped).
fn scan(chosen: &[&Mount], all: &[Mount], root: &Path) -> Tree {
    let mut tree = Tree::new();
    for m in chosen {
        let source = m.source(root);
        let Ok(base) = std::fs::canonicalize(&source) else {
            continue;
        };
        // Mounts nested in this one are their own (selected or not).
        let nested: Vec<&str> = all
            .iter()
            .filter(|o| o.path != m.path && within(&o.path, &m.path))
            .map(|o| o.path.as_str())
            .collect();
        walk(&source, &base, &m.path, &nested, 0, &mut tree);
    }
    tree
}

fn walk(at: &Path, base: &Path, app: &str, nested: &[&str], depth: usize, tree: &mut Tree) {
    if depth > MAX_DEPTH || nested.contains(&app) {
        return;
    }
    let Ok(real) = std::fs::canonicalize(at) else {
        return;
    };
    if !real.starts_with(base) {
        return;
    }
    let Ok(meta) = std::fs::metadata(&real) else {
        return;
    };
    let entry = Entry {
        dir: meta.is_dir(),
        mode: meta.mode() & 0o7777,
        stamp: (
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
        ),
        size: if meta.is_dir() { 0 } else { meta.len() },
        hash: 0,
    };
    if !entry.dir && !meta.is_file() {
        return;
    }
    let is_dir = entry.dir;
    tree.insert(app.to_owned(), entry);
    if !is_dir {
        return;
    }
    let Ok(items) = std::fs::read_dir(&real) else {
        return;
    };
    for item in items.flatten() {
        let name = item.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        // `..data` and `..2024_01_01_...`: the atomic writer's own.
        if name.starts_with("..") {
            continue;
        }
        let child = format!("{}/{name}", app.trim_end_matches('/'));
        walk(&at.join(name), base, &child, nested, depth + 1, tree);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    fn mount(kind: &str, path: &str) -> Mount {
        Mount {
            path: path.into(),
            kind: kind.into(),
        }
    }

    /// A ConfigMap volume as the kubelet's atomic writer lays it out.
    fn configmap(dir: &Path, version: &str, files: &[(&str, &str)]) {
        let data = dir.join(format!("..{version}"));
        std::fs::create_dir_all(&data).unwrap();
        for (name, content) in files {
            std::fs::write(data.join(name), content).unwrap();
            let link = dir.join(name);
            if link.symlink_metadata().is_err() {
                symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
        let tmp = dir.join("..data_tmp");
        symlink(format!("..{version}"), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
    }

    fn events(rx: &mut mpsc::Receiver<Result<VolumesEvent, Status>>) -> Vec<Kind> {
        let mut out = Vec::new();
        loop {
            let e = rx.blocking_recv().unwrap().unwrap().kind.unwrap();
            let end = matches!(
                e,
                Kind::Synced(_) | Kind::Mounts(MountList { too_big: true, .. })
            );
            out.push(e);
            if end {
                return out;
            }
        }
    }

    fn files(events: &[Kind]) -> BTreeMap<String, (u32, Vec<u8>)> {
        let mut out: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
        for e in events {
            if let Kind::File(f) = e {
                let entry = out.entry(f.path.clone()).or_default();
                entry.0 = f.mode;
                entry.1.extend_from_slice(&f.data);
            }
        }
        out
    }

    #[test]
    fn lists_copies_and_follows_a_configmap_swap() {
        let root = tempfile::tempdir().unwrap();
        let cm = root.path().join("etc/config");
        configmap(&cm, "v1", &[("a.conf", "one"), ("b.conf", "two")]);
        std::fs::create_dir_all(root.path().join("data/sub")).unwrap();
        std::fs::write(root.path().join("data/sub/blob"), "x").unwrap();
        let secret = root.path().join("etc/tls/key");
        std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
        std::fs::write(&secret, "k").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o400)).unwrap();
        let mounts = vec![
            mount("configMap", "/etc/config"),
            mount("emptyDir", "/data"),
            // A subPath mount of one file.
            mount("secret", "/etc/tls/key"),
        ];
        let mut rx = serve(mounts, root.path().into(), VolumesRequest::default());
        let first = events(&mut rx);
        let Kind::Mounts(list) = &first[0] else {
            panic!("mounts first")
        };
        let copied: Vec<_> = list
            .mounts
            .iter()
            .map(|m| (m.path.as_str(), m.copied, m.files))
            .collect();
        assert_eq!(
            copied,
            [
                ("/etc/config", true, 2),
                ("/data", false, 0),
                ("/etc/tls/key", true, 1)
            ]
        );
        let got = files(&first);
        assert_eq!(got["/etc/config/a.conf"].1, b"one");
        assert_eq!(got["/etc/tls/key"], (0o400, b"k".to_vec()));
        assert!(!got.keys().any(|k| k.contains("..")), "{got:?}");
        assert!(
            first
                .iter()
                .any(|e| matches!(e, Kind::Dir(d) if d.path == "/etc/config"))
        );

        // The kubelet's update: a new version, `..data` swapped. Only the
        // changed file is sent; a key removed from the ConfigMap goes.
        let old = std::fs::read_link(cm.join("..data")).unwrap();
        configmap(&cm, "v2", &[("a.conf", "one"), ("b.conf", "TWO")]);
        std::fs::remove_dir_all(cm.join(old)).unwrap();
        let next = events(&mut rx);
        assert_eq!(
            files(&next).into_keys().collect::<Vec<_>>(),
            ["/etc/config/b.conf"]
        );
        assert_eq!(files(&next)["/etc/config/b.conf"].1, b"TWO");
        std::fs::remove_file(cm.join("a.conf")).unwrap();
        let next = events(&mut rx);
        assert!(
            matches!(&next[..], [Kind::Removed(r), Kind::Synced(_)] if r.path == "/etc/config/a.conf"),
            "{next:?}"
        );
    }

    #[test]
    fn data_mounts_when_included_and_the_size_limit() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("data")).unwrap();
        std::fs::write(root.path().join("data/big"), vec![7u8; 600 << 10]).unwrap();
        let mounts = vec![mount("persistentVolumeClaim", "/data")];
        let req = VolumesRequest {
            include: vec!["/data".into()],
            ..Default::default()
        };
        let mut rx = serve(mounts.clone(), root.path().into(), req.clone());
        let got = files(&events(&mut rx));
        assert_eq!(got["/data/big"].1.len(), 600 << 10);

        let small = VolumesRequest {
            max_size: 1000,
            ..req
        };
        let mut rx = serve(mounts, root.path().into(), small);
        let list = events(&mut rx);
        assert!(
            matches!(&list[..], [Kind::Mounts(MountList { too_big: true, mounts })]
            if mounts[0].bytes == 600 << 10)
        );
    }

    #[test]
    fn symlinks_out_of_the_mount_are_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "root").unwrap();
        let dir = root.path().join("cfg");
        std::fs::create_dir_all(&dir).unwrap();
        symlink(outside.path().join("passwd"), dir.join("escape")).unwrap();
        std::fs::write(dir.join("ok"), "1").unwrap();
        let mut rx = serve(
            vec![mount("configMap", "/cfg")],
            root.path().into(),
            VolumesRequest::default(),
        );
        let got = files(&events(&mut rx));
        assert_eq!(got.into_keys().collect::<Vec<_>>(), ["/cfg/ok"]);
    }
}
