//! The pod's mounted files on the workstation (`TELEPRESENCE_ROOT`): a
//! ConfigMap (with `items` and a `subPath` mount), a Secret with
//! `defaultMode`, a downward-API volume, a projected service-account token
//! and the automounted one, an emptyDir that is listed but not copied; an
//! edited ConfigMap reaching the copy; modes and ownership; the size limit;
//! the copy removed after `down` and after a SIGKILL; `uninstall` restoring
//! the template with volumes exactly.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tpr_e2e::{Cluster, Result};

use crate::support::{ProjectDir, free_port};
use crate::{ACTIVE, UP, bare_project, template_json, text};

const YAML: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: app-config}
data: {a.conf: alpha, b.conf: beta, skipped.conf: not-listed}
---
apiVersion: v1
kind: Secret
metadata: {name: tls}
stringData: {tls.key: the-key}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello}
spec:
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      terminationGracePeriodSeconds: 1
      # The agent (uid 7777) reads Secret files of mode 0440 through the group.
      securityContext: {fsGroup: 2000}
      containers:
        - name: hello
          image: hello:0.1.0
          args: [serve]
          ports: [{name: http, containerPort: 8080}]
          volumeMounts:
            - {name: config, mountPath: /etc/app}
            - {name: whole, mountPath: /etc/one.conf, subPath: a.conf}
            - {name: tls, mountPath: /etc/tls, readOnly: true}
            - {name: podinfo, mountPath: /etc/podinfo}
            - {name: token, mountPath: /var/run/secrets/tokens}
            - {name: cache, mountPath: /cache}
      volumes:
        - name: config
          configMap:
            name: app-config
            items: [{key: a.conf, path: conf/a.conf}, {key: b.conf, path: b.conf}]
        - {name: whole, configMap: {name: app-config}}
        - name: tls
          secret: {secretName: tls, defaultMode: 288}  # 0440
        - name: podinfo
          downwardAPI:
            items:
              - {path: name, fieldRef: {fieldPath: metadata.name}}
              - {path: labels, fieldRef: {fieldPath: metadata.labels}}
        - name: token
          projected:
            sources:
              - serviceAccountToken: {path: token, audience: vault, expirationSeconds: 3600}
        - {name: cache, emptyDir: {}}
---
apiVersion: v1
kind: Service
metadata: {name: hello}
spec:
  selector: {app: hello}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

/// A process that records where the copy is and what it read there at its
/// start, then stays.
const PROCESS: &str = r#"
[[process]]
name = "reader"
command = ["sh", "-c", "printf %s \"$TELEPRESENCE_ROOT\" > root.txt; printf %s \"$TPR_ROOT\" > tpr-root.txt; cat \"$TELEPRESENCE_ROOT/etc/app/conf/a.conf\" > seen.txt; exec sleep 3600"]
env_from = "hello"
watch = ["src"]
"#;

async fn until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn read(root: &Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Every path under `dir`.
fn all(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            out.extend(all(&e.path()));
        }
    }
    out
}

pub async fn volumes(c: &Cluster, ns: &str) -> Result<()> {
    c.apply_yaml(YAML, Some(ns)).await?;
    c.wait_deployment(ns, "hello", crate::support::READY)
        .await?;
    let original = template_json(c, ns, "hello").await?;
    let port = free_port();
    let toml = format!(
        "{}{PROCESS}",
        bare_project(ns, "hello", &format!("{port}:http"), "")
    );
    let project = ProjectDir::new(&toml);
    let runtime = project.path().join(".home/run");
    std::fs::create_dir_all(&runtime)?;
    let env = [("XDG_RUNTIME_DIR", runtime.to_str().unwrap())];
    let mut up = project.up_env(&[], &env);
    up.wait_for(ACTIVE, UP).await;
    up.wait_for("not copied: /cache (emptyDir)", UP).await;

    // The process got the copy's path under both names, and the files were
    // there when it started.
    let root_file = project.path().join("root.txt");
    let root = PathBuf::from(
        until("the process to start", Duration::from_secs(30), || {
            std::fs::read_to_string(&root_file)
                .ok()
                .filter(|s| !s.is_empty())
        })
        .await,
    );
    assert!(root.starts_with(&runtime), "{}", root.display());
    assert_eq!(read(project.path(), "tpr-root.txt"), root.to_str().unwrap());
    until("seen.txt", Duration::from_secs(10), || {
        std::fs::read_to_string(project.path().join("seen.txt"))
            .ok()
            .filter(|s| !s.is_empty())
    })
    .await;
    assert_eq!(read(project.path(), "seen.txt"), "alpha");

    // ConfigMap with items: only the listed keys, at their paths; subPath.
    assert_eq!(read(&root, "etc/app/conf/a.conf"), "alpha");
    assert_eq!(read(&root, "etc/app/b.conf"), "beta");
    assert!(!root.join("etc/app/skipped.conf").exists());
    assert_eq!(read(&root, "etc/one.conf"), "alpha");
    // Secret with defaultMode; the tree is private and the user's.
    assert_eq!(read(&root, "etc/tls/tls.key"), "the-key");
    assert_eq!(mode(&root.join("etc/tls/tls.key")), 0o440);
    assert_eq!(mode(&root), 0o700);
    let me = std::fs::metadata(project.path())?.uid();
    for p in all(&root) {
        assert_eq!(std::fs::metadata(&p)?.uid(), me, "{}", p.display());
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".."),
            "kubelet internals copied: {}",
            p.display()
        );
    }
    // Downward API.
    let pods = c.ready_pods(ns, "app=hello").await?;
    let pod = pods[0].metadata.name.clone().unwrap_or_default();
    assert_eq!(read(&root, "etc/podinfo/name"), pod);
    assert!(read(&root, "etc/podinfo/labels").contains("app=\"hello\""));
    // The projected token and the automounted one.
    assert_eq!(
        read(&root, "var/run/secrets/tokens/token")
            .split('.')
            .count(),
        3
    );
    let sa = "var/run/secrets/kubernetes.io/serviceaccount";
    assert_eq!(read(&root, &format!("{sa}/namespace")), ns);
    assert_eq!(read(&root, &format!("{sa}/token")).split('.').count(), 3);
    // The emptyDir is listed, not copied.
    assert!(!root.join("cache").exists());

    // tpr status names the copy and says what it is.
    let status = project.tpr_env(&["status"], &env);
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(out.contains(root.to_str().unwrap()), "{}", text(&status));
    assert!(out.contains("read-only copy"), "{}", text(&status));

    // An edited ConfigMap reaches the copy as a whole new file (renamed
    // over the old one, so a reader never sees half of it).
    let b = root.join("etc/app/b.conf");
    let before = std::fs::metadata(&b)?.ino();
    c.apply_yaml(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-config}\ndata: {a.conf: alpha, b.conf: beta-2, skipped.conf: not-listed}\n",
        Some(ns),
    )
    .await?;
    // The kubelet updates ConfigMap volumes within its sync period.
    until(
        "the edited ConfigMap in the copy",
        Duration::from_secs(150),
        || (std::fs::read_to_string(&b).ok()? == "beta-2").then_some(()),
    )
    .await;
    assert_ne!(std::fs::metadata(&b)?.ino(), before);
    assert_eq!(read(&root, "etc/app/conf/a.conf"), "alpha");

    // tpr down removes the copy.
    let down = project.tpr_env(&["down"], &env);
    assert!(down.status.success(), "{}", text(&down));
    assert!(up.wait_exit(Duration::from_secs(30)).await.is_some());
    assert!(!root.exists(), "the copy is left after tpr down");

    // After a SIGKILL the copy stays until the next `tpr down` (or up).
    let mut up = project.up_env(&[], &env);
    up.wait_for(ACTIVE, UP).await;
    until("the copy", Duration::from_secs(30), || {
        root.join("etc/tls/tls.key").exists().then_some(())
    })
    .await;
    up.kill9();
    assert!(root.exists());
    let down = project.tpr_env(&["down"], &env);
    assert!(down.status.success(), "{}", text(&down));
    assert!(
        !root.exists(),
        "the copy is left after a SIGKILL and tpr down"
    );

    // The size limit: the error names the biggest mounts; nothing stays.
    // (The same project: the killed session may still hold the intercept
    // for a moment, which only its own install id may replace.)
    project.write(&format!(
        "{}{PROCESS}",
        bare_project(
            ns,
            "hello",
            &format!("{port}:http"),
            "[intercept.volumes]\nmax_size = \"10B\"\nexclude = [\"/var/run\"]"
        )
    ));
    let small = &project;
    std::fs::remove_file(project.path().join("root.txt"))?;
    let out = small.tpr_env(&["up"], &env);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_size"), "{}", text(&out));
    assert!(err.contains("/etc/app"), "{}", text(&out));
    assert!(
        !small.path().join("root.txt").exists(),
        "the process started"
    );
    let left: Vec<_> = std::fs::read_dir(runtime.join("tpr"))
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    assert!(
        left.iter().all(|e| !e.path().join(".tpr-root").exists()),
        "a copy is left: {left:?}"
    );

    // Uninstall restores the template, volumes and all, exactly.
    let out = project.tpr_env(&["uninstall", "hello"], &env);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(template_json(c, ns, "hello").await?, original);
    Ok(())
}
