//! `tpr down`: end this project's intercepts. With a running `tpr up`, asks
//! it to stop (its processes stop, its sessions end); after a crash, cleans
//! the state and checks with each agent that the session is gone.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use crate::k8s;
use crate::project_file::ProjectArgs;
use crate::up::UpError;
use crate::up::control::{Request, ask};
use crate::up::state::{State, StatePaths, pid_alive};

#[derive(Args, Debug)]
pub struct DownArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
}

pub fn run(args: &DownArgs) -> miette::Result<ExitCode> {
    let paths = StatePaths::for_project(&args.project.file)?;
    let Some(state) = paths.read() else {
        println!(
            "nothing to do: no tpr up is running for {}",
            args.project.file.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    super::block_on(down(&paths, state))?;
    Ok(ExitCode::SUCCESS)
}

async fn down(paths: &StatePaths, state: State) -> Result<(), UpError> {
    if pid_alive(state.pid) {
        let asked = ask(&paths.socket, &Request::Down)
            .await
            .ok()
            .flatten()
            .is_some();
        if !asked {
            // No answer on the socket: SIGTERM does the same (graceful stop).
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(state.pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let started = Instant::now();
        while pid_alive(state.pid) {
            if started.elapsed() > Duration::from_secs(30) {
                return Err(UpError::Remote(format!(
                    "tpr up (pid {}) did not stop in 30 s; stop it with Ctrl-C in its terminal or `kill {}`",
                    state.pid, state.pid
                )));
            }
            // Short: `tpr down` returning is what scripts wait for.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for i in &state.intercepts {
            println!("ended intercept {}", i.name);
        }
        println!("tpr up (pid {}) stopped", state.pid);
        paths.remove();
        return Ok(());
    }
    // tpr up crashed: its sessions ended when their keepalive stopped.
    paths.remove();
    confirm_gone(&state).await;
    Ok(())
}

/// Asks each agent whether it still holds the crashed session's intercepts.
async fn confirm_gone(state: &State) {
    let cluster = match k8s::Cluster::connect(&k8s::ClusterOptions {
        context: Some(state.context.clone()),
        ..Default::default()
    })
    .await
    {
        Ok(c) => c,
        Err(e) => {
            println!(
                "state cleaned; could not reach the cluster to confirm ({e}); agents end a silent session within 3 s"
            );
            return;
        }
    };
    for i in &state.intercepts {
        let Some(pod) = &i.pod else { continue };
        let agent = k8s::AgentPod {
            name: pod.clone(),
            namespace: i.namespace.clone(),
            grpc_port: k8s::DEFAULT_GRPC_PORT,
            ports: Vec::new(),
        };
        match crate::up::run::agent_health(&cluster, &agent).await {
            Ok(h) => {
                let ours = h
                    .intercepts
                    .iter()
                    .any(|x| x.name == i.name && x.holder.contains(&state.install_id));
                if ours {
                    println!(
                        "intercept {} is still held in pod {pod}; the agent ends it within 3 s of the lost session",
                        i.name
                    );
                } else {
                    println!(
                        "ended intercept {} (confirmed by the agent in pod {pod})",
                        i.name
                    );
                }
            }
            Err(e) => println!(
                "ended intercept {} (agent in pod {pod} not reachable to confirm: {e})",
                i.name
            ),
        }
    }
}
