//! Printing errors on stderr: every problem of an invalid project as its own
//! diagnostic (file:line:column, snippet, help), then one summary line.

use std::fmt;

use miette::{Diagnostic, MietteHandlerOpts, ReportHandler};
use tpr_schema::{Invalid, LoadError};

/// Renders `report` for a terminal (or plainly when stderr is not one).
pub fn render(report: &miette::Report) -> String {
    let handler = MietteHandlerOpts::new().build();
    let Some(invalid) = invalid(report) else {
        return format!("{:?}", Show(report.as_ref(), &handler));
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

struct Show<'a>(&'a dyn Diagnostic, &'a dyn ReportHandler);

impl fmt::Debug for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.1.debug(self.0, f)
    }
}
