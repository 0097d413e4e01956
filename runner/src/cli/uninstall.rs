//! `tpr uninstall NAME... | --all`: remove the agent and put each
//! workload's pod template back exactly as it was.

use std::process::ExitCode;

use clap::Args;

use crate::k8s::{self, Cluster, ClusterOptions, RolloutOptions};
use crate::project_file::ProjectArgs;
use crate::up::{Display, UpError};

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["names", "all"]))]
pub struct UninstallArgs {
    /// Workloads to restore (`name`, or `kind/name` when names are shared).
    pub names: Vec<String>,
    /// Every workload of the namespace that has the agent.
    #[arg(long)]
    pub all: bool,
    /// The namespace; default: the file's, else the context's.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub project: ProjectArgs,
}

pub fn run(args: &UninstallArgs) -> miette::Result<ExitCode> {
    let project = args.project.load().ok();
    let context = project.as_ref().and_then(|p| p.cluster.context.clone());
    super::block_on(async {
        let cluster = Cluster::connect(&ClusterOptions {
            context,
            ..Default::default()
        })
        .await?;
        cluster.check().await?;
        let namespace = args
            .namespace
            .clone()
            .or_else(|| project.as_ref().and_then(|p| p.cluster.namespace.clone()))
            .unwrap_or_else(|| cluster.default_namespace().to_owned());
        let progress = Display::new();
        let opts = RolloutOptions::default();
        let outcomes = if args.all {
            k8s::uninstall_all(&cluster, &namespace, &opts, &progress).await
        } else {
            let mut out = Vec::new();
            for name in &args.names {
                let (kind, name) = match name.split_once('/') {
                    Some((k, n)) => (
                        Some(k.parse::<k8s::WorkloadKind>().map_err(UpError::Remote)?),
                        n,
                    ),
                    None => (None, name.as_str()),
                };
                match k8s::uninstall(&cluster, &namespace, name, kind, &opts, &progress).await {
                    Ok(o) => out.push(o),
                    Err(e) => {
                        progress.finish();
                        return Err(e.into());
                    }
                }
            }
            Ok(out)
        };
        progress.finish();
        let outcomes = outcomes?;
        if outcomes.is_empty() {
            println!("no workload in namespace {namespace} has the traffic agent");
        }
        for o in outcomes {
            if o.changed {
                println!("{}: agent removed, pod template restored", o.workload);
            } else {
                println!("{}: the agent was not installed; nothing to do", o.workload);
            }
        }
        Ok::<_, UpError>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
