//! The checks that need every intercept or process at once: duplicate
//! names, local ports used twice, `to_pod` collisions.

use std::collections::HashMap;

use crate::merge::{process_name, raw_intercept_name};
use crate::problem::{Problem, ProblemKind};
use crate::raw::{RawIntercept, RawProcess};
use crate::source::{FileId, Span};

/// The checks across intercepts: names, local ports, to_pod ports.
pub fn check_intercepts(raw: &[RawIntercept]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut names: HashMap<String, Span> = HashMap::new();
    let mut local: HashMap<u16, (Span, String)> = HashMap::new();
    for i in raw {
        let Some(name) = raw_intercept_name(i) else {
            continue;
        };
        let at = i
            .name
            .as_ref()
            .or(i.workload.as_ref())
            .map_or(i.span.clone(), |s| s.span.clone());
        if let Some(first) = names.get(&name) {
            let kind = ProblemKind::DuplicateInterceptName { name: name.clone() };
            problems.push(duplicate(kind, first, &at, "first named here"));
        } else {
            names.insert(name.clone(), at);
        }
        for port in i.port.iter().flat_map(|p| &p.value) {
            let p = port.value.local;
            if let Some((first, _)) = local.get(&p) {
                let kind = ProblemKind::DuplicateLocalPort { port: p };
                problems.push(duplicate(kind, first, &port.span, "first used here"));
            } else {
                local.insert(p, (port.span.clone(), name.clone()));
            }
        }
    }
    let mut to_pod: HashMap<u16, (Span, String)> = HashMap::new();
    for i in raw {
        let name = raw_intercept_name(i).unwrap_or_default();
        for port in i.to_pod.iter().flat_map(|p| &p.value) {
            let p = port.value;
            let clash = local
                .get(&p)
                .map(|(s, n)| {
                    (
                        s,
                        format!("the local port of intercept `{n}`"),
                        "local port",
                    )
                })
                .or_else(|| {
                    to_pod
                        .get(&p)
                        .map(|(s, n)| (s, format!("to_pod of intercept `{n}`"), "forwarded here"))
                });
            if let Some((first, other, label)) = clash {
                let kind = ProblemKind::ToPodCollision { port: p, other };
                problems
                    .push(Problem::new(kind, port.span.clone()).with_related(first.clone(), label));
            } else {
                to_pod.insert(p, (port.span.clone(), name.clone()));
            }
        }
    }
    problems
}

/// A problem about a second occurrence; when an override in the local file
/// caused it, it is reported there (the team file is fine on its own).
fn duplicate(kind: ProblemKind, first: &Span, again: &Span, label: &str) -> Problem {
    if first.file == FileId::Local && again.file == FileId::Team {
        Problem::new(kind, first.clone()).with_related(again.clone(), "and here")
    } else {
        Problem::new(kind, again.clone()).with_related(first.clone(), label)
    }
}

/// The checks across processes: duplicate names.
pub fn check_processes(raw: &[RawProcess]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut seen: HashMap<String, Span> = HashMap::new();
    for p in raw {
        let name = process_name(p);
        let at = p.name.as_ref().map_or(p.span.clone(), |n| n.span.clone());
        if let Some(first) = seen.get(&name) {
            let kind = ProblemKind::DuplicateProcessName { name };
            problems.push(duplicate(kind, first, &at, "first named here"));
        } else {
            seen.insert(name, at);
        }
    }
    problems
}
