//! Every invalid file under tests/corpus/ is rejected with exactly the
//! problems its `.expected` file lists, in order: `FILE:LINE:COLUMN: MESSAGE`,
//! then each line of the help as `  help: TEXT`. `NAME.local.toml` beside `NAME.toml` is its local file.
//! `TPR_BLESS=1 cargo test -p tpr-schema --test corpus` rewrites the
//! `.expected` files from the actual output (review the diff!).

use std::fs;
use std::path::Path;

use tpr_schema::{SourceFile, parse};

fn problems(team: &Path) -> String {
    let local_path = team.with_extension("local.toml");
    let team = SourceFile::new("telepresence.toml", fs::read_to_string(team).unwrap());
    let local = fs::read_to_string(&local_path)
        .ok()
        .map(|t| SourceFile::new("telepresence.local.toml", t));
    match parse(&team, local.as_ref(), Path::new("/project")) {
        Ok(project) => panic!("accepted: {project:#?}"),
        Err(invalid) => invalid
            .problems
            .iter()
            .map(|p| {
                let mut text = format!("{}:{}:{}: {}\n", p.file, p.line, p.column, p.kind);
                for line in p.help_text().into_iter().flat_map(str::lines) {
                    text.push_str(&format!("  help: {line}\n"));
                }
                text
            })
            .collect(),
    }
}

#[test]
fn invalid_files_report_every_problem_where_it_is() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let bless = std::env::var_os("TPR_BLESS").is_some();
    let mut cases = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !name.ends_with(".toml") || name.ends_with(".local.toml") {
            continue;
        }
        cases += 1;
        let actual = problems(&path);
        let expected_path = path.with_extension("expected");
        if bless {
            fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            failures.push(format!(
                "{name}\n--- expected\n{expected}--- actual\n{actual}"
            ));
        }
    }
    assert!(cases >= 30, "the corpus has {cases} files, fewer than 30");
    assert!(
        failures.is_empty(),
        "{} of {cases} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
