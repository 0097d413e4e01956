//! Printing errors on stderr: every problem of an invalid project as its own
//! diagnostic (file:line:column, snippet, help), then one summary line; any
//! other error with its causes, each said once.

use std::error::Error;
use std::fmt;

use miette::{Diagnostic, LabeledSpan, MietteHandlerOpts, ReportHandler, Severity, SourceCode};
use tpr_schema::{Invalid, LoadError};

/// Renders `report` for a terminal (or plainly when stderr is not one).
pub fn render(report: &miette::Report) -> String {
    let handler = MietteHandlerOpts::new().build();
    let Some(invalid) = invalid(report) else {
        return format!("{:?}", Show(&CausesOnce::new(report.as_ref()), &handler));
    };
    let mut out = String::new();
    for problem in &invalid.problems {
        out.push_str(&format!("{:?}\n", Show(problem, &handler)));
    }
    out.push_str(&format!("error: {invalid}; nothing was done\n"));
    out
}

/// The problems of an invalid project, if that is what `report` is.
pub fn invalid(report: &miette::Report) -> Option<&Invalid> {
    match report.downcast_ref::<LoadError>() {
        Some(LoadError::Invalid(invalid)) => Some(invalid),
        _ => report.downcast_ref::<Invalid>(),
    }
}

/// The causes of `error` (not itself), each once: a cause whose text an
/// earlier message already includes (`"{what}: {source}"` errors) is left
/// out.
pub fn new_causes(error: &dyn Error) -> Vec<String> {
    let mut said = vec![error.to_string()];
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !said.iter().any(|s| s.contains(&text)) {
            said.push(text);
        }
        next = cause.source();
    }
    said.split_off(1)
}

struct Show<'a>(&'a dyn Diagnostic, &'a dyn ReportHandler);

impl fmt::Debug for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.1.debug(self.0, f)
    }
}

/// A diagnostic as is, but with the cause chain of [`new_causes`].
struct CausesOnce<'a> {
    inner: &'a dyn Diagnostic,
    causes: Option<Box<Cause>>,
}

#[derive(Debug)]
struct Cause {
    text: String,
    next: Option<Box<Cause>>,
}

impl<'a> CausesOnce<'a> {
    fn new(inner: &'a dyn Diagnostic) -> Self {
        let causes = new_causes(inner)
            .into_iter()
            .rev()
            .fold(None, |next, text| Some(Box::new(Cause { text, next })));
        CausesOnce { inner, causes }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.next.as_deref().map(|c| c as &(dyn Error + 'static))
    }
}

impl fmt::Debug for CausesOnce<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.inner, f)
    }
}

impl fmt::Display for CausesOnce<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.inner, f)
    }
}

impl Error for CausesOnce<'_> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.causes.as_deref().map(|c| c as &(dyn Error + 'static))
    }
}

impl Diagnostic for CausesOnce<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.inner.code()
    }
    fn severity(&self) -> Option<Severity> {
        self.inner.severity()
    }
    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.inner.help()
    }
    fn url<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.inner.url()
    }
    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.inner.source_code()
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.inner.labels()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error, Diagnostic)]
    #[error("{what}: {source}")]
    #[diagnostic(help("do this"))]
    struct Outer {
        what: &'static str,
        #[source]
        source: Middle,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen on 127.0.0.1:6379: {source}")]
    struct Middle {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn a_chain_that_repeats_its_causes_says_each_once() {
        let io = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let cause = io.to_string();
        let report = miette::Report::new(Outer {
            what: "on this workstation",
            source: Middle { source: io },
        });
        let text = render(&report);
        assert_eq!(
            text.matches("cannot listen on 127.0.0.1:6379").count(),
            1,
            "{text}"
        );
        assert_eq!(text.matches(&cause).count(), 1, "{text}");
        assert!(text.contains("on this workstation"), "{text}");
        assert!(text.contains("do this"), "{text}");
    }

    #[test]
    fn causes_not_said_before_are_kept() {
        let report = miette::Report::msg("inner cause").wrap_err("outer");
        let text = render(&report);
        assert!(
            text.contains("outer") && text.contains("inner cause"),
            "{text}"
        );
    }
}
