//! The environment a process starts with: the file's extra env over the
//! imported (pod) env over the user's own, with include/exclude patterns
//! applied to the imported env only.

use std::collections::BTreeMap;

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::Error;

/// Which imported variables to keep: a name is kept when it matches one of
/// `include` (or `include` is empty) and none of `exclude`. Patterns are
/// globs (`AWS_*`, `*_TOKEN`), matched case-sensitively against the name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvFilter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// Merges the three layers. Pure: the caller passes its own environment
/// (see [`own_env`]) so tests never touch the real one.
pub fn env_merge(
    own: &BTreeMap<String, String>,
    imported: &BTreeMap<String, String>,
    extra: &BTreeMap<String, String>,
    filter: &EnvFilter,
) -> Result<BTreeMap<String, String>, Error> {
    let include = glob_set(&filter.include)?;
    let exclude = glob_set(&filter.exclude)?;
    let mut merged = own.clone();
    for (name, value) in imported {
        let included = filter.include.is_empty() || include.is_match(name);
        if included && !exclude.is_match(name) {
            merged.insert(name.clone(), value.clone());
        }
    }
    merged.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(merged)
}

/// The user's own environment. Variables whose name or value is not UTF-8
/// are left out (they cannot round-trip through the project file anyway).
pub fn own_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

fn glob_set(patterns: &[String]) -> Result<GlobSet, Error> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = Glob::new(pattern).map_err(|source| Error::EnvPattern {
            pattern: pattern.clone(),
            source,
        })?;
        builder.add(glob);
    }
    builder.build().map_err(|source| Error::EnvPattern {
        pattern: patterns.join(", "),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn filter(include: &[&str], exclude: &[&str]) -> EnvFilter {
        EnvFilter {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn layers_override_in_order() {
        let own = map(&[("HOME", "/home/me"), ("PORT", "1"), ("A", "own")]);
        let imported = map(&[("PORT", "2"), ("DB", "pg")]);
        let extra = map(&[("PORT", "3")]);
        let merged = env_merge(&own, &imported, &extra, &EnvFilter::default()).unwrap();
        assert_eq!(
            merged,
            map(&[
                ("A", "own"),
                ("DB", "pg"),
                ("HOME", "/home/me"),
                ("PORT", "3")
            ])
        );
    }

    #[test]
    fn include_keeps_only_matching_imported_names() {
        let own = map(&[("PATH", "/bin")]);
        let imported = map(&[("DB_HOST", "h"), ("DB_PORT", "5432"), ("SECRET", "s")]);
        let merged = env_merge(&own, &imported, &map(&[]), &filter(&["DB_*"], &[])).unwrap();
        assert_eq!(
            merged,
            map(&[("DB_HOST", "h"), ("DB_PORT", "5432"), ("PATH", "/bin")])
        );
    }

    #[test]
    fn exclude_wins_over_include_and_spares_own_and_extra() {
        let own = map(&[("HOME", "/home/me")]);
        let imported = map(&[
            ("HOME", "/root"),
            ("KUBERNETES_PORT", "tcp://x"),
            ("X", "1"),
        ]);
        let extra = map(&[("KUBERNETES_PORT", "mine")]);
        let f = filter(&["*"], &["HOME", "KUBERNETES_*"]);
        let merged = env_merge(&own, &imported, &extra, &f).unwrap();
        assert_eq!(
            merged,
            map(&[
                ("HOME", "/home/me"),
                ("KUBERNETES_PORT", "mine"),
                ("X", "1")
            ])
        );
    }

    #[test]
    fn invalid_pattern_is_an_error_naming_it() {
        let err = env_merge(&map(&[]), &map(&[]), &map(&[]), &filter(&["a[b"], &[])).unwrap_err();
        assert!(err.to_string().contains("a[b"), "{err}");
    }
}
