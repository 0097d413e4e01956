//! The contracts of tpr: the project file (`telepresence.toml`) and the
//! runner<->agent wire protocol. Pure types and validation: no I/O runtime,
//! no Kubernetes client.
//!
//! The project file goes through four steps, each its own module:
//! [`read`] (TOML → raw types, key and type checks), [`merge`] (personal
//! overrides), [`resolve`] (defaults, names, whole-file checks) and
//! [`diagnostic`] (problems → miette diagnostics).

pub mod choice;
mod crosscheck;
pub mod diagnostic;
pub mod merge;
pub mod names;
pub mod port;
pub mod problem;
pub mod project;
#[cfg(feature = "proto")]
pub mod proto;
pub mod raw;
pub mod read;
pub mod resolve;
pub mod source;
mod suggest;

use std::path::{Path, PathBuf};

use miette::Diagnostic;
use thiserror::Error;

pub use diagnostic::{FileProblem, Invalid};
pub use project::*;
pub use source::{FileId, LOCAL_FILE, SourceFile, TEAM_FILE};

/// Parses, merges, checks and resolves the team file and the optional local
/// file. `root` is the team file's directory (relative paths join it).
pub fn parse(
    team: &SourceFile,
    local: Option<&SourceFile>,
    root: &Path,
) -> Result<Project, Invalid> {
    let (team_raw, mut problems) = read::read_file(FileId::Team, &team.text);
    let mut raw = team_raw;
    if let Some(local) = local {
        let (local_raw, local_problems) = read::read_file(FileId::Local, &local.text);
        problems.extend(local_problems);
        raw = merge::merge(raw, local_raw);
    }
    // Whole-file checks on a file that did not parse would only add noise.
    if problems
        .iter()
        .any(|p| matches!(p.kind, problem::ProblemKind::Syntax { .. }))
    {
        return Err(Invalid::new(problems, team, local));
    }
    match resolve::resolve(raw, root) {
        Ok(project) if problems.is_empty() => Ok(project),
        Ok(_) => Err(Invalid::new(problems, team, local)),
        Err(more) => {
            // "Nothing to do" after a broken [[intercept]] is only an echo.
            let echo = |p: &problem::Problem| matches!(p.kind, problem::ProblemKind::NothingToDo);
            let reader_found_some = !problems.is_empty();
            problems.extend(more.into_iter().filter(|p| !(reader_found_some && echo(p))));
            Err(Invalid::new(problems, team, local))
        }
    }
}

/// Why the project could not be loaded.
#[derive(Debug, Error, Diagnostic)]
pub enum LoadError {
    /// The team file is missing or unreadable.
    #[error("cannot read {path}")]
    #[diagnostic(help("run tpr in the directory of telepresence.toml, or pass -f FILE"))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The local override file exists but cannot be read.
    #[error("cannot read {path}")]
    ReadLocal {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The files were read and have problems.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(#[from] Invalid),
}

/// Reads `path` and, if present, `telepresence.local.toml` beside it, then
/// [`parse`]s them.
pub fn load(path: &Path) -> Result<Project, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.into(),
        source,
    })?;
    let team = SourceFile::new(path.display().to_string(), text);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let local_path = dir.join(LOCAL_FILE);
    let local = match std::fs::read_to_string(&local_path) {
        Ok(text) => Some(SourceFile::new(local_path.display().to_string(), text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(LoadError::ReadLocal {
                path: local_path,
                source,
            });
        }
    };
    let root = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    Ok(parse(&team, local.as_ref(), &root)?)
}

/// The JSON Schema of `telepresence.toml`, pretty-printed with a final newline.
pub fn json_schema() -> String {
    // Draft 7: the draft that TOML editors (taplo, tombi) all understand.
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<raw::RawFile>().to_value();
    drop_null(&mut schema);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serialises");
    text.push('\n');
    text
}

/// TOML has no null (a key is present or absent), so the schema should not
/// offer it: schemars adds it for every `Option`.
fn drop_null(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(any)) = map.get_mut("anyOf") {
                any.retain(|s| s.get("type").is_none_or(|t| t != "null"));
                if any.len() == 1 {
                    let only = any.remove(0);
                    map.remove("anyOf");
                    if let Value::Object(inner) = only {
                        map.extend(inner);
                    }
                }
            }
            map.values_mut().for_each(drop_null);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null),
        _ => {}
    }
}
