//! From the project file to what the cluster side needs: intercept targets,
//! the agent's settings, the intercepts to register, and the event that
//! says an intercept is active. Pure, so it is unit-tested.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use tpr_schema::{INTERCEPT_ID_HEADER, Intercept, Mechanism as FileMechanism, PortId, Project};

use super::event::{HeaderRule, InterceptPort, UpEvent, WorkloadRef};
use crate::k8s::{self, AgentSpec, InterceptTarget, Resolved};
use crate::tunnel::{HeaderMatch, InterceptSpec, Mechanism, PreviewToken};

/// The target of one port of an intercept.
pub fn target(intercept: &Intercept, namespace: &str, port: Option<&PortId>) -> InterceptTarget {
    InterceptTarget {
        workload: intercept.workload.clone(),
        kind: intercept
            .kind
            .and_then(|k| k.to_string().parse::<k8s::WorkloadKind>().ok()),
        namespace: namespace.to_owned(),
        service: intercept.service.clone(),
        port: port.cloned(),
    }
}

/// The namespace of an intercept: its own, the file's, else the context's.
pub fn namespace_of(project: &Project, intercept: &Intercept, context_default: &str) -> String {
    intercept
        .namespace
        .clone()
        .or_else(|| project.cluster.namespace.clone())
        .unwrap_or_else(|| context_default.to_owned())
}

/// Resolves an intercept's workload and Service as `tpr up` would, on its
/// first port: for the commands that act on one intercept of the file.
pub async fn resolve_intercept(
    cluster: &k8s::Cluster,
    project: &Project,
    intercept: &Intercept,
) -> Result<Resolved, k8s::K8sError> {
    let ns = namespace_of(project, intercept, cluster.default_namespace());
    let port = intercept
        .ports
        .first()
        .and_then(|p| p.service_port.as_ref());
    k8s::resolve(cluster, &target(intercept, &ns, port)).await
}

/// The agent container's settings from the file's `[agent]` table.
pub fn agent_spec(project: &Project) -> AgentSpec {
    let a = &project.agent;
    let quantities = |q: &tpr_schema::Quantities| {
        let mut m = BTreeMap::new();
        if let Some(cpu) = &q.cpu {
            m.insert("cpu".to_owned(), Quantity(cpu.clone()));
        }
        if let Some(mem) = &q.memory {
            m.insert("memory".to_owned(), Quantity(mem.clone()));
        }
        (!m.is_empty()).then_some(m)
    };
    let requests = quantities(&a.resources.requests);
    let limits = quantities(&a.resources.limits);
    let resources = (requests.is_some() || limits.is_some()).then(|| ResourceRequirements {
        requests,
        limits,
        ..Default::default()
    });
    AgentSpec {
        image: a.image.clone(),
        pull_policy: a.pull_policy.to_string(),
        grpc_port: a.port,
        resources,
    }
}

/// The name the agent knows one port of an intercept by: the intercept's
/// name, with the port identifier when it has several ports.
pub fn agent_name(intercept: &Intercept, index: usize) -> String {
    if intercept.ports.len() == 1 {
        intercept.name.clone()
    } else {
        let id = intercept.ports[index]
            .service_port
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| index.to_string());
        format!("{}/{id}", intercept.name)
    }
}

/// The header conditions of an http intercept: the id header (exact
/// `<install id>:<name>`) when asked for, plus the file's regexes.
pub fn header_matches(intercept: &Intercept, install_id: &str) -> Vec<HeaderMatch> {
    let FileMechanism::Http(http) = &intercept.mechanism else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if http.id_header {
        out.push(HeaderMatch::Exact {
            name: INTERCEPT_ID_HEADER.to_owned(),
            value: intercept.id_header_value(install_id),
        });
    }
    out.extend(http.headers.iter().map(|h| HeaderMatch::Regex {
        name: h.name.clone(),
        pattern: h.regex.clone(),
    }));
    out
}

/// The intercept to register for port `index` of `intercept`. A preview
/// token goes with the first port only (the preview is of that port).
pub fn intercept_spec(
    intercept: &Intercept,
    index: usize,
    resolved: &Resolved,
    install_id: &str,
    wait: Duration,
    preview: Option<&PreviewToken>,
) -> InterceptSpec {
    let mechanism = match &intercept.mechanism {
        FileMechanism::Tcp => Mechanism::Tcp,
        FileMechanism::Http(http) => Mechanism::Http {
            headers: header_matches(intercept, install_id),
            path_prefix: http.path_prefix.clone(),
        },
    };
    InterceptSpec {
        name: agent_name(intercept, index),
        app_port: resolved.container_port,
        mechanism,
        target: SocketAddr::from((Ipv4Addr::LOCALHOST, intercept.ports[index].local)),
        wait,
        preview: preview.filter(|_| index == 0).cloned(),
    }
}

/// How long an intercepted connection waits for the local process to
/// listen: the `connection_wait_ms` of the process that takes the
/// intercept's environment, else the default.
pub fn connection_wait(project: &Project, intercept: &str) -> Duration {
    project
        .processes
        .iter()
        .find(|p| p.env_from.as_deref() == Some(intercept))
        .map_or(DEFAULT_CONNECTION_WAIT, |p| p.connection_wait())
}

/// The process with a readiness check that takes `intercept`'s environment.
pub fn ready_process(project: &Project, intercept: &str) -> Option<String> {
    project
        .processes
        .iter()
        .find(|p| p.env_from.as_deref() == Some(intercept) && p.ready.is_some())
        .map(|p| p.name.clone())
}

/// The default of a process's `connection_wait_ms`.
const DEFAULT_CONNECTION_WAIT: Duration = Duration::from_secs(5);

/// The `intercept_active` event of an intercept: where its ports come
/// from and go to, and (http) the conditions a request must meet.
pub fn active(
    intercept: &Intercept,
    workload: WorkloadRef,
    port_ids: &[String],
    install_id: &str,
    pods: &[String],
    preview_url: Option<String>,
) -> UpEvent {
    let (mechanism, path_prefix) = match &intercept.mechanism {
        FileMechanism::Tcp => ("tcp", None),
        FileMechanism::Http(http) => ("http", http.path_prefix.clone()),
    };
    let headers = header_matches(intercept, install_id)
        .into_iter()
        .map(|m| match m {
            // `-` needs no escape outside a class: keep ids readable.
            HeaderMatch::Exact { name, value } => HeaderRule {
                header: name,
                regex: regex::escape(&value).replace("\\-", "-"),
            },
            HeaderMatch::Regex { name, pattern } => HeaderRule {
                header: name,
                regex: pattern,
            },
        })
        .collect();
    UpEvent::InterceptActive {
        name: intercept.name.clone(),
        workload,
        mechanism,
        ports: intercept
            .ports
            .iter()
            .zip(port_ids)
            .map(|(p, id)| InterceptPort {
                local: p.local,
                service_port: id.clone(),
            })
            .collect(),
        headers,
        path_prefix,
        pods: pods.to_vec(),
        preview_url,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn project(text: &str) -> Project {
        let team = tpr_schema::SourceFile::new("telepresence.toml".to_string(), text.to_string());
        tpr_schema::parse(&team, None, Path::new("/p")).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn http_default_match_is_the_id_header() {
        let p = project(
            "format_version = 1\n[[intercept]]\nworkload = \"hello\"\nport = \"8080\"\nmechanism = \"http\"\n",
        );
        let i = &p.intercepts[0];
        let m = header_matches(i, "abc");
        assert!(
            matches!(&m[..], [HeaderMatch::Exact { name, value }] if name == INTERCEPT_ID_HEADER && value == "abc:hello"),
            "{m:?}"
        );
        let workload = WorkloadRef {
            workload: "hello".into(),
            kind: "Deployment".into(),
            namespace: "shop".into(),
        };
        let event = active(
            i,
            workload,
            &["8080".into()],
            "a-b",
            &["hello-1".into()],
            None,
        );
        assert_eq!(
            event.json(),
            r#"{"event":"intercept_active","name":"hello","workload":"hello","kind":"Deployment","namespace":"shop","mechanism":"http","ports":[{"local":8080,"service_port":"8080"}],"headers":[{"header":"x-telepresence-intercept-id","regex":"a-b:hello"}],"path_prefix":null,"pods":["hello-1"],"preview_url":null}"#
        );
    }

    #[test]
    fn file_headers_replace_the_default_and_namespaces_fall_back() {
        let p = project(
            "format_version = 1\n[cluster]\nnamespace = \"shop\"\n[[intercept]]\nworkload = \"a\"\nport = [\"1:x\", \"2:y\"]\nmechanism = \"http\"\nhttp.headers = { \"x-dev\" = \"al.*\" }\n",
        );
        let i = &p.intercepts[0];
        let m = header_matches(i, "id");
        assert!(
            matches!(&m[..], [HeaderMatch::Regex { name, pattern }] if name == "x-dev" && pattern == "al.*"),
            "{m:?}"
        );
        assert_eq!(agent_name(i, 1), format!("{}/y", i.name));
        assert_eq!(namespace_of(&p, i, "default"), "shop");
    }
}
