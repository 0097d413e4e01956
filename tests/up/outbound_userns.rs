//! Outbound without root: `tpr up` run by an unprivileged user puts its
//! process in a network namespace inside a user namespace, held by a
//! helper process, and everything works as with root: the process reaches
//! a Service by name through the agent (the server sees the intercepted
//! pod's IP), keeps its own uid, gets the intercepted traffic; `tpr exec`
//! and `tpr status` (as the same user) see the namespace; a SIGKILL of
//! `tpr up` leaves no helper behind.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tpr_e2e::{Cluster, Result};

use crate::support::{ClientPod, ProjectDir, deploy_hello, free_port, hello_bin};
use crate::{ACTIVE, UP, text};

/// The unprivileged user (nobody).
const USER: u32 = 65534;

/// /dev/net/tun open to every user while it lives, as udev makes it on
/// most distributions (a user namespace's TUN device needs it). A machine
/// whose devtmpfs left it 0600 gets its mode back after.
struct TunOpenToUsers {
    restore: Option<u32>,
}

impl TunOpenToUsers {
    fn ensure() -> Self {
        const TUN: &str = "/dev/net/tun";
        let mode = std::fs::metadata(TUN).expect(TUN).permissions().mode() & 0o777;
        if mode & 0o066 == 0o066 {
            return TunOpenToUsers { restore: None };
        }
        eprintln!("{TUN} is {mode:o}: 0666 for this test, as udev sets it");
        std::fs::set_permissions(TUN, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        TunOpenToUsers {
            restore: Some(mode),
        }
    }
}

impl Drop for TunOpenToUsers {
    fn drop(&mut self) {
        if let Some(mode) = self.restore {
            let _ = std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(mode));
        }
    }
}

/// A process as /proc shows it.
#[derive(Debug)]
struct Proc {
    pid: String,
    uid: Option<u32>,
    argv: Vec<String>,
}

impl Proc {
    fn all() -> Vec<Proc> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_string_lossy().into_owned();
                pid.parse::<u32>().ok()?;
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let uid = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|ids| ids.split_whitespace().next()?.parse().ok());
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let argv = cmdline
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                Some(Proc { pid, uid, argv })
            })
            .collect()
    }

    /// One of tpr's: argv[0] `tpr` (how tpr starts its shims and its
    /// helper) or the binary itself.
    fn is_tpr(&self) -> bool {
        let exe = std::fs::read_link(format!("/proc/{}/exe", self.pid));
        self.argv.first().is_some_and(|a| a == "tpr")
            || exe.is_ok_and(|e| e.file_name() == Some(std::ffi::OsStr::new("tpr")))
    }

    fn is_helper(&self) -> bool {
        self.argv.get(1).is_some_and(|a| a == "__tpr-netns-hold")
    }
}

fn user_ns(pid: &str) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/user")).ok()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub async fn unprivileged(c: &Cluster, ns: &str) -> Result<()> {
    let _tun = TunOpenToUsers::ensure();
    deploy_hello(c, ns).await?;
    c.apply_yaml(super::outbound::WEB, Some(ns)).await?;
    c.wait_deployment(ns, "web", crate::support::READY).await?;
    let client = ClientPod::start(c, ns).await?;

    // The process says who it is and what `web` sees of it, then serves.
    let port = free_port();
    let project = ProjectDir::new(&format!(
        "format_version = 1\n[cluster]\nnamespace = \"{ns}\"\n[[intercept]]\nworkload = \"hello\"\nport = \"{port}:http\"\n\
         [[process]]\nname = \"local\"\nenv_from = \"hello\"\nwatch = [\"src\"]\nenv = {{ PORT = \"{port}\", HELLO_WHO = \"local\" }}\n\
         command = [\"sh\", \"-c\", \"printf 'uid=%s\\n' $(id -u); until p=$(curl -sS --max-time 5 http://web/peer); do sleep 1; done; printf 'peer=%s\\n' $p; exec {} serve\"]\n",
        hello_bin().display()
    ))
    .run_as(USER);
    let mut up = project.up(&[]);
    up.wait_for(ACTIVE, UP).await;
    up.wait_for(
        "outbound namespace of intercept hello ready (in a user namespace, without root)",
        UP,
    )
    .await;
    up.wait_for("process local started", UP).await;

    // Through the agent: `web` sees the intercepted pod's address.
    let pods = c.ready_pods(ns, "app=hello").await?;
    let source = pods
        .first()
        .and_then(|p: &Pod| p.status.as_ref()?.pod_ip.clone())
        .expect("a ready hello pod");
    // (printf: the command line, which tpr shows, never holds the text.)
    up.wait_for(&format!("peer={source}\n"), Duration::from_secs(60))
        .await;
    let out = up.stdout();
    assert!(out.contains(&format!("uid={USER}\n")), "{out}");

    // The intercepted port reaches the process on its namespace's localhost.
    let (body, _) = client
        .get_until(
            &format!("http://hello.{ns}/"),
            &[],
            "hello from local",
            Duration::from_secs(30),
        )
        .await;
    assert!(body.contains("hello from local"), "{body}\n{}", up.stderr());

    // `tpr exec` as the same user joins the same namespaces.
    let out = project.tpr(&[
        "exec",
        "--",
        "sh",
        "-c",
        "id -u; curl -sS --max-time 20 http://web/peer",
    ]);
    assert_eq!(stdout(&out), format!("{USER}\n{source}"), "{}", text(&out));

    // `tpr status` tells the mode.
    let out = project.tpr(&["status", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let space = &v["outbound"]["spaces"][0];
    assert_eq!(space["mode"], "user_namespace", "{}", text(&out));
    assert!(space["paths"]["user"].is_string(), "{}", text(&out));
    let out = project.tpr(&["status"]);
    assert!(
        stdout(&out).contains(
            "Network    : local in an outbound user namespace (without root) via intercept hello"
        ),
        "{}",
        text(&out)
    );

    // The helper and the process: the user's, the process in the helper's
    // user namespace, not this one.
    let procs = Proc::all();
    let helpers: Vec<&Proc> = procs
        .iter()
        .filter(|p| p.uid == Some(USER) && p.is_helper())
        .collect();
    assert_eq!(helpers.len(), 1, "one helper per namespace");
    let helper = helpers[0].pid.clone();
    let hello = hello_bin().display().to_string();
    let local = procs
        .iter()
        .find(|p| p.uid == Some(USER) && p.argv == [hello.as_str(), "serve"])
        .unwrap_or_else(|| {
            let mine: Vec<_> = procs.iter().filter(|p| p.uid == Some(USER)).collect();
            panic!("no local process ({hello} serve) among the user's: {mine:?}")
        });
    assert_eq!(local.uid, Some(USER));
    assert_eq!(user_ns(&local.pid), user_ns(&helper));
    assert_ne!(user_ns(&local.pid), user_ns("self"));
    let local = local.pid.clone();

    // SIGKILL: no process of the user's tpr is left, the helper included,
    // nor the process.
    up.kill9();
    let gone = tpr_e2e::wait_for(
        "tpr's processes of the user gone",
        Duration::from_secs(15),
        || {
            let done = left_behind(&helper, &local).is_empty();
            async move { Ok(done.then_some(())) }
        },
    )
    .await;
    assert!(
        gone.is_ok(),
        "still there: {:?}",
        left_behind(&helper, &local)
    );
    Ok(())
}

/// The user's tpr processes, the helper `helper` and the process `local`,
/// as far as they are still running.
fn left_behind(helper: &str, local: &str) -> Vec<String> {
    Proc::all()
        .into_iter()
        .filter(|p| (p.uid == Some(USER) && p.is_tpr()) || p.pid == helper || p.pid == local)
        .map(|p| format!("{} {:?}", p.pid, p.argv))
        .collect()
}
