use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use serde_json::{Value, json};

use super::*;

fn pod_template(ports: Value) -> Value {
    json!({
        "metadata": {"labels": {"app": "hello", "tier": "web"}},
        "spec": {"containers": [
            {"name": "sidecar", "image": "s", "ports": [{"name": "metrics", "containerPort": 9090}]},
            {"name": "app", "image": "hello:0.1.0", "ports": ports}
        ]}
    })
}

fn deployment(name: &str) -> Workload {
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {
            "selector": {"matchLabels": {"app": "hello"}},
            "template": pod_template(json!([{"name": "http", "containerPort": 8080}, {"containerPort": 8081}]))
        }
    }))
    .unwrap();
    d.into()
}

fn service(name: &str, selector: Option<Value>, ports: Value, cluster_ip: Option<&str>) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"selector": selector, "ports": ports, "clusterIP": cluster_ip}
    }))
    .unwrap()
}

fn hello_svc(name: &str, ports: Value) -> Service {
    service(name, Some(json!({"app": "hello"})), ports, None)
}

fn target(service: Option<&str>, port: Option<PortId>) -> InterceptTarget {
    InterceptTarget {
        workload: "hello".into(),
        kind: None,
        namespace: "ns".into(),
        service: service.map(String::from),
        port,
    }
}

fn one_port() -> Value {
    json!([{"name": "web", "port": 80, "targetPort": "http"}])
}

fn err(r: Result<Resolved, K8sError>) -> K8sError {
    r.expect_err("resolution should fail")
}

#[test]
fn named_target_port_swaps() {
    let r = resolve_in(
        &target(None, None),
        vec![deployment("hello")],
        &[hello_svc("hello", one_port())],
    )
    .unwrap();
    assert_eq!(
        (r.service.as_str(), r.container.as_str(), r.container_port),
        ("hello", "app", 8080)
    );
    assert_eq!(
        r.mode,
        PortMode::Swap {
            name: "http".into()
        }
    );
    assert_eq!(r.service_port.identifier(), "web");
    assert!(!r.headless);
    assert_eq!(r.port_request(false).app_port, 8080);
}

#[test]
fn numeric_target_port_redirects_even_when_undeclared() {
    let svc = hello_svc("hello", json!([{"port": 80, "targetPort": 8081}]));
    let r = resolve_in(&target(None, None), vec![deployment("hello")], &[svc]).unwrap();
    assert_eq!(
        (r.container.as_str(), r.container_port, r.mode.clone()),
        ("app", 8081, PortMode::Redirect)
    );
    assert_eq!(r.service_port.identifier(), "80");

    let svc = hello_svc("hello", json!([{"port": 80, "targetPort": 7000}]));
    let r = resolve_in(&target(None, None), vec![deployment("hello")], &[svc]).unwrap();
    assert_eq!(
        (r.container.as_str(), r.container_port),
        ("sidecar", 7000),
        "the first container"
    );

    let svc = hello_svc("hello", json!([{"port": 9090}]));
    let r = resolve_in(&target(None, None), vec![deployment("hello")], &[svc]).unwrap();
    assert_eq!(
        (r.container.as_str(), r.container_port),
        ("sidecar", 9090),
        "targetPort defaults to port"
    );
}

#[test]
fn headless_service_redirects_a_named_port() {
    let svc = service(
        "hello",
        Some(json!({"app": "hello"})),
        one_port(),
        Some("None"),
    );
    let r = resolve_in(&target(None, None), vec![deployment("hello")], &[svc]).unwrap();
    assert!(r.headless);
    assert_eq!((r.container_port, r.mode), (8080, PortMode::Redirect));
}

#[test]
fn port_is_chosen_by_name_or_number() {
    let two = json!([{"name": "web", "port": 80, "targetPort": "http"}, {"name": "alt", "port": 81, "targetPort": 8081}]);
    let svcs = [hello_svc("hello", two)];
    let by_name = resolve_in(
        &target(None, Some(PortId::Name("alt".into()))),
        vec![deployment("hello")],
        &svcs,
    )
    .unwrap();
    assert_eq!(
        (by_name.container_port, by_name.mode),
        (8081, PortMode::Redirect)
    );
    let by_number = resolve_in(
        &target(None, Some(PortId::Number(80))),
        vec![deployment("hello")],
        &svcs,
    )
    .unwrap();
    assert_eq!(by_number.container_port, 8080);

    let e = err(resolve_in(
        &target(None, None),
        vec![deployment("hello")],
        &svcs,
    ));
    assert!(
        matches!(&e, K8sError::AmbiguousPort { ports, .. } if ports == &["web/80", "alt/81"]),
        "{e}"
    );
    assert!(e.to_string().contains("web/80, alt/81"), "{e}");

    let e = err(resolve_in(
        &target(None, Some(PortId::Number(99))),
        vec![deployment("hello")],
        &svcs,
    ));
    assert!(
        matches!(&e, K8sError::PortNotFound { port, .. } if port == "99"),
        "{e}"
    );
    assert!(e.to_string().contains("web/80, alt/81"), "{e}");
}

#[test]
fn several_services_need_a_choice() {
    let svcs = [
        hello_svc("b-svc", one_port()),
        hello_svc("a-svc", one_port()),
        service("other", Some(json!({"app": "x"})), one_port(), None),
    ];
    let e = err(resolve_in(
        &target(None, None),
        vec![deployment("hello")],
        &svcs,
    ));
    assert!(
        matches!(&e, K8sError::AmbiguousService { services, .. } if services == &["a-svc", "b-svc"]),
        "{e}"
    );
    assert!(e.to_string().contains("set `service`"), "{e}");

    let r = resolve_in(
        &target(Some("b-svc"), None),
        vec![deployment("hello")],
        &svcs,
    )
    .unwrap();
    assert_eq!(r.service, "b-svc");

    let e = err(resolve_in(
        &target(Some("other"), None),
        vec![deployment("hello")],
        &svcs,
    ));
    assert!(
        matches!(&e, K8sError::ServiceDoesNotSelect { selecting, .. } if selecting == &["a-svc", "b-svc"]),
        "{e}"
    );

    let e = err(resolve_in(
        &target(Some("nope"), None),
        vec![deployment("hello")],
        &svcs,
    ));
    assert!(matches!(e, K8sError::ServiceNotFound { .. }), "{e}");
}

#[test]
fn service_without_selector_cannot_be_intercepted() {
    let svcs = [service("manual", None, one_port(), None)];
    let e = err(resolve_in(
        &target(Some("manual"), None),
        vec![deployment("hello")],
        &svcs,
    ));
    assert!(matches!(e, K8sError::ServiceWithoutSelector { .. }));
    assert!(e.to_string().contains("cannot be intercepted"), "{e}");
    let e = err(resolve_in(
        &target(None, None),
        vec![deployment("hello")],
        &svcs,
    ));
    assert!(matches!(e, K8sError::NoService { .. }), "{e}");
}

#[test]
fn selector_must_match_every_label() {
    let partial = service(
        "s",
        Some(json!({"app": "hello", "tier": "db"})),
        one_port(),
        None,
    );
    let e = err(resolve_in(
        &target(None, None),
        vec![deployment("hello")],
        &[partial],
    ));
    assert!(matches!(e, K8sError::NoService { .. }), "{e}");
}

#[test]
fn workload_lookup_errors() {
    let e = err(resolve_in(&target(None, None), vec![], &[]));
    let msg = e.to_string();
    assert!(msg.contains("`ns`") && msg.contains("tpr list"), "{msg}");

    let rs: ReplicaSet =
        serde_json::from_value(json!({"metadata": {"name": "hello"}, "spec": {"selector": {}}}))
            .unwrap();
    let sts: StatefulSet = serde_json::from_value(
        json!({"metadata": {"name": "hello"}, "spec": {"selector": {}, "template": {}}}),
    )
    .unwrap();
    let e = err(resolve_in(
        &target(None, None),
        vec![deployment("hello"), rs.into(), sts.into()],
        &[],
    ));
    assert!(
        e.to_string()
            .contains("deployment, replicaset, statefulset"),
        "{e}"
    );
}

#[test]
fn unknown_target_port_name_is_reported() {
    let svc = hello_svc("hello", json!([{"port": 80, "targetPort": "grpc"}]));
    let e = err(resolve_in(
        &target(None, None),
        vec![deployment("hello")],
        &[svc],
    ));
    assert!(
        matches!(&e, K8sError::TargetPortNotFound { target_port, .. } if target_port == "grpc"),
        "{e}"
    );
}

#[test]
fn an_installed_agent_is_seen_through() {
    // After a swap the agent holds the port name; resolution must still find
    // the app container, from the recorded original template.
    let original = deployment("hello");
    let ports = crate::k8s::template::merge_ports(
        &original.original_template().unwrap(),
        &[],
        &[crate::k8s::template::PortRequest {
            container: "app".into(),
            app_port: 8080,
            mode: PortMode::Swap {
                name: "http".into(),
            },
            http: false,
        }],
        9900,
    );
    let patched = crate::k8s::patch_template(
        original.template(),
        &Default::default(),
        &ports,
        "deployment/hello",
    )
    .unwrap();
    let mut d: Deployment =
        serde_json::from_value(serde_json::to_value(original.raw()).unwrap()).unwrap();
    d.spec.as_mut().unwrap().template = patched;
    d.metadata.annotations = Some(
        [(
            crate::k8s::ANNOTATION_ORIGINAL_TEMPLATE.to_string(),
            serde_json::to_string(&original.template_json()).unwrap(),
        )]
        .into(),
    );
    let r = resolve_in(
        &target(None, None),
        vec![d.into()],
        &[hello_svc("hello", one_port())],
    )
    .unwrap();
    assert_eq!((r.container.as_str(), r.container_port), ("app", 8080));
}

#[test]
fn kinds_parse_like_kubectl() {
    assert_eq!(
        "deploy".parse::<WorkloadKind>().unwrap(),
        WorkloadKind::Deployment
    );
    assert_eq!(
        "StatefulSet".parse::<WorkloadKind>().unwrap(),
        WorkloadKind::StatefulSet
    );
    assert_eq!(
        "rs".parse::<WorkloadKind>().unwrap(),
        WorkloadKind::ReplicaSet
    );
    assert!("pod".parse::<WorkloadKind>().is_err());
}
