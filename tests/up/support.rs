//! What the `tpr up` end-to-end tests share: the real `tpr` binary (built
//! once by cargo), a project directory with its own HOME (install id and
//! session state), a running `tpr up`, and a client pod in the cluster
//! that sends real requests (`hello get`, run by exec).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, PostParams};
use tokio::io::AsyncReadExt;
use tpr_e2e::{Cluster, Result, kubeconfig_path, repo_root};

pub const HELLO_IMAGE: &str = "hello:0.1.0";
pub const READY: Duration = Duration::from_secs(120);

/// The `tpr` binary of this workspace, built once per test run (so the
/// tests never run a stale one); `$TPR_BIN` names another.
pub fn tpr_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("TPR_BIN") {
            return PathBuf::from(bin);
        }
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "tpr", "--bin", "tpr"])
            .current_dir(repo_root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building tpr failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target"));
        target.join("debug/tpr")
    })
}

/// The example app's binary on this machine (the local process).
pub fn hello_bin() -> PathBuf {
    std::env::var_os("TPR_HELLO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/tpr-cluster/bin/hello"))
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A project directory with its own HOME, so the install id and the
/// session state belong to this test.
pub struct ProjectDir {
    pub dir: tempfile::TempDir,
    pub install_id: String,
    /// tpr runs as this uid (and gid), without root ([`Self::run_as`]).
    user: Option<u32>,
    kubeconfig: PathBuf,
}

impl ProjectDir {
    pub fn new(toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join("telepresence.toml"), with_agent_image(toml))
            .expect("write the file");
        // What the local process watches: quiet, unlike the directory itself.
        std::fs::create_dir(dir.path().join("src")).expect("src dir");
        ProjectDir {
            dir,
            install_id: format!("{:08x}-e2e0-4000-8000-000000000000", rand()),
            user: None,
            kubeconfig: kubeconfig_path(),
        }
    }

    /// Every `tpr` of this project runs as `uid` (gid the same, no
    /// supplementary groups), not root: the directory (its HOME and state
    /// with it) becomes the user's, with a copy of the kubeconfig (0600).
    pub fn run_as(mut self, uid: u32) -> Self {
        let kubeconfig = self.path().join("kubeconfig");
        std::fs::copy(kubeconfig_path(), &kubeconfig).expect("copy the kubeconfig");
        let chown = Command::new("chown")
            .args(["-R", &format!("{uid}:{uid}")])
            .arg(self.path())
            .status()
            .expect("chown runs");
        assert!(chown.success(), "chown of the project directory failed");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&kubeconfig, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the kubeconfig");
        self.user = Some(uid);
        self.kubeconfig = kubeconfig;
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, toml: &str) {
        std::fs::write(
            self.path().join("telepresence.toml"),
            with_agent_image(toml),
        )
        .expect("write the file");
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match self.user {
            None => Command::new(tpr_bin()),
            Some(uid) => {
                let mut setpriv = Command::new("setpriv");
                setpriv
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .args(["--clear-groups", "--"])
                    .arg(tpr_bin());
                setpriv
            }
        };
        let home = self.path().join(".home");
        cmd.args(args)
            .current_dir(self.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_STATE_HOME", home.join("state"))
            .env("TPR_INSTALL_ID", &self.install_id)
            .env_remove("TPR_FILE");
        cmd
    }

    /// Runs `tpr ARGS` to completion (killed after 3 minutes: a `tpr up`
    /// that should have failed must not hang the test).
    pub fn tpr(&self, args: &[&str]) -> Output {
        self.tpr_env(args, &[])
    }

    /// [`Self::tpr`] with extra environment variables.
    pub fn tpr_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let inner = self.command(args);
        let mut cmd = Command::new("timeout");
        cmd.arg("180")
            .arg(inner.get_program())
            .args(inner.get_args());
        if let Some(dir) = inner.get_current_dir() {
            cmd.current_dir(dir);
        }
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).output().expect("tpr runs")
    }

    /// Starts `tpr up` with output to files in the project directory.
    pub fn up(&self, args: &[&str]) -> Up {
        self.up_env(args, &[])
    }

    /// [`Self::up`] with extra environment variables.
    pub fn up_env(&self, args: &[&str], env: &[(&str, &str)]) -> Up {
        let out = self.path().join(format!("up-{}.out", rand()));
        let err = out.with_extension("err");
        let mut all = vec!["up"];
        all.extend_from_slice(args);
        let mut cmd = self.command(&all);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("tpr up starts");
        Up {
            child: Some(child),
            out,
            err,
        }
    }
}

/// `$TPR_E2E_AGENT_IMAGE`, when set, names the agent image in every test
/// project (e.g. an image under test imported with its own tag); else the
/// default `tpr-agent:<version>` that tests/cluster/load-images imports.
fn with_agent_image(toml: &str) -> String {
    match std::env::var("TPR_E2E_AGENT_IMAGE") {
        Ok(image) if !image.is_empty() && toml.contains("format_version") => {
            format!("{toml}\n[agent]\nimage = \"{image}\"\n")
        }
        _ => toml.to_owned(),
    }
}

fn rand() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u32
}

/// A running `tpr up`.
pub struct Up {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Up {
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits until stdout or stderr contains `text`; panics with both
    /// when `tpr up` exits first or the time runs out.
    pub async fn wait_for(&mut self, text: &str, timeout: Duration) {
        self.wait_for_n(text, 1, timeout).await
    }

    /// Waits until stdout and stderr contain `text` `n` times in all; panics
    /// with both when `tpr up` exits first or the time runs out.
    pub async fn wait_for_n(&mut self, text: &str, n: usize, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self.stdout().matches(text).count() + self.stderr().matches(text).count() >= n {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || start.elapsed() > timeout {
                panic!(
                    "tpr up {} before printing {text:?}\n--- stdout\n{}\n--- stderr\n{}",
                    match exited {
                        Some(s) => format!("exited ({s})"),
                        None => format!("still running after {timeout:?}"),
                    },
                    self.stdout(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for `tpr up` to exit; returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.as_mut()?.try_wait().ok().flatten() {
                self.child = None;
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Sends a signal by name (`INT`, `TERM`).
    pub fn signal(&self, name: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([format!("-{name}"), c.id().to_string()])
                .status();
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // SIGTERM: tpr up ends its sessions and stops its processes.
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some(c) = self.child.as_mut()
                    && c.try_wait().ok().flatten().is_some()
                {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            self.kill9();
        }
    }
}

/// A long-running pod in the namespace that sends requests with `hello get`.
pub struct ClientPod {
    api: Api<Pod>,
    name: String,
}

impl ClientPod {
    pub async fn start(c: &Cluster, ns: &str) -> Result<Self> {
        let api = Api::<Pod>::namespaced(c.client.clone(), ns);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "client"},
            "spec": {
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "client", "image": HELLO_IMAGE,
                    "imagePullPolicy": "IfNotPresent", "args": ["sleep"]}],
            },
        }))
        .expect("static pod");
        api.create(&PostParams::default(), &pod).await?;
        let pods = api.clone();
        tpr_e2e::wait_for(&format!("client pod in {ns}"), READY, || {
            let pods = pods.clone();
            async move {
                let p = pods.get("client").await?;
                Ok(p.status
                    .and_then(|s| s.phase)
                    .filter(|p| p == "Running")
                    .map(|_| ()))
            }
        })
        .await?;
        Ok(ClientPod {
            api,
            name: "client".into(),
        })
    }

    /// `hello get URL [-H k:v]...` in the pod: the body, or the error text.
    pub async fn get(&self, url: &str, headers: &[&str]) -> String {
        self.get_with(url, headers, &[]).await
    }

    /// `hello get URL [-H k:v]... ARGS...`: the output, or the error text.
    pub async fn get_with(&self, url: &str, headers: &[&str], args: &[&str]) -> String {
        let mut cmd = vec!["/hello".to_string(), "get".into(), url.into()];
        for h in headers {
            cmd.push("-H".into());
            cmd.push((*h).into());
        }
        cmd.extend(args.iter().map(|a| a.to_string()));
        let ap = AttachParams::default()
            .stdout(true)
            .stderr(true)
            .stdin(false);
        let mut proc = match self.api.exec(&self.name, cmd, &ap).await {
            Ok(p) => p,
            Err(e) => return format!("exec failed: {e}"),
        };
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = proc.stdout() {
            let _ = s.read_to_string(&mut out).await;
        }
        if let Some(mut s) = proc.stderr() {
            let _ = s.read_to_string(&mut err).await;
        }
        let _ = proc.join().await;
        out + &err
    }

    /// Asks until the answer contains `want` (traffic settles in seconds);
    /// returns the last answer and how long it took.
    pub async fn get_until(
        &self,
        url: &str,
        headers: &[&str],
        want: &str,
        timeout: Duration,
    ) -> (String, Duration) {
        let start = Instant::now();
        loop {
            let body = self.get(url, headers).await;
            if body.contains(want) || start.elapsed() > timeout {
                return (body, start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Deploys examples/hello (Deployment `hello`, Service `hello` port 80 ->
/// targetPort `http`) into `ns` and waits for it.
pub async fn deploy_hello(c: &Cluster, ns: &str) -> Result<()> {
    let dir = repo_root().join("examples/hello/k8s");
    c.apply_file(dir.join("deployment.yaml"), Some(ns)).await?;
    c.apply_file(dir.join("service.yaml"), Some(ns)).await?;
    c.wait_deployment(ns, "hello", READY).await
}

/// The `[[process]]` table running the local hello on `port`, answering
/// "hello from local".
pub fn local_hello(port: u16, env_from: &str) -> String {
    local_hello_as(port, env_from, "local")
}

/// [`local_hello`] answering "hello from WHO".
pub fn local_hello_as(port: u16, env_from: &str, who: &str) -> String {
    format!(
        "[[process]]\nname = \"local\"\ncommand = [\"{}\", \"serve\"]\nenv_from = \"{env_from}\"\nenv = {{ PORT = \"{port}\", HELLO_WHO = \"{who}\" }}\nwatch = [\"src\"]\n",
        hello_bin().display()
    )
}
