//! TOML → [`RawFile`]: checks keys and value types, collecting every problem
//! instead of stopping at the first (serde would stop at the first).

use std::collections::BTreeMap;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::choice::Choice;
use crate::port::{PortMapping, PortSpecError, port_number};
use crate::problem::{Problem, ProblemKind};
use crate::raw::{
    Command, List, Map, RawAgent, RawCluster, RawEnv, RawFile, RawHttp, RawIntercept, RawNetwork,
    RawPreview, RawPreviewIngress, RawProcess, RawQuantities, RawReady, RawResources, RawVolumes,
    Str,
};
use crate::source::{FileId, Sp, Span};
use crate::suggest::closest;

type Value<'i> = Spanned<DeValue<'i>>;

/// Parses one project file. With a TOML syntax error only the syntax errors
/// are reported: a half-parsed tree would only add confusing follow-ups.
pub fn read_file(file: FileId, text: &str) -> (RawFile, Vec<Problem>) {
    let mut r = Reader {
        file,
        problems: Vec::new(),
    };
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for e in errors {
            let range = e.span().unwrap_or(0..0);
            r.problems.push(Problem::new(
                ProblemKind::Syntax {
                    message: e.message().trim_end().to_owned(),
                },
                Span::new(file, range),
            ));
        }
        return (RawFile::default(), r.problems);
    }
    let mut t = Table::new("the top level", doc.get_ref());
    let raw = RawFile {
        format_version: t
            .take("format_version")
            .and_then(|v| r.int(v, "format_version", 0, i64::MAX)),
        cluster: t
            .take("cluster")
            .and_then(|v| r.table(v, "cluster", "[cluster]", cluster)),
        agent: t
            .take("agent")
            .and_then(|v| r.table(v, "agent", "[agent]", agent)),
        network: t
            .take("network")
            .and_then(|v| r.table(v, "network", "[network]", network)),
        intercept: t
            .take("intercept")
            .map(|v| r.tables(v, "intercept", intercept))
            .unwrap_or_default(),
        process: t
            .take("process")
            .map(|v| r.tables(v, "process", process))
            .unwrap_or_default(),
    };
    t.finish(&mut r);
    r.problems.sort_by_key(|p| p.span.range.start);
    (raw, r.problems)
}

fn cluster(r: &mut Reader, t: &mut Table) -> RawCluster {
    RawCluster {
        context: r.opt_str(t, "context"),
        namespace: r.opt_str(t, "namespace"),
    }
}

fn agent(r: &mut Reader, t: &mut Table) -> RawAgent {
    RawAgent {
        image: r.opt_str(t, "image"),
        pull_policy: t
            .take("pull_policy")
            .and_then(|v| r.choice(v, "pull_policy")),
        port: t.take("port").and_then(|v| r.port(v, "port")),
        resources: t
            .take("resources")
            .and_then(|v| r.table(v, "resources", "[agent.resources]", resources)),
    }
}

fn network(r: &mut Reader, t: &mut Table) -> RawNetwork {
    RawNetwork {
        outbound: t.take("outbound").and_then(|v| r.boolean(v, "outbound")),
        cluster_subnets: r.opt_strings(t, "cluster_subnets"),
    }
}

fn resources(r: &mut Reader, t: &mut Table) -> RawResources {
    RawResources {
        requests: t
            .take("requests")
            .and_then(|v| r.table(v, "requests", "[agent.resources.requests]", quantities)),
        limits: t
            .take("limits")
            .and_then(|v| r.table(v, "limits", "[agent.resources.limits]", quantities)),
    }
}

fn quantities(r: &mut Reader, t: &mut Table) -> RawQuantities {
    RawQuantities {
        cpu: r.opt_str(t, "cpu"),
        memory: r.opt_str(t, "memory"),
    }
}

fn intercept(r: &mut Reader, t: &mut Table, span: Span) -> RawIntercept {
    let mut i = RawIntercept {
        span,
        rejected: Vec::new(),
        name: r.opt_str(t, "name"),
        workload: r.opt_str(t, "workload"),
        kind: t.take("kind").and_then(|v| r.choice(v, "kind")),
        namespace: r.opt_str(t, "namespace"),
        port: t.take("port").and_then(|v| r.port_mappings(v)),
        service: r.opt_str(t, "service"),
        mechanism: t.take("mechanism").and_then(|v| r.choice(v, "mechanism")),
        http: t
            .take("http")
            .and_then(|v| r.table(v, "http", "[intercept.http]", http)),
        to_pod: t
            .take("to_pod")
            .and_then(|v| r.list(v, "to_pod", |r, v| r.port(v, "to_pod"))),
        env: t
            .take("env")
            .and_then(|v| r.table(v, "env", "[intercept.env]", env)),
        volumes: t
            .take("volumes")
            .and_then(|v| r.table(v, "volumes", "[intercept.volumes]", volumes)),
        preview: t.take("preview").and_then(|v| {
            let mut p = r.table(v, "preview", "[intercept.preview]", preview)?;
            p.span = Some(r.span(v.span()));
            Some(p)
        }),
    };
    i.rejected = t.rejected([
        ("workload", i.workload.is_none()),
        ("port", i.port.is_none()),
    ]);
    i
}

fn http(r: &mut Reader, t: &mut Table) -> RawHttp {
    RawHttp {
        headers: t.take("headers").and_then(|v| r.string_map(v, "headers")),
        path_prefix: r.opt_str(t, "path_prefix"),
        id_header: t.take("id_header").and_then(|v| r.boolean(v, "id_header")),
    }
}

fn env(r: &mut Reader, t: &mut Table) -> RawEnv {
    RawEnv {
        file: r.opt_str(t, "file"),
        format: t.take("format").and_then(|v| r.choice(v, "format")),
        include: r.opt_strings(t, "include"),
        exclude: r.opt_strings(t, "exclude"),
    }
}

fn volumes(r: &mut Reader, t: &mut Table) -> RawVolumes {
    RawVolumes {
        enabled: t.take("enabled").and_then(|v| r.boolean(v, "enabled")),
        dir: r.opt_str(t, "dir"),
        include: r.opt_strings(t, "include"),
        exclude: r.opt_strings(t, "exclude"),
        max_size: r.opt_str(t, "max_size"),
    }
}

fn preview(r: &mut Reader, t: &mut Table) -> RawPreview {
    RawPreview {
        span: None,
        enabled: t.take("enabled").and_then(|v| r.boolean(v, "enabled")),
        path: r.opt_str(t, "path"),
        ingress: t
            .take("ingress")
            .and_then(|v| r.table(v, "ingress", "[intercept.preview.ingress]", preview_ingress)),
    }
}

fn preview_ingress(r: &mut Reader, t: &mut Table) -> RawPreviewIngress {
    RawPreviewIngress {
        host: r.opt_str(t, "host"),
        port: t.take("port").and_then(|v| r.port(v, "port")),
        tls: t.take("tls").and_then(|v| r.boolean(v, "tls")),
        l5: r.opt_str(t, "l5"),
    }
}

fn ready(r: &mut Reader, t: &mut Table) -> RawReady {
    RawReady {
        port: t.take("port").and_then(|v| r.port(v, "port")),
        path: r.opt_str(t, "path"),
    }
}

fn process(r: &mut Reader, t: &mut Table, span: Span) -> RawProcess {
    let mut p = RawProcess {
        span,
        rejected: Vec::new(),
        name: r.opt_str(t, "name"),
        command: t.take("command").and_then(|v| r.command(v)),
        workdir: r.opt_str(t, "workdir"),
        env_from: r.opt_str(t, "env_from"),
        env: t.take("env").and_then(|v| r.string_map(v, "env")),
        watch: r.opt_strings(t, "watch"),
        ignore: r.opt_strings(t, "ignore"),
        debounce_ms: t
            .take("debounce_ms")
            .and_then(|v| r.int(v, "debounce_ms", 0, 60_000)),
        stop_signal: t
            .take("stop_signal")
            .and_then(|v| r.choice(v, "stop_signal")),
        stop_timeout_s: t
            .take("stop_timeout_s")
            .and_then(|v| r.int(v, "stop_timeout_s", 0, 3600)),
        on_exit: t.take("on_exit").and_then(|v| r.choice(v, "on_exit")),
        connection_wait_ms: t
            .take("connection_wait_ms")
            .and_then(|v| r.int(v, "connection_wait_ms", 0, 9_000)),
        ready: t
            .take("ready")
            .and_then(|v| r.table(v, "ready", "[process.ready]", ready)),
    };
    p.rejected = t.rejected([("command", p.command.is_none())]);
    p
}

/// The keys of one TOML table; remembers which were asked for, so that the
/// rest are reported as unknown.
struct Table<'a, 'i> {
    name: String,
    map: &'a DeTable<'i>,
    asked: Vec<&'static str>,
}

impl<'a, 'i> Table<'a, 'i> {
    fn new(name: impl Into<String>, map: &'a DeTable<'i>) -> Self {
        Self {
            name: name.into(),
            map,
            asked: Vec::new(),
        }
    }

    /// Required keys that are present but were not read (a problem was
    /// reported), or that an unknown key probably meant: no need to also
    /// report them missing.
    fn rejected<const N: usize>(&self, keys: [(&'static str, bool); N]) -> Vec<&'static str> {
        let meant = |key: &str| {
            self.map.iter().any(|(k, _)| {
                let k = k.get_ref().as_ref();
                !self.asked.contains(&k) && closest(k, [key]).is_some()
            })
        };
        keys.into_iter()
            .filter(|(key, unread)| *unread && (self.map.get(*key).is_some() || meant(key)))
            .map(|(key, _)| key)
            .collect()
    }

    fn take(&mut self, key: &'static str) -> Option<&'a Value<'i>> {
        self.asked.push(key);
        self.map.get(key)
    }

    fn finish(self, r: &mut Reader) {
        for (key, _) in self.map.iter() {
            let name = key.get_ref().as_ref();
            if !self.asked.contains(&name) {
                let kind = ProblemKind::UnknownKey {
                    key: name.to_owned(),
                    table: self.name.clone(),
                    expected: self.asked.clone(),
                    suggestion: closest(name, self.asked.iter().copied()),
                };
                r.problems.push(Problem::new(kind, r.span(key.span())));
            }
        }
    }
}

struct Reader {
    file: FileId,
    problems: Vec<Problem>,
}

impl Reader {
    fn span(&self, range: std::ops::Range<usize>) -> Span {
        Span::new(self.file, range)
    }

    fn sp<T, U>(&self, value: T, at: &Spanned<U>) -> Sp<T> {
        Sp::new(value, self.span(at.span()))
    }

    fn wrong_type<T>(&mut self, v: &Value, key: &str, expected: &'static str) -> Option<T> {
        let kind = ProblemKind::WrongType {
            key: key.to_owned(),
            expected,
            found: type_name(v.get_ref()),
        };
        self.problems.push(Problem::new(kind, self.span(v.span())));
        None
    }

    fn problem<T>(&mut self, kind: ProblemKind, at: &Value) -> Option<T> {
        self.problems.push(Problem::new(kind, self.span(at.span())));
        None
    }

    fn table<T>(
        &mut self,
        v: &Value,
        key: &str,
        name: &str,
        read: impl FnOnce(&mut Self, &mut Table) -> T,
    ) -> Option<T> {
        let DeValue::Table(map) = v.get_ref() else {
            return self.wrong_type(v, key, "a table");
        };
        let mut t = Table::new(name, map);
        let value = read(self, &mut t);
        t.finish(self);
        Some(value)
    }

    /// `[[key]]`: an array of tables, each read with its own span.
    fn tables<T>(
        &mut self,
        v: &Value,
        key: &str,
        read: impl Fn(&mut Self, &mut Table, Span) -> T,
    ) -> Vec<T> {
        let DeValue::Array(items) = v.get_ref() else {
            let expected = if key == "intercept" {
                "a list of tables ([[intercept]])"
            } else {
                "a list of tables ([[process]])"
            };
            return self.wrong_type(v, key, expected).unwrap_or_default();
        };
        let mut out = Vec::new();
        for item in items.iter() {
            let DeValue::Table(map) = item.get_ref() else {
                self.wrong_type::<()>(item, key, "a table");
                continue;
            };
            let mut t = Table::new(format!("[[{key}]]"), map);
            let value = read(self, &mut t, self.span(item.span()));
            t.finish(self);
            out.push(value);
        }
        out
    }

    fn string(&mut self, v: &Value, key: &str) -> Option<Sp<String>> {
        match v.get_ref() {
            DeValue::String(s) => Some(self.sp(s.to_string(), v)),
            _ => self.wrong_type(v, key, "a string"),
        }
    }

    fn opt_str(&mut self, t: &mut Table, key: &'static str) -> Str {
        t.take(key).and_then(|v| self.string(v, key))
    }

    fn opt_strings(&mut self, t: &mut Table, key: &'static str) -> List<String> {
        t.take(key)
            .and_then(|v| self.list(v, key, |r, v| r.string(v, key)))
    }

    fn boolean(&mut self, v: &Value, key: &str) -> Option<Sp<bool>> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(self.sp(*b, v)),
            _ => self.wrong_type(v, key, "true or false"),
        }
    }

    fn integer(&mut self, v: &Value, key: &str) -> Option<i64> {
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(n),
                Err(_) => self.problem(
                    ProblemKind::OutOfRange {
                        key: key.to_owned(),
                        value: i64::MAX,
                        min: i64::MIN,
                        max: i64::MAX,
                    },
                    v,
                ),
            },
            _ => self.wrong_type(v, key, "an integer"),
        }
    }

    fn int(&mut self, v: &Value, key: &str, min: i64, max: i64) -> Option<Sp<i64>> {
        let n = self.integer(v, key)?;
        if !(min..=max).contains(&n) {
            return self.problem(
                ProblemKind::OutOfRange {
                    key: key.to_owned(),
                    value: n,
                    min,
                    max,
                },
                v,
            );
        }
        Some(self.sp(n, v))
    }

    fn port(&mut self, v: &Value, key: &str) -> Option<Sp<u16>> {
        let n = match v.get_ref() {
            DeValue::Integer(_) => self.integer(v, key)?,
            _ => return self.wrong_type(v, key, "a port number"),
        };
        match port_number(n) {
            Ok(p) => Some(self.sp(p, v)),
            Err(value) => self.problem(ProblemKind::PortOutOfRange { value }, v),
        }
    }

    fn choice<T: Choice>(&mut self, v: &Value, key: &str) -> Option<Sp<T>> {
        let name = self.string(v, key)?;
        match T::from_name(&name.value) {
            Some(c) => Some(name.map(|_| c)),
            None => self.problem(
                ProblemKind::UnknownChoice {
                    key: T::WHAT.to_owned(),
                    value: name.value.clone(),
                    expected: T::NAMES,
                    suggestion: closest(&name.value, T::NAMES.iter().copied()),
                },
                v,
            ),
        }
    }

    fn list<T>(
        &mut self,
        v: &Value,
        key: &str,
        item: impl Fn(&mut Self, &Value) -> Option<Sp<T>>,
    ) -> List<T> {
        let DeValue::Array(items) = v.get_ref() else {
            return self.wrong_type(v, key, "a list");
        };
        // Every item is checked (all problems reported); one bad item
        // rejects the list, so that later checks see no half list.
        let values: Vec<_> = items.iter().map(|i| item(self, i)).collect();
        let values = values.into_iter().collect::<Option<Vec<_>>>()?;
        Some(self.sp(values, v))
    }

    fn string_map(&mut self, v: &Value, key: &str) -> Map {
        let DeValue::Table(map) = v.get_ref() else {
            return self.wrong_type(v, key, "a table of strings");
        };
        let mut out = BTreeMap::new();
        for (k, val) in map.iter() {
            let name = self.sp(k.get_ref().to_string(), k);
            if let Some(s) = self.string(val, &format!("{key}.{}", name.value)) {
                out.insert(name, s);
            }
        }
        Some(self.sp(out, v))
    }

    fn command(&mut self, v: &Value) -> Option<Sp<Command>> {
        match v.get_ref() {
            DeValue::String(s) => Some(self.sp(Command::Shell(s.to_string()), v)),
            DeValue::Array(_) => {
                let words = self.list(v, "command", |r, i| r.string(i, "command"))?;
                Some(self.sp(Command::Exec(words.value), v))
            }
            _ => self.wrong_type(v, "command", "a list of strings or a string"),
        }
    }

    fn port_mapping(&mut self, v: &Value) -> Option<Sp<PortMapping>> {
        let spec = match v.get_ref() {
            DeValue::Integer(_) => self.integer(v, "port")?.to_string(),
            DeValue::String(s) => s.to_string(),
            _ => return self.wrong_type(v, "port", "a port like 8080 or \"8080:http\""),
        };
        match spec.parse() {
            Ok(m) => Some(self.sp(m, v)),
            Err(PortSpecError::OutOfRange(value)) => {
                self.problem(ProblemKind::PortOutOfRange { value }, v)
            }
            Err(PortSpecError::Malformed(reason)) => {
                self.problem(ProblemKind::InvalidPortSpec { spec, reason }, v)
            }
        }
    }

    /// `port = "8080:http"` or `port = ["8080:http", "9090:grpc"]`.
    fn port_mappings(&mut self, v: &Value) -> List<PortMapping> {
        match v.get_ref() {
            DeValue::Array(_) => self.list(v, "port", |r, v| r.port_mapping(v)),
            _ => {
                let one = self.port_mapping(v)?;
                let span = one.span.clone();
                Some(Sp::new(vec![one], span))
            }
        }
    }
}

fn type_name(v: &DeValue) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}
