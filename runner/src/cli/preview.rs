//! `tpr preview url|rotate NAME`: an intercept's preview link
//! (`[intercept.preview]`), and a new token for it.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use tpr_schema::{Intercept, Project};

use crate::project_file::ProjectArgs;
use crate::up::control::{Request, ask, live_state};
use crate::up::state::StatePaths;
use crate::up::{UpError, install_id, plan, preview, run};

/// The `preview` subcommands (their help: `Command::Preview` in cli/mod.rs).
#[derive(Args, Debug)]
#[command(subcommand_required = true, arg_required_else_help = true)]
pub struct PreviewArgs {
    #[command(subcommand)]
    pub command: PreviewCommand,
}

#[derive(Subcommand, Debug)]
pub enum PreviewCommand {
    /// Print an intercept's preview link.
    ///
    /// From the running `tpr up` of this project when there is one; else
    /// the link the next `tpr up` will use, worked out the same way (the
    /// file's `[intercept.preview.ingress]`, or the Ingress detected in the
    /// cluster, read only), with a note that it routes nowhere yet.
    Url(NameArgs),
    /// Give an intercept's preview a new token: the old link stops working.
    ///
    /// When `tpr up` runs for this project it registers the intercept again
    /// with the new token at once and prints the new link; otherwise the
    /// new token is used from the next `tpr up` (`tpr preview url NAME`
    /// prints the link).
    Rotate(NameArgs),
}

#[derive(Args, Debug)]
pub struct NameArgs {
    /// The intercept's name (as `tpr status` shows it).
    pub name: String,
    #[command(flatten)]
    pub project: ProjectArgs,
}

pub fn run(args: &PreviewArgs) -> miette::Result<ExitCode> {
    match &args.command {
        PreviewCommand::Url(a) => url(a),
        PreviewCommand::Rotate(a) => rotate(a),
    }
}

/// The intercept of the file with a preview, or why not.
fn previewed<'a>(project: &'a Project, name: &str) -> Result<&'a Intercept, UpError> {
    let Some(intercept) = project.intercept(name) else {
        return Err(UpError::UnknownIntercept {
            name: name.to_owned(),
            known: project.intercepts.iter().map(|i| i.name.clone()).collect(),
        });
    };
    if intercept.preview.is_none() {
        return Err(UpError::NoPreview {
            name: name.to_owned(),
        });
    }
    Ok(intercept)
}

fn url(args: &NameArgs) -> miette::Result<ExitCode> {
    let project = args.project.load()?;
    let intercept = previewed(&project, &args.name)?.clone();
    let paths = StatePaths::for_project(&args.project.file)?;
    let link = super::block_on(async {
        let live = live_state(&paths).await.and_then(|s| {
            s.intercepts
                .into_iter()
                .find(|i| i.name == intercept.name)
                .and_then(|i| i.preview_url)
        });
        if let Some(url) = live {
            return Ok::<_, UpError>((url, true));
        }
        let cluster = run::connect(&project).await?;
        let resolved = plan::resolve_intercept(&cluster, &project, &intercept).await?;
        let planned = preview::plan(&cluster, &intercept, &resolved)
            .await?
            .expect("the intercept has a preview");
        let token = preview::token(&install_id::install_id()?, &intercept.name)?;
        Ok((planned.url(&token), false))
    })?;
    println!("{}", link.0);
    if !link.1 {
        eprintln!(
            "tpr: tpr up is not running intercept {} for {}: until it does, the link reaches the cluster's app",
            intercept.name,
            args.project.file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn rotate(args: &NameArgs) -> miette::Result<ExitCode> {
    let project = args.project.load()?;
    let intercept = previewed(&project, &args.name)?;
    let paths = StatePaths::for_project(&args.project.file)?;
    preview::rotate(&install_id::install_id()?, &intercept.name)?;
    let answer = super::block_on(async {
        let live = live_state(&paths).await;
        let active = live
            .as_ref()
            .is_some_and(|s| s.intercepts.iter().any(|i| i.name == intercept.name));
        if !active {
            return Ok::<_, UpError>(None);
        }
        ask(
            &paths.socket,
            &Request::RotatePreview(intercept.name.clone()),
        )
        .await
    })?;
    match answer {
        Some(url) => {
            println!("{url}");
            eprintln!(
                "tpr: intercept {} has a new preview link (above); the old one no longer reaches this machine",
                intercept.name
            );
        }
        None => eprintln!(
            "tpr: intercept {} has a new preview token; tpr up is not running it, so it takes effect on the next `tpr up` (`tpr preview url {}` prints the link); the old link reaches nothing here",
            intercept.name, intercept.name
        ),
    }
    Ok(ExitCode::SUCCESS)
}
