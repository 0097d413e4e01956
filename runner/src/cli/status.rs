//! `tpr status`: the connection, context, namespace, install id, and each
//! intercept of this project with its state.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde_json::json;

use crate::project_file::ProjectArgs;
use crate::up::control::live_state;
use crate::up::state::StatePaths;
use crate::up::{install_id, run};

/// Output format of the read-only commands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(args: &StatusArgs) -> miette::Result<ExitCode> {
    let project = args.project.load()?;
    let paths = StatePaths::for_project(&args.project.file)?;
    let id = install_id::install_id()?;
    let (cluster, state) = super::block_on(async {
        let cluster = run::connect(&project).await;
        (cluster, live_state(&paths).await)
    });
    let namespace = project.cluster.namespace.clone().or_else(|| {
        cluster
            .as_ref()
            .ok()
            .map(|c| c.default_namespace().to_owned())
    });
    let (connected, context, url, error) = match &cluster {
        Ok(c) => (
            true,
            Some(c.context().to_owned()),
            Some(c.url().to_owned()),
            None,
        ),
        Err(e) => (
            false,
            project.cluster.context.clone(),
            None,
            Some(e.to_string()),
        ),
    };
    let intercepts = state
        .as_ref()
        .map(|s| s.intercepts.clone())
        .unwrap_or_default();
    // The processes' network (outbound namespaces), when tpr up runs.
    let outbound = state
        .as_ref()
        .and_then(|_| crate::outbound::read_state(&crate::outbound::state_path(&paths.file)));
    match args.output {
        Output::Json => {
            let v = json!({
                "cluster": {
                    "connected": connected,
                    "context": context,
                    "url": url,
                    "namespace": namespace,
                    "error": error,
                },
                "install_id": id,
                "running": state.as_ref().map(|s| s.pid),
                "intercepts": intercepts,
                "outbound": outbound,
            });
            println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
        }
        Output::Text => {
            match &cluster {
                Ok(c) => println!(
                    "Cluster    : connected to {} (context {})",
                    c.url(),
                    c.context()
                ),
                Err(e) => println!("Cluster    : not connected: {e}"),
            }
            println!("Namespace  : {}", namespace.as_deref().unwrap_or("-"));
            println!("Install id : {id}");
            match &state {
                None => match paths.read() {
                    Some(stale) => println!(
                        "tpr up     : not running; pid {} ended without cleaning up (its intercepts ended with it); `tpr down` clears its state",
                        stale.pid
                    ),
                    None => println!(
                        "tpr up     : not running for {}",
                        args.project.file.display()
                    ),
                },
                Some(s) => {
                    println!("tpr up     : running (pid {})", s.pid);
                    if s.intercepts.is_empty() {
                        println!("Intercepts : none");
                    }
                    for i in &s.intercepts {
                        let pods: Vec<&str> = i
                            .pods
                            .iter()
                            .filter(|p| p.state == "ACTIVE")
                            .map(|p| p.name.as_str())
                            .collect();
                        println!(
                            "Intercept  : {} {} {} in {} via pod{} {} [{}] {}",
                            i.name,
                            i.state,
                            i.workload,
                            i.namespace,
                            if pods.len() == 1 { "" } else { "s" },
                            if pods.is_empty() {
                                "-".to_owned()
                            } else {
                                pods.join(", ")
                            },
                            i.mechanism,
                            i.ports.join(", ")
                        );
                        for p in i.pods.iter().filter(|p| p.state != "ACTIVE") {
                            println!(
                                "             pod {} {}: {}",
                                p.name,
                                p.state,
                                p.detail.as_deref().unwrap_or("-")
                            );
                        }
                        if let Some(url) = &i.preview_url {
                            println!("             preview URL: {url}");
                        }
                        if let Some(root) = &i.volumes {
                            println!(
                                "             mounted files: {} (TELEPRESENCE_ROOT; a read-only copy of the pod's, kept current; writes stay local)",
                                root.display()
                            );
                        }
                    }
                    print_outbound(outbound.as_ref());
                }
            }
        }
    }
    if let Err(e) = cluster {
        return Err(e.into());
    }
    Ok(ExitCode::SUCCESS)
}

/// Each process's network: its outbound namespace and the agent it
/// egresses through, or the host's network.
fn print_outbound(outbound: Option<&crate::outbound::OutboundState>) {
    match outbound {
        None => println!("Network    : processes use this machine's network (outbound off)"),
        Some(o) if o.disabled.is_some() => println!(
            "Network    : processes use this machine's network (outbound unavailable: {})",
            o.disabled.as_deref().unwrap_or("-")
        ),
        Some(o) => {
            for s in &o.spaces {
                let namespace = match s.mode {
                    crate::outbound::Mode::Namespace => "namespace",
                    crate::outbound::Mode::UserNamespace => "user namespace (without root)",
                };
                println!(
                    "Network    : {} in an outbound {namespace} via intercept {} (pod {}): {} open connections, {} since start, {} DNS queries, {} failures",
                    if s.processes.is_empty() {
                        "tpr exec".to_owned()
                    } else {
                        s.processes.join(", ")
                    },
                    s.intercept,
                    s.pod.as_deref().unwrap_or("reconnecting"),
                    s.open_connections,
                    s.connections,
                    s.dns_queries,
                    s.failures
                );
            }
        }
    }
}
