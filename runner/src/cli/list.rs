//! `tpr list`: the workloads of a namespace, whether each can be
//! intercepted (or why not), has the agent, and is intercepted by this
//! project's `tpr up`.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::status::Output;
use crate::k8s::{self, Cluster, ClusterOptions, Interceptable};
use crate::project_file::ProjectArgs;
use crate::up::UpError;
use crate::up::control::live_state;
use crate::up::state::StatePaths;

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// The namespace; default: the file's, else the context's.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(args: &ListArgs) -> miette::Result<ExitCode> {
    // The file is optional here: it gives the context and namespace.
    let project = args.project.load().ok();
    let context = project.as_ref().and_then(|p| p.cluster.context.clone());
    let paths = StatePaths::for_project(&args.project.file)?;
    let (namespace, rows, state, sessions) = super::block_on(async {
        let cluster = Cluster::connect(&ClusterOptions {
            context,
            ..Default::default()
        })
        .await?;
        let namespace = args
            .namespace
            .clone()
            .or_else(|| project.as_ref().and_then(|p| p.cluster.namespace.clone()))
            .unwrap_or_else(|| cluster.default_namespace().to_owned());
        let rows = k8s::list(&cluster, &namespace).await?;
        // Sessions on each agent: someone (here or elsewhere) intercepts it.
        let mut sessions = std::collections::BTreeMap::new();
        for w in k8s::workloads(&cluster, &namespace).await? {
            if !w.has_agent() {
                continue;
            }
            let count = async {
                let pod = k8s::find_agent_pod(&cluster, &w).await.ok()?;
                tokio::time::timeout(
                    std::time::Duration::from_secs(3),
                    crate::up::run::agent_health(&cluster, &pod),
                )
                .await
                .ok()?
                .ok()
            }
            .await;
            sessions.insert(w.display(), count);
        }
        let state = live_state(&paths).await;
        Ok::<_, UpError>((namespace, rows, state, sessions))
    })?;
    let health_of = |kind: &k8s::WorkloadKind, name: &str| {
        sessions.get(&format!("{kind}/{name}")).cloned().flatten()
    };
    let holders = |h: &tpr_schema::proto::HealthResponse| -> Vec<String> {
        let mut v: Vec<String> = h
            .intercepts
            .iter()
            .map(|i| format!("{} by {}", i.name, i.holder))
            .collect();
        v.dedup();
        v
    };
    let held_by_us = |workload: &str| -> Vec<String> {
        state
            .iter()
            .flat_map(|s| &s.intercepts)
            .filter(|i| i.namespace == namespace && i.workload == workload)
            .map(|i| i.name.clone())
            .collect()
    };
    let why = |i: &Interceptable| match i {
        Interceptable::Yes { .. } => None,
        Interceptable::No { reason } => Some(reason.clone()),
    };
    let services = |i: &Interceptable| match i {
        Interceptable::Yes { services } => services.clone(),
        Interceptable::No { .. } => Vec::new(),
    };
    match args.output {
        Output::Json => {
            let items: Vec<_> = rows
                .iter()
                .map(|w| {
                    json!({
                        "kind": w.kind.kind(),
                        "name": w.name,
                        "interceptable": why(&w.interceptable).is_none(),
                        "reason": why(&w.interceptable),
                        "services": services(&w.interceptable),
                        "agent_installed": w.agent_installed,
                        "ready": w.ready,
                        "replicas": w.replicas,
                        "intercepted_here": held_by_us(&format!("{}/{}", w.kind, w.name)),
                        "agent_sessions": health_of(&w.kind, &w.name).map(|h| h.sessions),
                        "intercepted_by": health_of(&w.kind, &w.name)
                            .map(|h| h.intercepts.iter().map(|i| json!({
                                "intercept": i.name,
                                "port": i.port,
                                "holder": i.holder,
                            })).collect::<Vec<_>>()),
                    })
                })
                .collect();
            let v = json!({ "namespace": namespace, "workloads": items });
            println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
        }
        Output::Text => {
            if rows.is_empty() {
                println!("no Deployment, ReplicaSet or StatefulSet in namespace {namespace}");
            }
            for w in &rows {
                let mut line = format!("{:<12} {:<28}", w.kind.kind(), w.name);
                match why(&w.interceptable) {
                    None => line.push_str(&format!(
                        " interceptable (service {})",
                        services(&w.interceptable).join(", ")
                    )),
                    Some(r) => line.push_str(&format!(" not interceptable: {r}")),
                }
                if w.agent_installed {
                    line.push_str(", agent installed");
                    match health_of(&w.kind, &w.name) {
                        Some(h) if h.intercepts.is_empty() => line.push_str(", not intercepted"),
                        Some(h) => {
                            line.push_str(&format!(", intercepted: {}", holders(&h).join("; ")))
                        }
                        None => line.push_str(", agent not reachable"),
                    }
                }
                let mine = held_by_us(&format!("{}/{}", w.kind, w.name));
                if !mine.is_empty() {
                    line.push_str(&format!(", intercepted here ({})", mine.join(", ")));
                }
                println!("{line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
