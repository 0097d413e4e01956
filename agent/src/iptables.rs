//! `tpr-agent init`: in the pod's network namespace, redirect each app port
//! to its agent port (numeric targetPorts and headless Services), except for
//! the agent's own connections (GID 7777) so it can still reach the app.
//! Idempotent: a dedicated `TPR_AGENT` chain is flushed and refilled, and the
//! jumps into it are added only when missing.

use std::path::Path;
use std::process::Command;

/// The image ships iptables here (docs/agent-contract.md).
pub const IPTABLES: &str = "/usr/sbin/iptables";
/// The agent's GID, exempt from the redirect.
pub const AGENT_GID: u32 = 7777;
const CHAIN: &str = "TPR_AGENT";

/// A failed iptables step.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The binary could not be started.
    #[error("cannot run {path}: {source} (the init container needs iptables and NET_ADMIN)")]
    Spawn {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// iptables refused a rule.
    #[error("`iptables {args}` failed: {stderr} (the init container needs NET_ADMIN)")]
    Rule { args: String, stderr: String },
}

pub fn init(iptables: &Path, redirects: &[(u16, u16)]) -> Result<(), InitError> {
    let run = |args: &[&str]| -> Result<bool, InitError> {
        let out = Command::new(iptables)
            .arg("-w")
            .args(["-t", "nat"])
            .args(args)
            .output()
            .map_err(|source| InitError::Spawn {
                path: iptables.display().to_string(),
                source,
            })?;
        if out.status.success() {
            return Ok(true);
        }
        // Exit status 1 answers a check (-C, -L) with "no".
        if out.status.code() == Some(1) && matches!(args.first(), Some(&"-C") | Some(&"-L")) {
            return Ok(false);
        }
        Err(InitError::Rule {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    };
    let must = |args: &[&str]| run(args).map(|_| ());

    if !run(&["-L", CHAIN, "-n"])? {
        must(&["-N", CHAIN])?;
    }
    must(&["-F", CHAIN])?;
    for (app, agent) in redirects {
        let (app, agent) = (app.to_string(), agent.to_string());
        must(&[
            "-A",
            CHAIN,
            "-p",
            "tcp",
            "--dport",
            &app,
            "-j",
            "REDIRECT",
            "--to-ports",
            &agent,
        ])?;
    }
    let gid = AGENT_GID.to_string();
    let jumps: [&[&str]; 2] = [
        &["PREROUTING", "-p", "tcp", "-j", CHAIN],
        &[
            "OUTPUT",
            "-p",
            "tcp",
            "-m",
            "owner",
            "!",
            "--gid-owner",
            &gid,
            "-j",
            CHAIN,
        ],
    ];
    for jump in jumps {
        let check: Vec<&str> = std::iter::once("-C").chain(jump.iter().copied()).collect();
        if !run(&check)? {
            let add: Vec<&str> = std::iter::once("-A").chain(jump.iter().copied()).collect();
            must(&add)?;
        }
    }
    Ok(())
}
