//! Everything that can be wrong with a project file. Each problem carries the
//! span it is about; [`crate::Invalid`] turns them into miette diagnostics.

use thiserror::Error;

use crate::source::Span;

/// One thing wrong with a project file, at one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    /// Where the problem is; the diagnostic's main label.
    pub span: Span,
    /// Another place involved (e.g. the first of two duplicates).
    pub related: Option<(Span, String)>,
}

impl Problem {
    pub fn new(kind: ProblemKind, span: Span) -> Self {
        Self {
            kind,
            span,
            related: None,
        }
    }

    pub fn with_related(mut self, span: Span, label: impl Into<String>) -> Self {
        self.related = Some((span, label.into()));
        self
    }
}

/// What is wrong. The message says what was found; [`ProblemKind::help`] says
/// what was expected.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ProblemKind {
    /// The file is not valid TOML.
    #[error("TOML syntax: {message}")]
    Syntax { message: String },
    /// A key that the format does not define (keys are never ignored, so a
    /// typo cannot silently change nothing).
    #[error("unknown key `{key}` in {table}")]
    UnknownKey {
        key: String,
        table: String,
        expected: Vec<&'static str>,
        suggestion: Option<&'static str>,
    },
    /// A value of the wrong TOML type.
    #[error("`{key}` must be {expected}, found {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    /// A required key is absent.
    #[error("{table} has no `{key}`")]
    MissingKey {
        key: &'static str,
        table: String,
        example: &'static str,
    },
    /// A string that must be one of a fixed set of names.
    #[error("unknown {key} `{value}`")]
    UnknownChoice {
        key: String,
        value: String,
        expected: &'static [&'static str],
        suggestion: Option<&'static str>,
    },
    /// A port number outside 1..=65535.
    #[error("port {value} is out of range")]
    PortOutOfRange { value: i64 },
    /// A number outside the range its key allows.
    #[error("`{key}` is {value}, outside {min}..={max}")]
    OutOfRange {
        key: String,
        value: i64,
        min: i64,
        max: i64,
    },
    /// An intercept port that is not `LOCAL` or `LOCAL:SERVICE_PORT`.
    #[error("invalid port `{spec}`: {reason}")]
    InvalidPortSpec { spec: String, reason: String },
    /// A Kubernetes name (workload, namespace, service, port name...) that
    /// Kubernetes would reject.
    #[error("invalid {what} `{value}`: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// Any other value that has the right type but a wrong form.
    #[error("invalid `{key}`: {reason}")]
    InvalidValue {
        key: String,
        reason: String,
        expected: String,
    },
    /// `format_version` newer (or older) than this tpr reads.
    #[error("format_version {found} is not supported")]
    UnsupportedFormatVersion { found: i64, supported: u32 },
    /// Two intercepts resolve to one name.
    #[error("two intercepts are named `{name}`")]
    DuplicateInterceptName { name: String },
    /// One local port receives two intercepted ports.
    #[error("local port {port} is used twice")]
    DuplicateLocalPort { port: u16 },
    /// A `to_pod` port that is also the local port of an intercept, or that
    /// another intercept already forwards.
    #[error("to_pod port {port} collides with {other}")]
    ToPodCollision { port: u16, other: String },
    /// `env_from` names an intercept that the file does not have.
    #[error("env_from names no intercept: `{name}`")]
    UnknownEnvFrom {
        name: String,
        known: Vec<String>,
        suggestion: Option<String>,
    },
    /// A process whose command has no program.
    #[error("the command of process `{process}` is empty")]
    EmptyCommand { process: String },
    /// Two processes with one name.
    #[error("two processes are named `{name}`")]
    DuplicateProcessName { name: String },
    /// HTTP match settings on an intercept whose mechanism is tcp.
    #[error("`http` settings on an intercept with mechanism `tcp`")]
    HttpWithoutHttpMechanism,
    /// `[intercept.preview]` on an intercept whose mechanism is tcp.
    #[error("a preview needs mechanism = \"http\"; this intercept is tcp{}", if *explicit { "" } else { " (the default)" })]
    PreviewWithoutHttpMechanism { explicit: bool },
    /// A file with neither intercepts nor processes does nothing.
    #[error("nothing to do: no [[intercept]] and no [[process]]")]
    NothingToDo,
}

impl ProblemKind {
    /// The short label under the offending snippet.
    pub fn label(&self) -> String {
        use ProblemKind::*;
        match self {
            Syntax { .. } => "here".into(),
            UnknownKey { .. } => "unknown key".into(),
            WrongType { found, .. } => format!("this is {found}"),
            MissingKey { key, .. } => format!("no `{key}` in this table"),
            UnknownChoice { expected, .. } => format!("expected one of: {}", expected.join(", ")),
            PortOutOfRange { .. } | OutOfRange { .. } => "out of range".into(),
            InvalidPortSpec { .. } => "not LOCAL[:SERVICE_PORT]".into(),
            InvalidName { .. } | InvalidValue { .. } => "invalid".into(),
            UnsupportedFormatVersion { .. } => "unsupported version".into(),
            DuplicateInterceptName { .. } | DuplicateProcessName { .. } => {
                "named again here".into()
            }
            DuplicateLocalPort { .. } => "used again here".into(),
            ToPodCollision { .. } => "collides".into(),
            UnknownEnvFrom { .. } => "no such intercept".into(),
            EmptyCommand { .. } => "no program to run".into(),
            HttpWithoutHttpMechanism => "contradicts mechanism = \"tcp\"".into(),
            PreviewWithoutHttpMechanism { .. } => "a preview of a tcp intercept".into(),
            NothingToDo => "empty project".into(),
        }
    }

    /// What was expected, or how to fix it.
    pub fn help(&self) -> Option<String> {
        use ProblemKind::*;
        Some(match self {
            Syntax { .. } => return None,
            UnknownKey { suggestion: Some(s), .. } => format!("did you mean `{s}`?"),
            UnknownKey { expected, .. } => format!("expected one of: {}", expected.join(", ")),
            WrongType { .. } => return None,
            MissingKey { example, .. } => format!("add it, e.g. {example}"),
            UnknownChoice { suggestion: Some(s), .. } => format!("did you mean `{s}`?"),
            UnknownChoice { expected, .. } => format!("expected one of: {}", expected.join(", ")),
            PortOutOfRange { .. } => "a port is a number from 1 to 65535".into(),
            OutOfRange { min, max, .. } => format!("use a number from {min} to {max}"),
            InvalidPortSpec { .. } => {
                "write LOCAL or LOCAL:SERVICE_PORT, e.g. \"8080\", \"8080:http\" or \"8080:80\"".into()
            }
            InvalidName { .. } => {
                "use lowercase letters, digits and '-', starting and ending with a letter or digit".into()
            }
            InvalidValue { expected, .. } => expected.clone(),
            UnsupportedFormatVersion { supported, .. } => {
                format!("this tpr reads format_version = {supported}; upgrade tpr for newer files")
            }
            DuplicateInterceptName { .. } => {
                "intercept names must be unique: set an explicit `name` on one of them".into()
            }
            DuplicateLocalPort { .. } => "each intercepted port needs a local port of its own".into(),
            ToPodCollision { .. } => {
                "tpr listens on localhost for each to_pod port: pick a port nothing else uses".into()
            }
            UnknownEnvFrom { suggestion: Some(s), .. } => format!("did you mean `{s}`?"),
            UnknownEnvFrom { known, .. } if known.is_empty() => {
                "the file has no intercept: remove env_from or add an [[intercept]]".into()
            }
            UnknownEnvFrom { known, .. } => format!("intercepts: {}", known.join(", ")),
            EmptyCommand { .. } => "give the program and its arguments, e.g. command = [\"go\", \"run\", \".\"]".into(),
            DuplicateProcessName { .. } => "process names must be unique: set `name` on each process".into(),
            HttpWithoutHttpMechanism => {
                "`http` settings imply mechanism = \"http\": drop mechanism = \"tcp\", or remove the `http` settings".into()
            }
            PreviewWithoutHttpMechanism { explicit: true } => {
                "a tcp intercept takes every connection, so there is nothing for a link to select: \
                 set mechanism = \"http\" (only requests carrying the preview token, or your id header, come here), \
                 or remove [intercept.preview]".into()
            }
            PreviewWithoutHttpMechanism { explicit: false } => {
                "add mechanism = \"http\" to the intercept (only requests carrying the preview token, \
                 or your id header, come here; the rest stays with the cluster), or remove [intercept.preview]".into()
            }
            NothingToDo => "add an [[intercept]] (a workload to route to this machine) or a [[process]] (a command to run)".into(),
        })
    }
}
