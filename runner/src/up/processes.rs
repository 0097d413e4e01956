//! The local processes of the project, with the environment of their
//! `env_from` intercept: the file's extra env over the imported env
//! (include/exclude applied) over the user's own.

use std::collections::BTreeMap;
use std::time::Duration;

use tpr_schema::{OnExit, Project};

use crate::session_loop::Readiness;
use crate::supervise::{Backoff, EnvFilter, ProcessSpec, env_merge, own_env, parse_signal};

use super::UpError;

/// The process specs for `project`, given each intercept's imported env.
pub fn specs(
    project: &Project,
    envs: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<Vec<ProcessSpec>, UpError> {
    let own = own_env();
    let none = BTreeMap::new();
    project
        .processes
        .iter()
        .map(|p| {
            let (imported, filter) = match p.env_from.as_deref().and_then(|n| project.intercept(n))
            {
                Some(i) => (
                    envs.get(&i.name).unwrap_or(&none),
                    EnvFilter {
                        include: i.env.include.clone(),
                        exclude: i.env.exclude.clone(),
                    },
                ),
                None => (&none, EnvFilter::default()),
            };
            let mut spec = ProcessSpec::new(p.name.clone(), p.command.clone(), p.workdir.clone());
            spec.env = env_merge(&own, imported, &p.env, &filter)?;
            // The copy of the pod's mounted files, while the intercept is up
            // (its copy exists then).
            if let Some(i) = p.env_from.as_deref().and_then(|n| project.intercept(n))
                && envs.contains_key(&i.name)
            {
                for (k, v) in super::volumes::env_of(project, i) {
                    spec.env.entry(k).or_insert(v);
                }
            }
            spec.watch = p.watch.clone();
            spec.ignore = p.ignore.clone();
            spec.debounce = p.debounce();
            spec.stop_signal = parse_signal(&p.stop_signal.to_string())
                .expect("the file's stop signals are all known");
            spec.stop_timeout = p.stop_timeout();
            spec.ready = p.ready.as_ref().map(|r| Readiness {
                port: r.port,
                path: r.path.clone(),
            });
            spec.restart_on_exit = (p.on_exit == OnExit::Restart).then_some(Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(10),
            });
            Ok(spec)
        })
        .collect()
}

/// Whether `tpr up` ends when a process exits (`on_exit = "stop"`).
pub fn stops_on_exit(project: &Project) -> bool {
    project.processes.iter().any(|p| p.on_exit == OnExit::Stop)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_process_gets_its_intercepts_env_filtered_under_its_own_extra_env() {
        let text = "format_version = 1\n[[intercept]]\nworkload = \"a\"\nport = \"1\"\nenv.exclude = [\"SECRET*\"]\n[[process]]\ncommand = [\"x\"]\nenv = { PORT = \"1\" }\n";
        let team = tpr_schema::SourceFile::new("telepresence.toml".to_string(), text.to_string());
        let project = tpr_schema::parse(&team, None, Path::new("/p")).expect("valid");
        let pod: BTreeMap<String, String> = [("PORT", "8080"), ("DB", "pg"), ("SECRET_KEY", "k")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let envs = BTreeMap::from([("a".to_string(), pod)]);
        let spec = &specs(&project, &envs).expect("specs")[0];
        assert_eq!(spec.env.get("DB").map(String::as_str), Some("pg"));
        assert_eq!(spec.env.get("PORT").map(String::as_str), Some("1"));
        assert!(!spec.env.contains_key("SECRET_KEY"));
        // The user's own environment is the bottom layer.
        assert!(spec.env.contains_key("PATH") || std::env::var_os("PATH").is_none());
    }
}
