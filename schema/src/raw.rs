//! The project file as written: every key optional, every value with its
//! span. The JSON Schema is generated from these types, so their doc comments
//! are what editors show. [`crate::resolve`] turns them into a [`crate::Project`].

use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Serialize;

use crate::choice::{EnvFormat, MechanismKind, OnExit, PullPolicy, StopSignal, WorkloadKind};
use crate::port::PortMapping;
use crate::source::{Sp, Span};

pub type Str = Option<Sp<String>>;
pub type List<T> = Option<Sp<Vec<Sp<T>>>>;
pub type Map = Option<Sp<BTreeMap<Sp<String>, Sp<String>>>>;

/// `telepresence.toml`: which workloads of a Kubernetes application to route
/// to this machine, and which local processes to run with their environment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields, title = "telepresence.toml")]
pub struct RawFile {
    /// Version of this file format; tpr refuses files newer than it reads. Default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1))]
    pub format_version: Option<Sp<i64>>,
    /// The cluster to work in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<RawCluster>,
    /// The traffic agent that tpr adds to intercepted pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<RawAgent>,
    /// How the local processes reach the network (outbound to the cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<RawNetwork>,
    /// Workloads whose traffic comes to this machine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intercept: Vec<RawIntercept>,
    /// Local processes that tpr starts, and restarts when files change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub process: Vec<RawProcess>,
}

/// The cluster to work in.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Cluster")]
pub struct RawCluster {
    /// kubeconfig context. Default: the current context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Str,
    /// Namespace of workloads whose intercept names none. Default: the context's namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: Str,
}

/// The traffic agent that tpr adds to intercepted pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Agent")]
pub struct RawAgent {
    /// Agent image. Default: `tpr-agent:<tpr version>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Str,
    /// Kubernetes imagePullPolicy of the agent container. Default: IfNotPresent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<Sp<PullPolicy>>,
    /// The agent's gRPC port, bound to 127.0.0.1 in the pod. Default: 9900.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<PortNumber>")]
    pub port: Option<Sp<u16>>,
    /// Resources of the agent container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<RawResources>,
}

/// How the local processes reach the network.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Network")]
pub struct RawNetwork {
    /// Run each process in its own network namespace whose connections to
    /// the cluster leave from the intercepted pod (its DNS, source address,
    /// NetworkPolicies), other destinations from this machine. Default: on
    /// when the file has an intercept (where namespaces are not available,
    /// tpr warns once and runs processes as before; `true` makes that an
    /// error). Linux, as root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound: Option<Sp<bool>>,
    /// More address ranges (CIDR, e.g. "10.0.0.0/8") to dial through the
    /// agent, beside the pod's and Services' ranges tpr learns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_subnets: List<String>,
}

/// Resource requests and limits of the agent container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Resources")]
pub struct RawResources {
    /// What the scheduler reserves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<RawQuantities>,
    /// The most the agent may use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<RawQuantities>,
}

/// CPU and memory, as Kubernetes quantities.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Quantities")]
pub struct RawQuantities {
    /// CPU, e.g. "100m" or "0.5".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Str,
    /// Memory, e.g. "64Mi".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Str,
}

/// A workload whose traffic on some Service ports comes to this machine.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Intercept")]
pub struct RawIntercept {
    /// The `[[intercept]]` header (or inline table) this came from.
    #[serde(skip)]
    #[schemars(skip)]
    pub span: Span,
    /// Required keys present but invalid, or misspelt: not reported missing.
    #[serde(skip)]
    #[schemars(skip)]
    pub rejected: Vec<&'static str>,
    /// Intercept name. Default: the workload name, or `<workload>-<namespace>` when `namespace` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: Str,
    /// Name of the Deployment, ReplicaSet or StatefulSet.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(required)]
    #[schemars(pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"))]
    pub workload: Str,
    /// Kind of the workload. Default: found in the cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<Sp<WorkloadKind>>,
    /// Namespace of the workload. Default: `cluster.namespace`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: Str,
    /// Port(s) to intercept: `"LOCAL[:SERVICE_PORT]"`, or a list of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "one_or_many_ports", required)]
    pub port: List<PortMapping>,
    /// The Service to use when several select the workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub service: Str,
    /// `tcp`: all traffic to the port; `http`: only requests that match `http`. Default: http when `http` is set, else tcp.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<Sp<MechanismKind>>,
    /// Which requests an http intercept takes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<RawHttp>,
    /// Pod ports (e.g. sidecars) to reach as localhost:PORT on this machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Vec<PortNumber>>")]
    pub to_pod: List<u16>,
    /// Where and how to export the pod's environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<RawEnv>,
    /// The files the pod mounts, copied read-only for the processes that take this intercept's environment (`TELEPRESENCE_ROOT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumes: Option<RawVolumes>,
    /// A preview link for this (http) intercept: a URL on the team's own ingress carrying a secret token; requests with it (then its cookie) come to this machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<RawPreview>,
}

/// A preview link: `https://<host>/<path>?tpr_preview=<token>` on the team's own ingress. The token (128 random bits, kept per install id and intercept until `tpr preview rotate`) is a bearer secret: whoever has the link reaches this machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Preview")]
pub struct RawPreview {
    /// The table's place in the file (the last file that set it).
    #[serde(skip)]
    #[schemars(skip)]
    pub span: Option<Span>,
    /// Make the preview link. Default: true when this table is present (`preview.enabled = true` alone asks for a link with every setting detected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<Sp<bool>>,
    /// Where the link lands, e.g. "/orders/". Default: `http.path_prefix`, else the path of the detected Ingress rule, else "/".
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^/"))]
    pub path: Str,
    /// The ingress the link goes through. Default: detected from the Ingresses of the intercept's namespace that reach its Service port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<RawPreviewIngress>,
}

/// The ingress a preview link goes through.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "PreviewIngress")]
pub struct RawPreviewIngress {
    /// The address to connect to: a DNS name or an IP address, without scheme or port. Set, it turns detection off. Default: detected (the Ingress rule's host, or its load balancer's address when it has one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Str,
    /// The port to connect to. Default: 443 with TLS, else 80.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<PortNumber>")]
    pub port: Option<Sp<u16>>,
    /// Whether the ingress speaks TLS (the link is https). Default: true, or false when `port` is set and is not 443.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Sp<bool>>,
    /// The name in the Host header and TLS SNI, and in the link, when it differs from `host` (e.g. `host` is the load balancer's IP). Default: `host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l5: Str,
}

/// Which requests an http intercept takes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Http")]
pub struct RawHttp {
    /// Header name → regular expression the whole value must match (every header listed must match).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Map,
    /// Only requests whose path starts with this.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^/"))]
    pub path_prefix: Str,
    /// Also require `x-telepresence-intercept-id: <install id>:<intercept name>`. Default: true when `headers` is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_header: Option<Sp<bool>>,
}

/// Where and how to export the pod's environment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Env")]
pub struct RawEnv {
    /// File to write, relative to this file's directory (mode 0600). Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Str,
    /// Format of the file. Default: from the extension (.json, .sh), else dotenv.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<Sp<EnvFormat>>,
    /// Export only variables matching one of these patterns (`*` and `?`). Default: all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include: List<String>,
    /// Never export variables matching these patterns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude: List<String>,
}

/// The files the pod mounts, copied read-only to this machine: `<dir><mountPath>`, kept current; the processes that take the intercept's environment get `TELEPRESENCE_ROOT=<dir>`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Volumes")]
pub struct RawVolumes {
    /// Copy the pod's mounted files. Default: true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<Sp<bool>>,
    /// Where the copy goes (relative: to this file's directory); removed when tpr up ends. Default: a private directory under $XDG_RUNTIME_DIR (else tpr's state directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Str,
    /// Mount paths to copy (`*` and `?`; a directory selects the mounts under it). emptyDir, PVC and other data volumes are copied only when a pattern matches their own mount path. Default: every ConfigMap, Secret, projected and downward-API mount.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Vec<MountPathPattern>>")]
    pub include: List<String>,
    /// Mount paths not to copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Vec<MountPathPattern>>")]
    pub exclude: List<String>,
    /// The most the copied files may hold, e.g. "100MiB" (units B, KiB, MiB, GiB, KB, MB, GB). Default: "100MiB".
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9]+ ?([KMG]i?B|B)?$"))]
    pub max_size: Str,
}

/// An absolute mount path in the pod, `*` and `?` allowed (only its schema is used).
struct MountPathPattern;

impl JsonSchema for MountPathPattern {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MountPathPattern".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "pattern": "^/" })
    }
}

/// A local process that tpr runs with an intercept's environment.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Process")]
pub struct RawProcess {
    /// The `[[process]]` header this came from.
    #[serde(skip)]
    #[schemars(skip)]
    pub span: Span,
    /// Required keys present but invalid, or misspelt: not reported missing.
    #[serde(skip)]
    #[schemars(skip)]
    pub rejected: Vec<&'static str>,
    /// Process name, unique in the file. Default: `env_from`, else "main".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Str,
    /// Program and arguments, or one string run by `sh -c`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(required)]
    pub command: Option<Sp<Command>>,
    /// Working directory, relative to this file's directory. Default: this file's directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Str,
    /// The intercept whose pod environment the process gets. Default: the only intercept, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_from: Str,
    /// Extra environment, over the pod's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Map,
    /// Files and directories whose changes restart the process, relative to this file. Default: `workdir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: List<String>,
    /// Patterns of changes to ignore, in .gitignore syntax (.gitignore itself is respected too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore: List<String>,
    /// Quiet time after a change before restarting, in milliseconds. Default: 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 60000))]
    pub debounce_ms: Option<Sp<i64>>,
    /// Signal that asks the process to stop. Default: SIGTERM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<Sp<StopSignal>>,
    /// Seconds to wait after the stop signal before SIGKILL. Default: 5.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub stop_timeout_s: Option<Sp<i64>>,
    /// When the process exits by itself: `wait` for a change, `restart` now, or `stop` tpr. Default: wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_exit: Option<Sp<OnExit>>,
    /// How long an intercepted connection waits for the process to listen (while it starts or restarts) before it is refused and HTTP requests get 503, in milliseconds. Default: 5000.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 9000))]
    pub connection_wait_ms: Option<Sp<i64>>,
    /// When the process is ready: it accepts connections on `port`, or answers `path` there with a 2xx or 3xx. tpr says so (`process_ready`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<RawReady>,
}

/// A process's readiness check.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Ready")]
pub struct RawReady {
    /// The local port the process listens on.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(required, with = "Option<PortNumber>")]
    pub port: Option<Sp<u16>>,
    /// An HTTP path that answers 2xx or 3xx once ready. Default: a TCP connect is enough.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^/"))]
    pub path: Str,
}

/// A command: a list is run as is; a string is run by `sh -c`.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Command {
    /// Program and arguments, run without a shell.
    Exec(Vec<Sp<String>>),
    /// A shell command line.
    Shell(String),
}

/// A TCP port number, 1..=65535 (only its schema is used).
struct PortNumber;

impl JsonSchema for PortNumber {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PortNumber".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "integer", "minimum": 1, "maximum": 65535 })
    }
}

fn one_or_many_ports(generator: &mut SchemaGenerator) -> Schema {
    let one = generator.subschema_for::<PortMapping>();
    json_schema!({ "anyOf": [one, { "type": "array", "items": one, "minItems": 1 }] })
}
