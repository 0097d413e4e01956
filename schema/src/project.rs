//! The resolved project: both files merged, defaults applied, names computed.
//! This is what the rest of tpr consumes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use crate::choice::{EnvFormat, OnExit, PullPolicy, StopSignal, WorkloadKind};
pub use crate::port::{PortId, PortMapping};

/// The only format version this tpr reads.
pub const FORMAT_VERSION: u32 = 1;
/// The header whose value `<install id>:<intercept name>` selects a
/// developer's requests by default.
pub const INTERCEPT_ID_HEADER: &str = "x-telepresence-intercept-id";
/// The agent's default gRPC port in the pod.
pub const DEFAULT_AGENT_PORT: u16 = 9900;

/// The agent image matching this build: `tpr-agent:<version>`.
pub fn default_agent_image() -> String {
    format!("tpr-agent:{}", env!("CARGO_PKG_VERSION"))
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Project {
    pub format_version: u32,
    /// Directory of `telepresence.toml`; relative paths in the file are
    /// relative to it, and every path below is already joined with it.
    pub root: PathBuf,
    pub cluster: Cluster,
    pub agent: AgentSettings,
    pub network: Network,
    #[serde(rename = "intercept")]
    pub intercepts: Vec<Intercept>,
    #[serde(rename = "process")]
    pub processes: Vec<Process>,
}

impl Project {
    pub fn intercept(&self, name: &str) -> Option<&Intercept> {
        self.intercepts.iter().find(|i| i.name == name)
    }
}

/// `[network]`: how the local processes reach the network.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Network {
    /// `Some(true)`: asked for (an error where unavailable); `Some(false)`:
    /// off; `None`: the default (on with an intercept, a warning where
    /// unavailable).
    pub outbound: Option<bool>,
    /// Extra cluster ranges, each `address/prefix`, checked.
    pub cluster_subnets: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Cluster {
    /// kubeconfig context; `None`: the current one.
    pub context: Option<String>,
    /// Default namespace; `None`: the context's.
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentSettings {
    pub image: String,
    pub pull_policy: PullPolicy,
    /// gRPC port, bound to 127.0.0.1 in the pod.
    pub port: u16,
    pub resources: Resources,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Resources {
    pub requests: Quantities,
    pub limits: Quantities,
}

/// Kubernetes quantity strings, as written ("100m", "64Mi").
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Quantities {
    pub cpu: Option<String>,
    pub memory: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Intercept {
    /// Unique in the project; Telepresence's rule (see `names::intercept_name`).
    pub name: String,
    pub workload: String,
    /// `None`: look it up in the cluster.
    pub kind: Option<WorkloadKind>,
    /// The intercept's namespace, else the cluster's; `None`: the context's.
    pub namespace: Option<String>,
    /// At least one.
    pub ports: Vec<PortMapping>,
    pub service: Option<String>,
    pub mechanism: Mechanism,
    pub to_pod: Vec<u16>,
    pub env: EnvExport,
    pub volumes: Volumes,
    /// `[intercept.preview]`, when enabled (http intercepts only).
    pub preview: Option<Preview>,
}

/// The query parameter (and cookie) that carries a preview token.
pub const PREVIEW_PARAM: &str = "tpr_preview";

/// `[intercept.preview]`: a link on the team's ingress whose token routes
/// requests to this machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Preview {
    /// Where the link lands; `None`: the http `path_prefix`, else the
    /// detected Ingress rule's path, else "/". Starts with '/'.
    pub path: Option<String>,
    /// What the file says about the ingress; what it leaves out is
    /// detected (no `host`) or defaulted.
    pub ingress: PreviewIngress,
}

/// `[intercept.preview.ingress]` as written: each `None` is detected or
/// defaulted (see [`PreviewIngress::complete`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PreviewIngress {
    /// The address to connect to; `None`: detect the Ingress.
    pub host: Option<String>,
    pub port: Option<u16>,
    pub tls: Option<bool>,
    /// Host header / SNI name (and the link's host) when it differs from `host`.
    pub l5: Option<String>,
}

/// A preview's ingress with every setting known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IngressAddress {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub l5: Option<String>,
}

impl PreviewIngress {
    /// The file's settings over `detected` (used for what the file leaves
    /// out), then the defaults: TLS unless `port` is set and is not 443;
    /// port 443 with TLS, else 80. `None` when no host is known.
    pub fn complete(&self, detected: Option<&IngressAddress>) -> Option<IngressAddress> {
        let host = self
            .host
            .clone()
            .or_else(|| detected.map(|d| d.host.clone()))?;
        // Detected values go together; the file's override them one by one.
        let tls = self
            .tls
            .or(detected.map(|d| d.tls))
            .unwrap_or_else(|| self.port.is_none_or(|p| p == 443));
        let port = self
            .port
            .or(detected.filter(|d| d.tls == tls).map(|d| d.port))
            .unwrap_or(if tls { 443 } else { 80 });
        let l5 = self
            .l5
            .clone()
            .or_else(|| detected.and_then(|d| d.l5.clone()))
            .filter(|l5| *l5 != host);
        Some(IngressAddress {
            host,
            port,
            tls,
            l5,
        })
    }
}

impl IngressAddress {
    /// The name a browser uses: `l5`, else `host`.
    pub fn name(&self) -> &str {
        self.l5.as_deref().unwrap_or(&self.host)
    }

    /// The preview link: `scheme://name[:port]path?tpr_preview=TOKEN`
    /// (`&` when `path` has a query already; the port only when it is not
    /// the scheme's default).
    pub fn url(&self, path: &str, token: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let name = self.name();
        let name = if name.contains(':') && !name.starts_with('[') {
            format!("[{name}]")
        } else {
            name.to_owned()
        };
        let default = if self.tls { 443 } else { 80 };
        let port = if self.port == default {
            String::new()
        } else {
            format!(":{}", self.port)
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{scheme}://{name}{port}{path}{sep}{PREVIEW_PARAM}={token}")
    }
}

/// The default of `[intercept.volumes] max_size`: 100 MiB.
pub const DEFAULT_VOLUMES_MAX_SIZE: u64 = 100 << 20;

/// `[intercept.volumes]`: the pod's mounted files, copied read-only.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Volumes {
    pub enabled: bool,
    /// `None`: tpr's private default directory.
    pub dir: Option<PathBuf>,
    /// Mount path patterns; empty: every configuration mount.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Bytes.
    pub max_size: u64,
}

impl Default for Volumes {
    fn default() -> Self {
        Volumes {
            enabled: true,
            dir: None,
            include: Vec::new(),
            exclude: Vec::new(),
            max_size: DEFAULT_VOLUMES_MAX_SIZE,
        }
    }
}

impl Intercept {
    /// The value of [`INTERCEPT_ID_HEADER`] that selects this developer's
    /// requests: `<install id>:<intercept name>`.
    pub fn id_header_value(&self, install_id: &str) -> String {
        format!("{install_id}:{}", self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Mechanism {
    /// Every connection to the port.
    Tcp,
    /// Requests matching every condition.
    Http(HttpMatch),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HttpMatch {
    /// Require [`INTERCEPT_ID_HEADER`] = `<install id>:<intercept name>`; the
    /// runner knows the install id, the file does not.
    pub id_header: bool,
    /// Extra header conditions, names lowercased.
    pub headers: Vec<HeaderMatch>,
    pub path_prefix: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeaderMatch {
    pub name: String,
    /// A regular expression (checked to compile) the whole value must match.
    pub regex: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EnvExport {
    /// `None`: the env goes only to processes, no file is written.
    pub file: Option<PathBuf>,
    pub format: EnvFormat,
    /// Empty: every variable.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl EnvExport {
    /// Whether the variable `key` is exported (include, then exclude).
    pub fn selects(&self, key: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| glob_match(p, key)))
            && !self.exclude.iter().any(|p| glob_match(p, key))
    }
}

/// `*` matches any run of characters, `?` one character; nothing else is special.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Process {
    pub name: String,
    /// Program and arguments; a string command is `["sh", "-c", it]`. Never empty.
    pub command: Vec<String>,
    pub workdir: PathBuf,
    /// Intercept whose pod environment the process gets.
    pub env_from: Option<String>,
    /// Extra variables, over the pod's.
    pub env: BTreeMap<String, String>,
    /// Paths whose changes restart the process; never empty.
    pub watch: Vec<PathBuf>,
    /// .gitignore-syntax patterns of changes to ignore.
    pub ignore: Vec<String>,
    pub debounce_ms: u64,
    pub stop_signal: StopSignal,
    pub stop_timeout_s: u64,
    pub on_exit: OnExit,
    /// How long an intercepted connection waits for the process to listen.
    pub connection_wait_ms: u64,
    /// When the process counts as ready, if the file says.
    pub ready: Option<Ready>,
}

/// A process is ready when it accepts connections on `port` (and answers
/// `path` there with a 2xx or 3xx, when given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ready {
    pub port: u16,
    pub path: Option<String>,
}

impl Process {
    pub fn debounce(&self) -> Duration {
        Duration::from_millis(self.debounce_ms)
    }
    pub fn stop_timeout(&self) -> Duration {
        Duration::from_secs(self.stop_timeout_s)
    }
    pub fn connection_wait(&self) -> Duration {
        Duration::from_millis(self.connection_wait_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("DB_*", "DB_HOST"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*_KEY", "AWS_SECRET_KEY"));
        assert!(glob_match("A?C", "ABC"));
        assert!(!glob_match("A?C", "AC"));
        assert!(!glob_match("DB_*", "XDB_HOST"));
        assert!(glob_match("*A*B*", "xxAyyBzz"));
    }

    fn address(host: &str, port: u16, tls: bool, l5: Option<&str>) -> IngressAddress {
        IngressAddress {
            host: host.into(),
            port,
            tls,
            l5: l5.map(Into::into),
        }
    }

    #[test]
    fn preview_urls() {
        let a = address("orders.example.com", 443, true, None);
        assert_eq!(
            a.url("/", "t0k"),
            "https://orders.example.com/?tpr_preview=t0k"
        );
        assert_eq!(
            address("10.0.0.7", 8443, true, Some("shop.test")).url("/a?b=c", "t"),
            "https://shop.test:8443/a?b=c&tpr_preview=t"
        );
        assert_eq!(
            address("shop.test", 80, false, None).url("/x/", "t"),
            "http://shop.test/x/?tpr_preview=t"
        );
        assert_eq!(
            address("shop.test", 443, false, None).url("/", "t"),
            "http://shop.test:443/?tpr_preview=t"
        );
        assert_eq!(
            address("fd00::1", 8080, false, None).url("/", "t"),
            "http://[fd00::1]:8080/?tpr_preview=t"
        );
    }

    #[test]
    fn preview_ingress_defaults_and_overrides() {
        let file = |host: Option<&str>, port, tls, l5: Option<&str>| PreviewIngress {
            host: host.map(Into::into),
            port,
            tls,
            l5: l5.map(Into::into),
        };
        // Nothing known: nothing to link to.
        assert_eq!(file(None, None, None, None).complete(None), None);
        // A host alone: https on 443.
        assert_eq!(
            file(Some("h"), None, None, None).complete(None),
            Some(address("h", 443, true, None))
        );
        // A port other than 443 alone: plain http.
        assert_eq!(
            file(Some("h"), Some(8080), None, None).complete(None),
            Some(address("h", 8080, false, None))
        );
        assert_eq!(
            file(Some("h"), None, Some(false), None).complete(None),
            Some(address("h", 80, false, None))
        );
        // Detected, then the file's keys win one by one.
        let found = address("10.0.0.5", 443, true, Some("shop.test"));
        assert_eq!(
            file(None, None, None, None).complete(Some(&found)),
            Some(found.clone())
        );
        assert_eq!(
            file(None, Some(8443), None, None).complete(Some(&found)),
            Some(address("10.0.0.5", 8443, true, Some("shop.test")))
        );
        assert_eq!(
            file(None, None, Some(false), None).complete(Some(&found)),
            Some(address("10.0.0.5", 80, false, Some("shop.test")))
        );
        // l5 equal to host says nothing more.
        assert_eq!(
            file(Some("h"), None, None, Some("h")).complete(None),
            Some(address("h", 443, true, None))
        );
    }

    #[test]
    fn env_selection() {
        let env = EnvExport {
            file: None,
            format: EnvFormat::Dotenv,
            include: vec!["DB_*".into(), "PORT".into()],
            exclude: vec!["*_PASSWORD".into()],
        };
        assert!(env.selects("DB_HOST"));
        assert!(env.selects("PORT"));
        assert!(!env.selects("DB_PASSWORD"));
        assert!(!env.selects("HOME"));
    }
}
