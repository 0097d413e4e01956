//! Which Ingresses reach a Service port: where a preview link of an
//! intercept can go (`[intercept.preview]` without `ingress.host`).
//!
//! The model: an Ingress rule whose path backend is the intercepted
//! Service, on its port (by name or number), is a candidate. Its name is
//! the rule's `host`; TLS when a `spec.tls` entry covers that host (an
//! entry without hosts covers all; `*.example.com` covers one label).
//! The address to connect to is the Ingress's published load-balancer
//! address (`status.loadBalancer.ingress[0]`: `ip`, else `hostname`) when
//! there is one, the name otherwise; when the two differ the name is the
//! `l5` (Host header, SNI, and the host of the link). A rule without a
//! host (or `spec.defaultBackend`) answers any name: its address is the
//! name. A wildcard host, or no host and no address, gives no usable link.

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use kube::api::{Api, ListParams};
use tpr_schema::IngressAddress;

use super::{Cluster, K8sError, ServicePortRef};

/// One way through an Ingress to the Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressRoute {
    /// The Ingress's name.
    pub ingress: String,
    /// The rule's host; `None`: any host (a rule without one, or the
    /// default backend).
    pub rule_host: Option<String>,
    /// Whether `spec.tls` covers the host.
    pub tls: bool,
    /// The published load-balancer address, if any.
    pub address: Option<String>,
    /// The rule's path, when it is a plain prefix other than "/".
    pub path: Option<String>,
}

impl IngressRoute {
    /// The link's address, or why this route gives none.
    pub fn link(&self) -> Result<IngressAddress, String> {
        let tls = self.tls;
        let port = if tls { 443 } else { 80 };
        match (&self.rule_host, &self.address) {
            (Some(h), _) if h.starts_with('*') => Err(format!(
                "ingress/{} routes a wildcard host ({h}): no single name to link to",
                self.ingress
            )),
            (Some(h), Some(a)) => Ok(IngressAddress {
                host: a.clone(),
                port,
                tls,
                l5: Some(h.clone()).filter(|h| h != a),
            }),
            (Some(h), None) => Ok(IngressAddress {
                host: h.clone(),
                port,
                tls,
                l5: None,
            }),
            (None, Some(a)) => Ok(IngressAddress {
                host: a.clone(),
                port,
                tls,
                l5: None,
            }),
            (None, None) => Err(format!(
                "ingress/{} routes any host but publishes no address (status.loadBalancer)",
                self.ingress
            )),
        }
    }

    /// `ingress/shop: https://shop.example.com (address 203.0.113.7)`.
    pub fn describe(&self) -> String {
        match self.link() {
            Ok(a) => {
                let scheme = if a.tls { "https" } else { "http" };
                let via = match &a.l5 {
                    Some(_) => format!(" (address {})", a.host),
                    None => String::new(),
                };
                format!("ingress/{}: {scheme}://{}{via}", self.ingress, a.name())
            }
            Err(why) => why,
        }
    }

    /// The `[intercept.preview.ingress]` lines that choose this route.
    pub fn settings(&self) -> Option<String> {
        let a = self.link().ok()?;
        let mut out = format!("host = \"{}\"", a.host);
        if !a.tls {
            out.push_str(", tls = false");
        }
        if let Some(l5) = &a.l5 {
            out.push_str(&format!(", l5 = \"{l5}\""));
        }
        Some(out)
    }
}

/// Whether an Ingress backend is the Service port.
fn reaches(backend: &IngressBackend, service: &str, port: &ServicePortRef) -> bool {
    let Some(s) = &backend.service else {
        return false;
    };
    if s.name != service {
        return false;
    }
    match &s.port {
        Some(p) => match (&p.name, p.number) {
            (Some(name), _) => port.name.as_deref() == Some(name.as_str()),
            (None, Some(n)) => i32::from(port.port) == n,
            (None, None) => false,
        },
        None => false,
    }
}

/// Whether a TLS host entry covers `host` (`*.example.com`: one label).
fn tls_covers(pattern: &str, host: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix("*.") {
        return host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix));
    }
    pattern.eq_ignore_ascii_case(host)
}

/// The routes of `ingresses` to `service`'s `port`, sorted and without
/// duplicates (one per Ingress and host).
pub fn routes_to(ingresses: &[Ingress], service: &str, port: &ServicePortRef) -> Vec<IngressRoute> {
    let mut out: Vec<IngressRoute> = Vec::new();
    for ing in ingresses {
        let name = ing.metadata.name.clone().unwrap_or_default();
        let Some(spec) = &ing.spec else { continue };
        let address = ing
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .and_then(|list| {
                list.iter()
                    .find_map(|i| i.ip.clone().or(i.hostname.clone()))
            })
            .filter(|a| !a.is_empty());
        let tls_for = |host: Option<&str>| {
            spec.tls.iter().flatten().any(|t| match (&t.hosts, host) {
                (None, _) => true,
                (Some(hosts), _) if hosts.is_empty() => true,
                (Some(hosts), Some(h)) => hosts.iter().any(|p| tls_covers(p, h)),
                (Some(_), None) => false,
            })
        };
        let mut push = |rule_host: Option<String>, path: Option<String>| {
            let route = IngressRoute {
                ingress: name.clone(),
                tls: tls_for(rule_host.as_deref()),
                rule_host,
                address: address.clone(),
                path,
            };
            if !out
                .iter()
                .any(|r| r.ingress == route.ingress && r.rule_host == route.rule_host)
            {
                out.push(route);
            }
        };
        for rule in spec.rules.iter().flatten() {
            let host = rule.host.clone().filter(|h| !h.is_empty());
            for p in rule.http.iter().flat_map(|h| &h.paths) {
                if reaches(&p.backend, service, port) {
                    push(host.clone(), plain_prefix(p.path.as_deref()));
                }
            }
        }
        if let Some(backend) = &spec.default_backend
            && reaches(backend, service, port)
        {
            push(None, None);
        }
    }
    out.sort_by(|a, b| (&a.ingress, &a.rule_host).cmp(&(&b.ingress, &b.rule_host)));
    out
}

/// A rule path a link can land on: a plain path other than "/" (not a
/// controller's regular expression).
fn plain_prefix(path: Option<&str>) -> Option<String> {
    let p = path?;
    let plain = p.starts_with('/')
        && p != "/"
        && !p
            .chars()
            .any(|c| "()[]{}*+?$^|\\".contains(c) || c.is_whitespace());
    plain.then(|| p.to_owned())
}

/// The Ingresses of `namespace` (networking.k8s.io/v1).
pub async fn list_ingresses(cluster: &Cluster, namespace: &str) -> Result<Vec<Ingress>, K8sError> {
    let api: Api<Ingress> = Api::namespaced(cluster.client().clone(), namespace);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| {
            cluster
                .request("list", "ingresses.networking.k8s.io", namespace)
                .error(e)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(v: serde_json::Value) -> Ingress {
        serde_json::from_value(v).expect("an Ingress")
    }

    fn http_port() -> ServicePortRef {
        ServicePortRef {
            name: Some("http".into()),
            port: 80,
            target_port: k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                "http".into(),
            ),
        }
    }

    fn rule(host: Option<&str>, service: &str, port: serde_json::Value) -> serde_json::Value {
        let mut r = serde_json::json!({"http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": service, "port": port}}}]}});
        if let Some(h) = host {
            r["host"] = h.into();
        }
        r
    }

    #[test]
    fn a_rule_reaching_the_port_by_name_or_number_is_a_route() {
        let list = [
            ingress(
                serde_json::json!({"metadata": {"name": "by-name"}, "spec": {
                "tls": [{"hosts": ["*.tpr.test"], "secretName": "x"}],
                "rules": [rule(Some("a.tpr.test"), "hello", serde_json::json!({"name": "http"}))]},
                "status": {"loadBalancer": {"ingress": [{"ip": "10.244.0.1"}]}}}),
            ),
            ingress(
                serde_json::json!({"metadata": {"name": "by-number"}, "spec": {
                "rules": [rule(Some("b.example.com"), "hello", serde_json::json!({"number": 80}))]}}),
            ),
            ingress(
                serde_json::json!({"metadata": {"name": "other-port"}, "spec": {
                "rules": [rule(Some("c.example.com"), "hello", serde_json::json!({"number": 81}))]}}),
            ),
            ingress(
                serde_json::json!({"metadata": {"name": "other-service"}, "spec": {
                "rules": [rule(Some("d.example.com"), "world", serde_json::json!({"name": "http"}))]}}),
            ),
        ];
        let routes = routes_to(&list, "hello", &http_port());
        let names: Vec<&str> = routes.iter().map(|r| r.ingress.as_str()).collect();
        assert_eq!(names, ["by-name", "by-number"]);
        assert_eq!(
            routes[0].link().unwrap(),
            IngressAddress {
                host: "10.244.0.1".into(),
                port: 443,
                tls: true,
                l5: Some("a.tpr.test".into())
            }
        );
        assert_eq!(
            routes[0].describe(),
            "ingress/by-name: https://a.tpr.test (address 10.244.0.1)"
        );
        assert_eq!(
            routes[0].settings().unwrap(),
            "host = \"10.244.0.1\", l5 = \"a.tpr.test\""
        );
        assert_eq!(
            routes[1].link().unwrap(),
            IngressAddress {
                host: "b.example.com".into(),
                port: 80,
                tls: false,
                l5: None
            }
        );
        assert_eq!(
            routes[1].settings().unwrap(),
            "host = \"b.example.com\", tls = false"
        );
    }

    #[test]
    fn hostless_rules_default_backends_wildcards_and_paths() {
        let list = [ingress(
            serde_json::json!({"metadata": {"name": "edge"}, "spec": {
            "defaultBackend": {"service": {"name": "hello", "port": {"name": "http"}}},
            "tls": [{"secretName": "all"}],
            "rules": [
                rule(Some("*.apps.test"), "hello", serde_json::json!({"name": "http"})),
                {"host": "shop.test", "http": {"paths": [{"path": "/shop", "pathType": "Prefix",
                    "backend": {"service": {"name": "hello", "port": {"name": "http"}}}}]}},
            ]}}),
        )];
        let routes = routes_to(&list, "hello", &http_port());
        assert_eq!(routes.len(), 3, "{routes:?}");
        // Sorted by host: the hostless default backend first.
        assert_eq!(routes[0].rule_host, None);
        assert!(
            routes[0]
                .link()
                .unwrap_err()
                .contains("publishes no address"),
            "{routes:?}"
        );
        assert!(routes[1].link().unwrap_err().contains("wildcard"));
        assert_eq!(routes[2].path.as_deref(), Some("/shop"));
        assert!(routes[2].tls, "a tls entry without hosts covers every host");
    }

    #[test]
    fn tls_wildcards_cover_one_label() {
        assert!(tls_covers("*.tpr.test", "a.tpr.test"));
        assert!(!tls_covers("*.tpr.test", "a.b.tpr.test"));
        assert!(!tls_covers("*.tpr.test", "tpr.test"));
        assert!(tls_covers("Shop.Test", "shop.test"));
        assert_eq!(plain_prefix(Some("/api(/|$)(.*)")), None);
        assert_eq!(plain_prefix(Some("/")), None);
    }
}
