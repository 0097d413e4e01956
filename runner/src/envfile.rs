//! Rendering an environment in the formats of `env.format`. Pure: the caller
//! writes the file (mode 0600) and never logs the values.

use std::collections::BTreeMap;

use tpr_schema::EnvFormat;

/// An environment rendered in one format.
#[derive(Debug, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    /// Variables the format cannot express (a name that is not a shell
    /// identifier for `sh`, a newline for `compose`...), left out of `text`.
    pub skipped: Vec<String>,
}

/// Renders `vars` in `format`, in name order.
pub fn render(vars: &BTreeMap<String, String>, format: EnvFormat) -> Rendered {
    if format == EnvFormat::Json {
        let text = serde_json::to_string_pretty(vars).expect("strings serialise") + "\n";
        return Rendered {
            text,
            skipped: Vec::new(),
        };
    }
    let mut text = String::new();
    let mut skipped = Vec::new();
    for (key, value) in vars {
        let line = match format {
            EnvFormat::Dotenv if dotenv_key(key) => format!("{key}={}", dotenv_quote(value)),
            EnvFormat::Sh if shell_identifier(key) => format!("{key}={}", shell_quote(value)),
            EnvFormat::ShExport if shell_identifier(key) => {
                format!("export {key}={}", shell_quote(value))
            }
            // docker --env-file takes the rest of the line verbatim: no quoting,
            // so a newline cannot be written.
            EnvFormat::Compose
                if !key.is_empty() && !key.contains(['=', '\n', '#']) && !value.contains('\n') =>
            {
                format!("{key}={value}")
            }
            _ => {
                skipped.push(key.clone());
                continue;
            }
        };
        text.push_str(&line);
        text.push('\n');
    }
    Rendered { text, skipped }
}

fn shell_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// dotenv readers accept more than shell names (`a.b`, `a-b`), but not
/// blanks, `=`, `#` or quotes.
fn dotenv_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// POSIX single quotes: everything literal; a quote is `'\''`.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Single quotes (literal in dotenvy, python-dotenv, godotenv and node's
/// dotenv) when the value allows; else double quotes with `\\ \" \n \r \$`
/// escaped, so that nothing is expanded.
fn dotenv_quote(value: &str) -> String {
    if !value.contains(['\'', '\n', '\r', '\\']) {
        return format!("'{value}'");
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            '\r' => out.push_str(r"\r"),
            '$' => out.push_str(r"\$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const NASTY: &str = "it's \"quoted\" $HOME `id` \\ back\nslash\ttab  spaces ";

    #[test]
    fn dotenv_quotes_only_when_needed() {
        let r = render(
            &vars(&[("A", "plain $X"), ("B", NASTY), ("bad key", "x")]),
            EnvFormat::Dotenv,
        );
        assert_eq!(
            r.text,
            "A='plain $X'\nB=\"it's \\\"quoted\\\" \\$HOME `id` \\\\ back\\nslash\ttab  spaces \"\n"
        );
        assert_eq!(r.skipped, vec!["bad key"]);
    }

    #[test]
    fn sh_and_sh_export_round_trip_through_a_real_shell() {
        let env = vars(&[("NASTY", NASTY), ("EMPTY", ""), ("a.b", "skipped")]);
        for format in [EnvFormat::Sh, EnvFormat::ShExport] {
            let r = render(&env, format);
            assert_eq!(r.skipped, vec!["a.b"]);
            let script = format!("{}printf '%s|%s' \"$NASTY\" \"$EMPTY\"", r.text);
            let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{NASTY}|"));
        }
        // sh-export really exports: a child process sees the variable.
        let r = render(&vars(&[("TPR_T", "v 1")]), EnvFormat::ShExport);
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{}sh -c 'printf %s \"$TPR_T\"'", r.text))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "v 1");
    }

    #[test]
    fn json_is_one_object() {
        let r = render(&vars(&[("B", NASTY), ("A", "1")]), EnvFormat::Json);
        let back: BTreeMap<String, String> = serde_json::from_str(&r.text).unwrap();
        assert_eq!(back, vars(&[("A", "1"), ("B", NASTY)]));
    }

    #[test]
    fn compose_is_verbatim_and_skips_what_it_cannot_hold() {
        let r = render(
            &vars(&[("A", "x 'y' $z"), ("B", "two\nlines")]),
            EnvFormat::Compose,
        );
        assert_eq!(r.text, "A=x 'y' $z\n");
        assert_eq!(r.skipped, vec!["B"]);
    }
}
