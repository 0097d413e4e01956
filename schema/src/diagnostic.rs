//! Problems as miette diagnostics: file, line, column, snippet, help.

use std::fmt;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode};
use thiserror::Error;

use crate::problem::{Problem, ProblemKind};
use crate::source::{FileId, SourceFile};

/// One problem, located in its file.
#[derive(Debug)]
pub struct FileProblem {
    pub kind: ProblemKind,
    /// File name as shown (e.g. `./telepresence.toml`).
    pub file: String,
    /// 1-based line and column of the start of the span.
    pub line: usize,
    pub column: usize,
    /// Byte range in the file.
    pub span: std::ops::Range<usize>,
    source: NamedSource<Arc<str>>,
    labels: Vec<LabeledSpan>,
    help: Option<String>,
}

impl FileProblem {
    fn new(p: Problem, team: &SourceFile, local: Option<&SourceFile>) -> Self {
        let pick = |id: FileId| match (id, local) {
            (FileId::Local, Some(l)) => l,
            _ => team,
        };
        let src = pick(p.span.file);
        let (line, column) = src.line_col(p.span.range.start);
        let mut labels = vec![LabeledSpan::new_primary_with_span(
            Some(p.kind.label()),
            p.span.range.clone(),
        )];
        let mut help = p.kind.help();
        if let Some((span, label)) = p.related {
            if span.file == p.span.file {
                labels.push(LabeledSpan::new_with_span(Some(label), span.range));
            } else {
                // A snippet shows one file: name the other place in the help.
                let other = pick(span.file);
                let (l, c) = other.line_col(span.range.start);
                let note = format!("{label}: {}:{l}:{c}", other.name);
                help = Some(help.map_or(note.clone(), |h| format!("{h}\n{note}")));
            }
        }
        Self {
            kind: p.kind,
            file: src.name.clone(),
            line,
            column,
            span: p.span.range.clone(),
            source: NamedSource::new(src.name.clone(), src.text.clone()).with_language("toml"),
            labels,
            help,
        }
    }
}

impl FileProblem {
    /// What was expected, or how to fix it (also the diagnostic's help).
    pub fn help_text(&self) -> Option<&str> {
        self.help.as_deref()
    }
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.fmt(f)
    }
}

impl std::error::Error for FileProblem {}

impl Diagnostic for FileProblem {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        None
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(&self.source)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(self.labels.iter().cloned()))
    }
}

/// The project files have problems; nothing was done. Every problem found is
/// in [`Invalid::problems`], in file order.
#[derive(Debug, Error)]
#[error("{summary}")]
pub struct Invalid {
    summary: String,
    pub problems: Vec<FileProblem>,
}

impl Invalid {
    pub(crate) fn new(
        mut problems: Vec<Problem>,
        team: &SourceFile,
        local: Option<&SourceFile>,
    ) -> Self {
        problems.sort_by_key(|p| (p.span.file == FileId::Local, p.span.range.start));
        let problems: Vec<FileProblem> = problems
            .into_iter()
            .map(|p| FileProblem::new(p, team, local))
            .collect();
        let files = if problems.iter().any(|p| p.file != team.name) {
            format!(
                "{} and {}",
                team.name,
                local.map_or("", |l| l.name.as_str())
            )
        } else {
            team.name.clone()
        };
        let n = problems.len();
        let summary = format!("{files}: {n} problem{}", if n == 1 { "" } else { "s" });
        Self { summary, problems }
    }
}

impl Diagnostic for Invalid {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(
            "nothing was changed in the cluster; fix the file and run `tpr validate`",
        ))
    }
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(self.problems.iter().map(|p| p as &dyn Diagnostic)))
    }
}
