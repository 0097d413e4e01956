//! The app container's environment as the agent reports it.
//!
//! The installer copies the app's `env`/`envFrom` into the agent container
//! under a prefix (so the kubelet resolves Secrets, ConfigMaps and the
//! downward API); the report strips it. Kubernetes service variables
//! (`<SVC>_SERVICE_HOST`, `<SVC>_PORT_80_TCP_ADDR`, `KUBERNETES_*`, ...) are
//! the same in every container of the pod, so the agent's own are reported.
//! Everything else of the agent's is left out: its settings (`TPR_AGENT_*`)
//! and container basics (`PATH`, `HOME`, `HOSTNAME`, ...), which would only
//! break the local process. An app variable wins over a service variable of
//! the same name, as in the pod. Values are never logged.

use std::collections::BTreeMap;

pub fn app_env(all: &BTreeMap<String, String>, prefix: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = all
        .iter()
        .filter(|(k, _)| is_service_variable(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in all {
        if let Some(name) = k.strip_prefix(prefix).filter(|n| !n.is_empty()) {
            out.insert(name.to_owned(), v.clone());
        }
    }
    out
}

/// Kubernetes service link variables: `X_SERVICE_HOST`, `X_SERVICE_PORT`,
/// `X_SERVICE_PORT_<NAME>`, `X_PORT`, `X_PORT_<n>_<PROTO>[_PROTO|_PORT|_ADDR]`.
fn is_service_variable(name: &str) -> bool {
    if name.starts_with("TPR_") {
        return false;
    }
    if name.ends_with("_SERVICE_HOST")
        || name.ends_with("_SERVICE_PORT")
        || name.contains("_SERVICE_PORT_")
    {
        return true;
    }
    if name.ends_with("_PORT") && name.len() > "_PORT".len() {
        return true;
    }
    // X_PORT_<n>_<PROTO>...
    let Some(i) = name.find("_PORT_") else {
        return false;
    };
    let mut rest = name[i + "_PORT_".len()..].split('_');
    let number = rest
        .next()
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let proto = rest
        .next()
        .is_some_and(|p| matches!(p, "TCP" | "UDP" | "SCTP"));
    let tail = rest
        .next()
        .is_none_or(|t| matches!(t, "PROTO" | "PORT" | "ADDR"));
    number && proto && tail && rest.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_prefix_keeps_service_variables_drops_own() {
        let all: BTreeMap<String, String> = [
            ("TPR_APP_DATABASE_URL", "postgres://db"),
            ("TPR_APP_KUBERNETES_SERVICE_HOST", "overridden"),
            ("TPR_AGENT_GRPC_PORT", "9900"),
            ("PATH", "/bin"),
            ("HOSTNAME", "orders-abc"),
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
            ("REDIS_PORT", "tcp://10.96.0.7:6379"),
            ("REDIS_SERVICE_PORT_CLIENT", "6379"),
            ("SUPPORT_EMAIL", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let env = app_env(&all, "TPR_APP_");
        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "DATABASE_URL",
                "KUBERNETES_PORT_443_TCP_ADDR",
                "KUBERNETES_SERVICE_HOST",
                "REDIS_PORT",
                "REDIS_SERVICE_PORT_CLIENT"
            ]
        );
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "overridden");
    }
}
