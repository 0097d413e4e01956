//! [`RawFile`] → [`Project`]: defaults, computed names, and the checks that
//! need the whole file (duplicates, collisions, references).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::choice::{EnvFormat, MechanismKind, OnExit, PullPolicy, StopSignal};
use crate::crosscheck;
use crate::merge::{process_name, raw_intercept_name};
use crate::names::{dns_label_problem, dns_subdomain_problem};
use crate::problem::{Problem, ProblemKind};
use crate::project::*;
use crate::raw::{
    Command, RawAgent, RawEnv, RawFile, RawHttp, RawIntercept, RawNetwork, RawPreview, RawProcess,
    RawQuantities, RawVolumes, Str,
};
use crate::source::{FileId, Sp, Span};
use crate::suggest::closest;

/// Resolves a merged file; `root` is the directory of the team file.
pub fn resolve(raw: RawFile, root: &Path) -> Result<Project, Vec<Problem>> {
    let mut r = Resolver {
        problems: crosscheck::check_intercepts(&raw.intercept),
    };
    r.problems.extend(crosscheck::check_processes(&raw.process));
    // Only one version exists; a later one gets a migration here.
    if let Some(v) = raw
        .format_version
        .filter(|v| v.value != i64::from(FORMAT_VERSION))
    {
        let kind = ProblemKind::UnsupportedFormatVersion {
            found: v.value,
            supported: FORMAT_VERSION,
        };
        r.push(kind, &v.span);
    }
    let cluster = raw.cluster.unwrap_or_default();
    let cluster = Cluster {
        context: r.non_empty(cluster.context, "context"),
        namespace: r.name(cluster.namespace, "namespace", dns_label_problem),
    };
    let agent = r.agent(raw.agent.unwrap_or_default());
    let network = r.network(raw.network.unwrap_or_default());
    // Names from the file, so that a broken intercept does not also make
    // every `env_from` naming it fail.
    let names: Vec<String> = raw
        .intercept
        .iter()
        .filter_map(raw_intercept_name)
        .collect();
    let intercepts: Vec<Intercept> = raw
        .intercept
        .into_iter()
        .filter_map(|i| r.intercept(i, &cluster, root))
        .collect();
    let only = if names.len() == 1 {
        names.first().cloned()
    } else {
        None
    };
    let processes: Vec<Process> = raw
        .process
        .into_iter()
        .filter_map(|p| r.process(p, &names, only.as_deref(), root))
        .collect();
    if intercepts.is_empty() && processes.is_empty() && r.problems.is_empty() {
        r.push(ProblemKind::NothingToDo, &Span::new(FileId::Team, 0..0));
    }
    if r.problems.is_empty() {
        Ok(Project {
            format_version: FORMAT_VERSION,
            root: root.to_owned(),
            cluster,
            agent,
            network,
            intercepts,
            processes,
        })
    } else {
        Err(r.problems)
    }
}

struct Resolver {
    problems: Vec<Problem>,
}

impl Resolver {
    fn push(&mut self, kind: ProblemKind, span: &Span) {
        self.problems.push(Problem::new(kind, span.clone()));
    }

    fn missing(&mut self, key: &'static str, table: String, example: &'static str, span: &Span) {
        self.push(
            ProblemKind::MissingKey {
                key,
                table,
                example,
            },
            span,
        );
    }

    fn invalid(
        &mut self,
        key: &str,
        reason: impl Into<String>,
        expected: impl Into<String>,
        span: &Span,
    ) {
        let kind = ProblemKind::InvalidValue {
            key: key.to_owned(),
            reason: reason.into(),
            expected: expected.into(),
        };
        self.push(kind, span);
    }

    fn non_empty(&mut self, s: Str, key: &str) -> Option<String> {
        let s = s?;
        if s.value.trim().is_empty() {
            self.invalid(
                key,
                "it is empty",
                format!("remove `{key}` to use the default"),
                &s.span,
            );
            return None;
        }
        Some(s.value)
    }

    fn name(
        &mut self,
        s: Str,
        what: &'static str,
        rule: fn(&str) -> Option<&'static str>,
    ) -> Option<String> {
        let s = s?;
        if let Some(reason) = rule(&s.value) {
            self.push(
                ProblemKind::InvalidName {
                    what,
                    value: s.value.clone(),
                    reason,
                },
                &s.span,
            );
        }
        Some(s.value)
    }

    fn network(&mut self, n: RawNetwork) -> Network {
        let mut subnets = Vec::new();
        for s in n.cluster_subnets.map(|l| l.value).unwrap_or_default() {
            if is_cidr(&s.value) {
                subnets.push(s.value);
            } else {
                self.invalid(
                    "cluster_subnets",
                    format!("`{}` is not an address range", s.value),
                    "an address and a prefix length, e.g. \"10.0.0.0/8\"",
                    &s.span,
                );
            }
        }
        Network {
            outbound: n.outbound.map(|b| b.value),
            cluster_subnets: subnets,
        }
    }

    fn agent(&mut self, a: RawAgent) -> AgentSettings {
        let res = a.resources.unwrap_or_default();
        AgentSettings {
            image: self
                .non_empty(a.image, "image")
                .unwrap_or_else(default_agent_image),
            pull_policy: a.pull_policy.map_or(PullPolicy::IfNotPresent, |p| p.value),
            port: a.port.map_or(DEFAULT_AGENT_PORT, |p| p.value),
            resources: Resources {
                requests: self.quantities(res.requests.unwrap_or_default()),
                limits: self.quantities(res.limits.unwrap_or_default()),
            },
        }
    }

    fn quantities(&mut self, q: RawQuantities) -> Quantities {
        Quantities {
            cpu: self.quantity(q.cpu, "cpu"),
            memory: self.quantity(q.memory, "memory"),
        }
    }

    fn quantity(&mut self, s: Str, key: &str) -> Option<String> {
        let s = s?;
        let re =
            regex::Regex::new(r"^[0-9]+(\.[0-9]+)?([mkMGTPE]|[KMGTPE]i)?$").expect("valid regex");
        if !re.is_match(&s.value) {
            let example = if key == "cpu" {
                "\"100m\" or \"0.5\""
            } else {
                "\"64Mi\" or \"1Gi\""
            };
            self.invalid(
                key,
                format!("`{}` is not a Kubernetes quantity", s.value),
                format!("e.g. {example}"),
                &s.span,
            );
        }
        Some(s.value)
    }

    fn intercept(&mut self, i: RawIntercept, cluster: &Cluster, root: &Path) -> Option<Intercept> {
        let name = raw_intercept_name(&i);
        let table = match &name {
            Some(n) => format!("intercept `{n}`"),
            None => "[[intercept]]".to_owned(),
        };
        if i.workload.is_none() && !i.rejected.contains(&"workload") {
            self.missing("workload", table.clone(), "workload = \"orders\"", &i.span);
        }
        if i.port.is_none() && !i.rejected.contains(&"port") {
            self.missing(
                "port",
                table.clone(),
                "port = \"8080\" (local port) or \"8080:http\"",
                &i.span,
            );
        }
        if let Some(p) = i.port.as_ref().filter(|p| p.value.is_empty()) {
            self.invalid(
                "port",
                "the list is empty",
                "list at least one port, e.g. [\"8080:http\"]",
                &p.span,
            );
        }
        let workload = self.name(i.workload, "workload name", dns_subdomain_problem);
        self.name(i.name, "intercept name", dns_label_problem);
        let namespace = self.name(i.namespace, "namespace", dns_label_problem);
        let service = self.name(i.service, "service name", dns_label_problem);
        let tcp_at = i
            .mechanism
            .as_ref()
            .filter(|m| m.value == MechanismKind::Tcp)
            .map(|m| m.span.clone());
        // As Telepresence's `--http-*` flags do, `http` settings imply the
        // http mechanism; only an explicit `tcp` contradicts them.
        let mechanism = match (i.mechanism.map(|m| m.value), i.http) {
            (Some(MechanismKind::Http), http) => {
                Mechanism::Http(self.http(http.unwrap_or_default()))
            }
            (None, Some(http)) => Mechanism::Http(self.http(http)),
            (_, Some(http)) => {
                let at = http_span(&http).unwrap_or_else(|| i.span.clone());
                self.push(ProblemKind::HttpWithoutHttpMechanism, &at);
                Mechanism::Tcp
            }
            (_, None) => Mechanism::Tcp,
        };
        let env = self.env(i.env.unwrap_or_default(), root);
        let volumes = self.volumes(i.volumes.unwrap_or_default(), root);
        let preview = i
            .preview
            .and_then(|p| self.preview(p, &mechanism, tcp_at, &i.span));
        let workload = workload?;
        Some(Intercept {
            name: name.unwrap_or_else(|| workload.clone()),
            kind: i.kind.map(|k| k.value),
            namespace: namespace.or_else(|| cluster.namespace.clone()),
            ports: i
                .port
                .map(|p| p.value.into_iter().map(|m| m.value).collect())
                .unwrap_or_default(),
            service,
            mechanism,
            to_pod: i
                .to_pod
                .map(|p| p.value.into_iter().map(|p| p.value).collect())
                .unwrap_or_default(),
            env,
            volumes,
            preview,
            workload,
        })
    }

    /// `[intercept.preview]`: `None` when disabled. Only an http intercept
    /// can have one (a link selects requests; tcp takes them all).
    fn preview(
        &mut self,
        p: RawPreview,
        mechanism: &Mechanism,
        tcp_at: Option<Span>,
        intercept_at: &Span,
    ) -> Option<Preview> {
        let enabled = p.enabled.as_ref().is_none_or(|b| b.value);
        if let Some(path) = &p.path {
            let v = &path.value;
            let problem = if !v.starts_with('/') {
                Some("it does not start with '/'")
            } else if v.contains('#') {
                Some("it has a fragment ('#'); the token goes into the query")
            } else if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                Some("it has spaces or control characters")
            } else {
                None
            };
            if let Some(reason) = problem {
                self.invalid(
                    "path",
                    reason,
                    "a path on the ingress, e.g. path = \"/\" or \"/orders/?tab=new\"",
                    &path.span,
                );
            }
        }
        let ingress = p.ingress.unwrap_or_default();
        for (key, value) in [("host", &ingress.host), ("l5", &ingress.l5)] {
            if let Some(v) = value
                && let Some(reason) = host_problem(&v.value)
            {
                self.invalid(
                    key,
                    format!("`{}` {reason}", v.value),
                    "a DNS name or an IP address, e.g. \"orders.dev.example.com\" \
                     (the scheme comes from `tls`, the port from `port`)",
                    &v.span,
                );
            }
        }
        if enabled && matches!(mechanism, Mechanism::Tcp) {
            let at = p
                .span
                .clone()
                .or_else(|| p.enabled.as_ref().map(|b| b.span.clone()))
                .unwrap_or_else(|| intercept_at.clone());
            let mut problem = Problem::new(
                ProblemKind::PreviewWithoutHttpMechanism {
                    explicit: tcp_at.is_some(),
                },
                at,
            );
            if let Some(tcp) = tcp_at {
                problem = problem.with_related(tcp, "mechanism tcp");
            }
            self.problems.push(problem);
        }
        enabled.then(|| Preview {
            path: p.path.map(|p| p.value),
            ingress: PreviewIngress {
                host: ingress.host.map(|h| h.value),
                port: ingress.port.map(|p| p.value),
                tls: ingress.tls.map(|t| t.value),
                l5: ingress.l5.map(|l| l.value),
            },
        })
    }

    fn volumes(&mut self, v: RawVolumes, root: &Path) -> Volumes {
        let dir = v.dir.and_then(|d| {
            if d.value.trim().is_empty() {
                self.invalid(
                    "dir",
                    "it is empty",
                    "give a directory, e.g. \"/tmp/orders-root\", or remove `dir` for tpr's private default",
                    &d.span,
                );
                return None;
            }
            Some(under(root, &d.value))
        });
        let mut paths = |key: &str, l: Option<Sp<Vec<Sp<String>>>>| -> Vec<String> {
            let mut out = Vec::new();
            for p in l.map(|l| l.value).unwrap_or_default() {
                if p.value.starts_with('/') {
                    out.push(p.value);
                } else {
                    self.invalid(
                        key,
                        format!("`{}` is not an absolute mount path", p.value),
                        "a mount path of the app container, e.g. \"/etc/config\" (`*` and `?` allowed)",
                        &p.span,
                    );
                }
            }
            out
        };
        let include = paths("include", v.include);
        let exclude = paths("exclude", v.exclude);
        let max_size = match v.max_size {
            None => DEFAULT_VOLUMES_MAX_SIZE,
            Some(s) => parse_size(&s.value).unwrap_or_else(|| {
                self.invalid(
                    "max_size",
                    format!("`{}` is not a size", s.value),
                    "a number of bytes with a unit, e.g. \"100MiB\" or \"2GB\"",
                    &s.span,
                );
                DEFAULT_VOLUMES_MAX_SIZE
            }),
        };
        Volumes {
            enabled: v.enabled.is_none_or(|b| b.value),
            dir,
            include,
            exclude,
            max_size,
        }
    }

    fn http(&mut self, h: RawHttp) -> HttpMatch {
        let mut headers = Vec::new();
        for (name, regex) in h.headers.map(|m| m.value).unwrap_or_default() {
            let valid_name = !name.value.is_empty()
                && name
                    .value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid_name {
                self.invalid(
                    "headers",
                    format!("`{}` is not an HTTP header name", name.value),
                    "header names are letters, digits and - (e.g. x-dev)",
                    &name.span,
                );
            }
            if let Err(e) = regex::Regex::new(&regex.value) {
                let reason = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("invalid")
                    .trim()
                    .trim_start_matches("error: ")
                    .to_owned();
                let reason = format!("`{}` is not a regular expression ({reason})", regex.value);
                self.invalid(
                    &format!("headers.{}", name.value),
                    reason,
                    "a header value is matched by a regular expression, e.g. \"alice|bob\"; \
                     in a TOML string its backslashes are doubled: \"a\\\\.b\" matches \"a.b\"",
                    &regex.span,
                );
            }
            headers.push(HeaderMatch {
                name: name.value.to_ascii_lowercase(),
                regex: regex.value,
            });
        }
        if let Some(p) = h.path_prefix.as_ref().filter(|p| !p.value.starts_with('/')) {
            self.invalid(
                "path_prefix",
                "it does not start with '/'",
                format!("e.g. path_prefix = \"/{}\"", p.value),
                &p.span,
            );
        }
        HttpMatch {
            id_header: h.id_header.map_or(headers.is_empty(), |b| b.value),
            headers,
            path_prefix: h.path_prefix.map(|p| p.value),
        }
    }

    fn env(&mut self, e: RawEnv, root: &Path) -> EnvExport {
        let file = e.file.and_then(|f| {
            if f.value.trim().is_empty() {
                self.invalid(
                    "file",
                    "it is empty",
                    "give a file name, e.g. \".env.orders\", or remove `file`",
                    &f.span,
                );
                return None;
            }
            Some(under(root, &f.value))
        });
        let format = match (e.format, &file) {
            (Some(f), _) => f.value,
            (None, Some(path)) => EnvFormat::for_file(path),
            (None, None) => EnvFormat::Dotenv,
        };
        let patterns = |l: Option<Sp<Vec<Sp<String>>>>| -> Vec<String> {
            l.map(|l| l.value.into_iter().map(|p| p.value).collect())
                .unwrap_or_default()
        };
        EnvExport {
            file,
            format,
            include: patterns(e.include),
            exclude: patterns(e.exclude),
        }
    }

    fn process(
        &mut self,
        p: RawProcess,
        intercepts: &[String],
        only: Option<&str>,
        root: &Path,
    ) -> Option<Process> {
        let name = process_name(&p);
        let command = match p.command {
            None if p.rejected.contains(&"command") => None,
            None => {
                self.missing(
                    "command",
                    format!("process `{name}`"),
                    "command = [\"go\", \"run\", \".\"]",
                    &p.span,
                );
                None
            }
            Some(c) => {
                let words: Vec<String> = match c.value {
                    Command::Exec(words) => words.into_iter().map(|w| w.value).collect(),
                    Command::Shell(line) => vec!["sh".into(), "-c".into(), line],
                };
                let program = if words.first().is_some_and(|w| w == "sh") && words.len() == 3 {
                    words.get(2)
                } else {
                    words.first()
                };
                if program.is_none_or(|w| w.trim().is_empty()) {
                    self.push(
                        ProblemKind::EmptyCommand {
                            process: name.clone(),
                        },
                        &c.span,
                    );
                }
                Some(words)
            }
        };
        let env_from = match p.env_from {
            Some(e) if !intercepts.contains(&e.value) => {
                let kind = ProblemKind::UnknownEnvFrom {
                    name: e.value.clone(),
                    known: intercepts.to_vec(),
                    suggestion: closest(&e.value, intercepts.iter().map(String::as_str))
                        .map(str::to_owned),
                };
                self.push(kind, &e.span);
                None
            }
            Some(e) => Some(e.value),
            None => only.map(str::to_owned),
        };
        let mut env = BTreeMap::new();
        for (k, v) in p.env.map(|m| m.value).unwrap_or_default() {
            if k.value.is_empty() || k.value.contains('=') || k.value.contains('\0') {
                self.invalid(
                    "env",
                    format!("`{}` is not a variable name", k.value),
                    "names are non-empty and contain no '='",
                    &k.span,
                );
            }
            env.insert(k.value, v.value);
        }
        let ready = p.ready.and_then(|r| {
            let Some(port) = r.port else {
                self.invalid(
                    "ready",
                    "[process.ready] has no `port`",
                    "add `port = <the port the process listens on>`",
                    &p.span,
                );
                return None;
            };
            if let Some(path) = r.path.as_ref().filter(|p| !p.value.starts_with('/')) {
                self.invalid(
                    "path",
                    format!("`{}` is not a path", path.value),
                    "a path starts with `/`, e.g. \"/healthz\"",
                    &path.span,
                );
            }
            Some(Ready {
                port: port.value,
                path: r.path.map(|p| p.value),
            })
        });
        let workdir = under(root, &p.workdir.map_or_else(String::new, |w| w.value));
        let watch = match p.watch {
            Some(w) if !w.value.is_empty() => {
                w.value.into_iter().map(|w| under(root, &w.value)).collect()
            }
            _ => vec![workdir.clone()],
        };
        Some(Process {
            name,
            command: command?,
            workdir,
            env_from,
            env,
            watch,
            ignore: p
                .ignore
                .map(|l| l.value.into_iter().map(|i| i.value).collect())
                .unwrap_or_default(),
            debounce_ms: p.debounce_ms.map_or(100, |d| d.value as u64),
            stop_signal: p.stop_signal.map_or(StopSignal::Term, |s| s.value),
            stop_timeout_s: p.stop_timeout_s.map_or(5, |s| s.value as u64),
            on_exit: p.on_exit.map_or(OnExit::Wait, |o| o.value),
            connection_wait_ms: p.connection_wait_ms.map_or(5000, |d| d.value as u64),
            ready,
        })
    }
}

/// `path` relative to `root` (unless absolute), without `.` components.
/// "100MiB", "2 GB", "512": bytes.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n: u64 = text[..digits].parse().ok()?;
    let unit: u64 = match text[digits..].trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(unit)
}

fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// Where to point at `[intercept.http]`: its first key's value.
fn http_span(h: &RawHttp) -> Option<Span> {
    h.headers
        .as_ref()
        .map(|m| m.span.clone())
        .or_else(|| h.path_prefix.as_ref().map(|p| p.span.clone()))
        .or_else(|| h.id_header.as_ref().map(|b| b.span.clone()))
}

/// Why `s` is not a host name or IP address for a URL, if it is not.
fn host_problem(s: &str) -> Option<&'static str> {
    if s.trim().is_empty() {
        return Some("is empty");
    }
    if s.contains("://") {
        return Some("has a scheme");
    }
    if s.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    if s.contains('/') {
        return Some("has a path (that is `path`)");
    }
    if s.contains(':') {
        return Some("has a port (that is `port`)");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if s.len() > 253 || !s.trim_end_matches('.').split('.').all(label_ok) {
        return Some("is not a DNS name");
    }
    None
}

/// `10.0.0.0/8`, `fd00::/64`.
fn is_cidr(s: &str) -> bool {
    let Some((ip, prefix)) = s.split_once('/') else {
        return false;
    };
    match (ip.parse::<std::net::IpAddr>(), prefix.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(p)) => p <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(p)) => p <= 128,
        _ => false,
    }
}
