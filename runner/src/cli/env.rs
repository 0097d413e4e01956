//! `tpr env NAME`: print an intercept's pod environment (the user asked for
//! it, so values go to stdout). Needs the agent installed (`tpr up` once).

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Args;
use tpr_schema::EnvFormat;
use tpr_schema::choice::Choice;

use crate::envfile;
use crate::k8s;
use crate::project_file::ProjectArgs;
use crate::up::{UpError, plan, run};

#[derive(Args, Debug)]
pub struct EnvArgs {
    /// The intercept's name in the file.
    pub name: String,
    /// dotenv | sh | sh-export | json | compose; default: the intercept's env.format.
    #[arg(long, value_parser = parse_format)]
    pub format: Option<EnvFormat>,
    #[command(flatten)]
    pub project: ProjectArgs,
}

fn parse_format(s: &str) -> Result<EnvFormat, String> {
    EnvFormat::from_name(s)
        .ok_or_else(|| format!("expected one of: {}", EnvFormat::NAMES.join(", ")))
}

pub fn run(args: &EnvArgs) -> miette::Result<ExitCode> {
    let project = args.project.load()?;
    let Some(intercept) = project.intercept(&args.name).cloned() else {
        return Err(UpError::UnknownIntercept {
            name: args.name.clone(),
            known: project.intercepts.iter().map(|i| i.name.clone()).collect(),
        }
        .into());
    };
    let env = super::block_on(async {
        let cluster = run::connect(&project).await?;
        let resolved = plan::resolve_intercept(&cluster, &project, &intercept).await?;
        let pod = k8s::find_agent_pod(&cluster, &resolved.workload).await?;
        let channel = crate::up::link_channel(&cluster, &pod).await?;
        crate::tunnel::get_env(channel)
            .await
            .map_err(|e| UpError::Agent {
                pod: pod.name.clone(),
                namespace: pod.namespace.clone(),
                source: e,
            })
    })?;
    let selected: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| intercept.env.selects(k))
        .collect();
    let rendered = envfile::render(&selected, args.format.unwrap_or(intercept.env.format));
    print!("{}", rendered.text);
    if !rendered.skipped.is_empty() {
        eprintln!(
            "tpr: left out (not expressible in this format): {}",
            rendered.skipped.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
