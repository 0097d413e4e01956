//! Kubernetes naming rules, checked before anything reaches the API server.

/// Why `name` is not a DNS-1123 label (namespaces, services, intercept
/// names), or `None` when it is one.
pub fn dns_label_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("it is empty");
    }
    if name.len() > 63 {
        return Some("it is longer than 63 characters");
    }
    label_chars_problem(name)
}

/// Why `name` is not a DNS-1123 subdomain (workload names), or `None`.
pub fn dns_subdomain_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("it is empty");
    }
    if name.len() > 253 {
        return Some("it is longer than 253 characters");
    }
    name.split('.').find_map(label_chars_problem)
}

/// Why `name` is not an IANA service port name (`http`, `grpc-web`), or `None`.
pub fn port_name_problem(name: &str) -> Option<&'static str> {
    if let Some(problem) = label_chars_problem(name) {
        return Some(problem);
    }
    if name.len() > 15 {
        return Some("a port name has at most 15 characters");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Some("a port name needs at least one letter");
    }
    if name.contains("--") {
        return Some("a port name cannot contain \"--\"");
    }
    None
}

fn label_chars_problem(label: &str) -> Option<&'static str> {
    let bytes = label.as_bytes();
    if bytes.is_empty() {
        return Some("it has an empty part between dots");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Some("only lowercase letters, digits and '-' are allowed");
    }
    if bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
        return Some("it must start and end with a letter or digit");
    }
    None
}

/// The intercept name Telepresence would give: an explicit name wins; with a
/// namespace on the intercept, `<workload>-<namespace>`; else the workload.
pub fn intercept_name(explicit: Option<&str>, workload: &str, namespace: Option<&str>) -> String {
    match (explicit, namespace) {
        (Some(name), _) => name.to_owned(),
        (None, Some(ns)) => format!("{workload}-{ns}"),
        (None, None) => workload.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intercept_names_follow_telepresence() {
        assert_eq!(intercept_name(None, "hello", None), "hello");
        assert_eq!(intercept_name(None, "hello", Some("myns")), "hello-myns");
        assert_eq!(
            intercept_name(Some("myhello"), "hello", Some("myns")),
            "myhello"
        );
    }

    #[test]
    fn names() {
        assert_eq!(dns_label_problem("shop-1"), None);
        assert!(dns_label_problem("Shop").is_some());
        assert!(dns_label_problem("-a").is_some());
        assert!(dns_label_problem(&"a".repeat(64)).is_some());
        assert_eq!(dns_subdomain_problem("orders.v2"), None);
        assert!(dns_subdomain_problem("orders..v2").is_some());
        assert_eq!(port_name_problem("grpc-web"), None);
        assert!(port_name_problem("8080").is_some());
        assert!(port_name_problem("a--b").is_some());
        assert!(port_name_problem("abcdefghijklmnop").is_some());
    }
}
