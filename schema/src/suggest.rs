//! "Did you mean ...?" for misspelt keys and names.

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub fn closest<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let word = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            let lower = c.to_ascii_lowercase();
            // A clipped name (`TERM` for SIGTERM) is as good as one typo.
            let clipped = word.len() >= 3 && lower.contains(&word);
            (
                if clipped {
                    1
                } else {
                    edit_distance(&word, &lower)
                },
                c,
            )
        })
        .filter(|(d, c)| *d <= (c.chars().count().max(word.chars().count()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance with adjacent transpositions counted as one edit
/// (`wrokload` → `workload` is one typo).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    rows[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let keys = ["workload", "namespace", "name", "port", "to_pod"];
        assert_eq!(closest("wrokload", keys), Some("workload"));
        assert_eq!(closest("ports", keys), Some("port"));
        assert_eq!(closest("topod", keys), Some("to_pod"));
        assert_eq!(closest("zzzzzz", keys), None);
        assert_eq!(closest("HTTP", ["tcp", "http"]), Some("http"));
        assert_eq!(closest("TERM", ["SIGINT", "SIGTERM"]), Some("SIGTERM"));
        assert_eq!(
            closest("Deploy", ["Deployment", "StatefulSet"]),
            Some("Deployment")
        );
    }
}
