//! The test cluster's ingress controller as tests use it. `tests/cluster/up`
//! runs Traefik (IngressClass `traefik`, the default) on the node's own
//! network, ports 80 and 443 of this machine, and makes a CA and a
//! wildcard certificate for `*.tpr.test` ([`tls_dir`]). A test gives its
//! Ingress a host of its own ([`host_for`]: two Ingresses with one host
//! would share its routes), optionally with a TLS Secret made from that
//! certificate ([`create_tls_secret`]), and sends requests through the
//! controller from this machine ([`get`]: curl to 127.0.0.1 with the host
//! as Host header and SNI, TLS verified against the CA).

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams};

use crate::{Cluster, Error, Result, wait_for};

/// The domain the cluster's certificate covers (`*.tpr.test`).
pub const DOMAIN: &str = "tpr.test";
/// The address the controller publishes in `Ingress.status` (the node IP).
pub const NODE_IP: &str = "10.244.0.1";
/// Where `tests/cluster/up` writes `ca.crt`, `tls.crt` and `tls.key`.
pub const DEFAULT_TLS_DIR: &str = "/var/lib/tpr-cluster/ingress";
/// How long [`deploy_ingress`] waits for the controller to route the host.
pub const ROUTED: Duration = Duration::from_secs(60);

/// `$TPR_INGRESS_DIR`, or [`DEFAULT_TLS_DIR`].
pub fn tls_dir() -> PathBuf {
    std::env::var_os("TPR_INGRESS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TLS_DIR))
}

/// The CA that signed the ingress certificate (PEM); curl and
/// [`crate::browser::Browser`] trust it.
pub fn ca_path() -> PathBuf {
    tls_dir().join("ca.crt")
}

/// A host for a test's Ingress: `<namespace>.tpr.test` (test namespaces
/// are unique DNS labels).
pub fn host_for(ns: &str) -> String {
    format!("{ns}.{DOMAIN}")
}

/// Creates (server-side applies) a `kubernetes.io/tls` Secret `name` in
/// `ns` holding the cluster's `*.tpr.test` certificate and key.
pub async fn create_tls_secret(c: &Cluster, ns: &str, name: &str) -> Result<()> {
    let read = |file: &str| {
        let path = tls_dir().join(file);
        std::fs::read_to_string(&path).map_err(|e| Error::Manifest {
            path: path.display().to_string(),
            reason: format!("{e} (tests/cluster/up makes it)"),
        })
    };
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": read("tls.crt")?, "tls.key": read("tls.key")?},
    }))
    .expect("static secret object");
    Api::<Secret>::namespaced(c.client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("tpr-e2e").force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

/// An Ingress `name` (class `traefik`) routing every path of `host` to
/// `service`'s port `port` (a name, or a number when it parses as one),
/// with TLS from Secret `tls_secret` when given.
pub fn ingress_yaml(
    name: &str,
    host: &str,
    service: &str,
    port: &str,
    tls_secret: Option<&str>,
) -> String {
    let port = match port.parse::<u16>() {
        Ok(n) => format!("number: {n}"),
        Err(_) => format!("name: {port}"),
    };
    let tls = tls_secret
        .map(|s| format!("  tls:\n    - hosts: [\"{host}\"]\n      secretName: {s}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
spec:
  ingressClassName: traefik
{tls}  rules:
    - host: \"{host}\"
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service:
                name: {service}
                port: {{{port}}}
"
    )
}

/// [`deploy_ingress_for`] the example app: Ingress `hello` for `host` to
/// Service `hello` port `http` (`deploy_hello` first), TLS Secret
/// `hello-tls` when `tls`.
pub async fn deploy_ingress(c: &Cluster, ns: &str, host: &str, tls: bool) -> Result<()> {
    deploy_ingress_for(c, ns, "hello", host, "hello", "http", tls).await
}

/// Applies Ingress `name` in `ns` ([`ingress_yaml`]; with `tls`, first a
/// TLS Secret `<name>-tls` from the cluster's certificate) and waits until
/// the controller published it in the Ingress's status and routes `host`:
/// `/` answers through it on port 80, and on 443 with the certificate
/// verified when `tls`.
pub async fn deploy_ingress_for(
    c: &Cluster,
    ns: &str,
    name: &str,
    host: &str,
    service: &str,
    port: &str,
    tls: bool,
) -> Result<()> {
    let secret = format!("{name}-tls");
    if tls {
        create_tls_secret(c, ns, &secret).await?;
    }
    let yaml = ingress_yaml(name, host, service, port, tls.then_some(secret.as_str()));
    c.apply_yaml(&yaml, Some(ns)).await?;
    let api = Api::<Ingress>::namespaced(c.client.clone(), ns);
    wait_for(
        &format!("ingress {ns}/{name} status.loadBalancer = {NODE_IP}"),
        ROUTED,
        || async {
            let ing = api.get(name).await?;
            let ips: Vec<String> = ing
                .status
                .and_then(|s| s.load_balancer)
                .and_then(|lb| lb.ingress)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|i| i.ip)
                .collect();
            Ok(ips.iter().any(|ip| ip == NODE_IP).then_some(()))
        },
    )
    .await?;
    for https in [false, true] {
        if https && !tls {
            continue;
        }
        let scheme = if https { "https" } else { "http" };
        wait_for(
            &format!("the ingress to route {scheme}://{host}/ to {ns}/{service}"),
            ROUTED,
            || async {
                let r = get(host, "/", https, &[]).await?;
                Ok((!r.is_from_controller()).then_some(()))
            },
        )
        .await?;
    }
    Ok(())
}

/// How long [`settled`] waits for the controller to catch up.
pub const SETTLE: Duration = Duration::from_secs(60);

/// Waits until the controller reaches only live pods of `host`'s Service:
/// after a rollout (the agent's install) it keeps sending some requests to
/// the replaced pods until its own view of the endpoints catches up
/// (Traefik applies changes in batches, 2 s apart by default); such a
/// request waits on an address that is gone, or gets a 502. `want` is
/// what the live pods answer on `/`; ten such answers in a row, each
/// within 2 s, and the routing has settled.
pub async fn settled(host: &str, https: bool, want: &str) -> Result<()> {
    let start = std::time::Instant::now();
    let mut in_a_row = 0;
    let mut last = String::new();
    while in_a_row < 10 {
        let ok = match get_within(host, "/", https, &[], Duration::from_secs(2)).await {
            Ok(r) if r.body.contains(want) => true,
            Ok(r) => {
                last = format!("{} {}", r.status, r.body);
                false
            }
            Err(e) => {
                last = e.to_string();
                false
            }
        };
        in_a_row = if ok { in_a_row + 1 } else { 0 };
        if start.elapsed() > SETTLE {
            return Err(Error::Timeout(
                SETTLE,
                format!("the ingress to route {host} only to live pods (last: {last})"),
            ));
        }
        if !ok {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// An HTTP response as curl received it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// In order; names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers_all(name).into_iter().next()
    }

    /// Every header `name` (any case), in order (e.g. `set-cookie`).
    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A `Cookie` header value sending back every cookie the response set
    /// (`a=1; b=2`), attributes left out.
    pub fn cookie_header(&self) -> String {
        self.headers_all("set-cookie")
            .iter()
            .map(|c| c.split(';').next().unwrap_or("").trim())
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Whether the controller answered by itself: no route for the host
    /// yet (404 "404 page not found") or no ready endpoint behind it (503
    /// "no available server").
    pub fn is_from_controller(&self) -> bool {
        (self.status == 404 && self.body == "404 page not found\n")
            || (self.status == 503 && self.body == "no available server")
    }
}

/// GET `path` (with its query) of `host` through the ingress controller
/// on this machine: `http://host/path` on 127.0.0.1:80, or with `https`
/// `https://host/path` on 127.0.0.1:443 with SNI `host` and the
/// certificate verified against [`ca_path`]. `headers` are `Name: value`
/// (or `Name:value`). Redirects are not followed. Fails (naming the URL)
/// when no response came (connection refused, TLS verification, 10 s).
pub async fn get(host: &str, path: &str, https: bool, headers: &[&str]) -> Result<Response> {
    get_within(host, path, https, headers, Duration::from_secs(10)).await
}

/// [`get`] giving up after `limit`.
async fn get_within(
    host: &str,
    path: &str,
    https: bool,
    headers: &[&str],
    limit: Duration,
) -> Result<Response> {
    let (scheme, port) = if https { ("https", 443) } else { ("http", 80) };
    let url = format!("{scheme}://{host}{path}");
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "-i", "--max-time"])
        .arg(format!("{:.1}", limit.as_secs_f64()))
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"));
    if https {
        cmd.arg("--cacert").arg(ca_path());
    }
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    let out = cmd
        .arg("--")
        .arg(&url)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| {
            Error::Request(format!(
                "curl {url}: {e} (tests/cluster/install-deps installs curl)"
            ))
        })?;
    if !out.status.success() {
        return Err(Error::Request(format!(
            "curl {url} (at 127.0.0.1:{port}): {} (is the ingress up? tests/cluster/up)",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_response(&out.stdout).ok_or_else(|| {
        Error::Request(format!(
            "curl {url}: cannot read the response: {}",
            String::from_utf8_lossy(&out.stdout)
        ))
    })
}

/// Splits `curl -i` output (one response: no redirects followed) into
/// status, headers and body.
fn parse_response(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&raw[end + 4..]).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_curl_response_is_split_and_cookies_are_sent_back() {
        let raw = b"HTTP/2 200 \r\ncontent-type: text/plain\r\nset-cookie: a=1; Path=/; HttpOnly\r\nSet-Cookie: b=2\r\n\r\nhello\r\n\r\nworld";
        let r = parse_response(raw).expect("parsed");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Content-Type"), Some("text/plain"));
        assert_eq!(r.cookie_header(), "a=1; b=2");
        assert_eq!(r.body, "hello\r\n\r\nworld");
        assert!(!r.is_from_controller());
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n404 page not found\n").unwrap();
        assert!(r.is_from_controller());
    }

    #[test]
    fn the_ingress_names_a_port_by_name_or_number_and_tls_when_asked() {
        let y = ingress_yaml("hello", "a.tpr.test", "hello", "http", Some("hello-tls"));
        assert!(y.contains("port: {name: http}"), "{y}");
        assert!(y.contains("secretName: hello-tls"), "{y}");
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&y).expect("yaml");
        assert_eq!(docs[0]["spec"]["tls"][0]["hosts"][0], "a.tpr.test");
        assert_eq!(
            docs[0]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["name"],
            "http"
        );
        let y = ingress_yaml("x", "b.tpr.test", "svc", "8080", None);
        assert!(
            y.contains("port: {number: 8080}") && !y.contains("tls"),
            "{y}"
        );
    }
}
