use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use serde_json::json;

use super::*;

fn template() -> PodTemplateSpec {
    serde_json::from_value(json!({
        "metadata": {"labels": {"app": "hello"}},
        "spec": {"containers": [{
            "name": "app",
            "image": "hello:0.1.0",
            "ports": [{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 8081}],
            "env": [
                {"name": "A", "value": "1"},
                {"name": "B", "value": "$(A)-x-$$(A)"},
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
            ],
            "envFrom": [{"configMapRef": {"name": "cm"}}, {"prefix": "P_", "secretRef": {"name": "s"}}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
            "livenessProbe": {"tcpSocket": {"port": "http"}},
            "startupProbe": {"grpc": {"port": 8080}},
            "lifecycle": {"preStop": {"httpGet": {"path": "/stop", "port": "http"}}}
        }]}
    }))
    .unwrap()
}

fn swap(name: &str, port: u16) -> PortRequest {
    PortRequest {
        container: "app".into(),
        app_port: port,
        mode: PortMode::Swap { name: name.into() },
        http: false,
    }
}

fn redirect(port: u16) -> PortRequest {
    PortRequest {
        container: "app".into(),
        app_port: port,
        mode: PortMode::Redirect,
        http: false,
    }
}

fn container<'a>(t: &'a PodTemplateSpec, name: &str) -> &'a Container {
    t.spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap()
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a k8s_openapi::api::core::v1::EnvVar> {
    c.env.iter().flatten().find(|e| e.name == name)
}

/// The agent's ports after adding `requests` to `existing` in `template()`.
fn add(existing: &[AgentPort], requests: &[PortRequest]) -> Vec<AgentPort> {
    merge_ports(&template(), existing, requests, DEFAULT_GRPC_PORT)
}

fn patched(requests: &[PortRequest]) -> (Vec<AgentPort>, PodTemplateSpec) {
    let ports = add(&[], requests);
    let t = patch_template(
        &template(),
        &AgentSpec::default(),
        &ports,
        "deployment/hello",
    )
    .unwrap();
    (ports, t)
}

#[test]
fn named_port_is_swapped_and_probes_follow_the_app() {
    let (ports, t) = patched(&[swap("http", 8080)]);
    assert_eq!(ports[0].agent_port, 9901);
    let app = container(&t, "app");
    let names: Vec<_> = app
        .ports
        .iter()
        .flatten()
        .map(|p| p.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["tpr-http", "admin"]);
    let port_of = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let p = p.as_ref().unwrap();
        p.http_get
            .as_ref()
            .map(|h| h.port.clone())
            .or(p.tcp_socket.as_ref().map(|t| t.port.clone()))
    };
    let renamed = Some(IntOrString::String("tpr-http".into()));
    assert_eq!(port_of(&app.readiness_probe), renamed);
    assert_eq!(port_of(&app.liveness_probe), renamed);
    assert_eq!(
        app.startup_probe
            .as_ref()
            .unwrap()
            .grpc
            .as_ref()
            .unwrap()
            .port,
        8080
    );
    let pre_stop = app.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
    assert_eq!(pre_stop.http_get.as_ref().map(|h| h.port.clone()), renamed);

    let agent = container(&t, AGENT_CONTAINER);
    let p = &agent.ports.as_ref().unwrap()[0];
    assert_eq!((p.name.as_deref(), p.container_port), (Some("http"), 9901));
    assert!(
        t.spec.as_ref().unwrap().init_containers.is_none(),
        "no init container for a swap"
    );
    assert_eq!(
        t.metadata.as_ref().unwrap().labels.as_ref().unwrap()[LABEL_AGENT],
        "1"
    );
}

#[test]
fn agent_container_follows_the_contract() {
    let (_, t) = patched(&[swap("http", 8080)]);
    let agent = container(&t, AGENT_CONTAINER);
    assert_eq!(
        agent.image.as_deref(),
        Some(format!("tpr-agent:{}", env!("CARGO_PKG_VERSION")).as_str())
    );
    assert_eq!(agent.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert!(agent.args.is_none());
    let value = |n| env(agent, n).and_then(|e| e.value.clone());
    assert_eq!(value("TPR_AGENT_GRPC_PORT").as_deref(), Some("9900"));
    assert_eq!(value("TPR_AGENT_FORWARDS").as_deref(), Some("9901=8080"));
    assert_eq!(value("TPR_AGENT_ENV_PREFIX").as_deref(), Some("TPR_APP_"));
    assert_eq!(
        value("TPR_AGENT_WORKLOAD").as_deref(),
        Some("deployment/hello")
    );
    let field = |n| {
        env(agent, n)
            .unwrap()
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path
            .clone()
    };
    assert_eq!(field("TPR_AGENT_POD_NAME"), "metadata.name");
    assert_eq!(field("TPR_AGENT_NAMESPACE"), "metadata.namespace");
    let sc = agent.security_context.as_ref().unwrap();
    assert_eq!(
        (sc.run_as_user, sc.run_as_group, sc.run_as_non_root),
        (Some(7777), Some(7777), Some(true))
    );
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    let probe = agent
        .readiness_probe
        .as_ref()
        .unwrap()
        .exec
        .as_ref()
        .unwrap();
    assert_eq!(
        probe.command.as_deref(),
        Some(&["/tpr-agent".to_string(), "ready".to_string()][..])
    );
}

#[test]
fn app_env_is_copied_with_prefix_and_references_rewritten() {
    let (_, t) = patched(&[swap("http", 8080)]);
    let agent = container(&t, AGENT_CONTAINER);
    assert_eq!(env(agent, "TPR_APP_A").unwrap().value.as_deref(), Some("1"));
    assert_eq!(
        env(agent, "TPR_APP_B").unwrap().value.as_deref(),
        Some("$(TPR_APP_A)-x-$$(A)")
    );
    let cpu = env(agent, "TPR_APP_CPU")
        .unwrap()
        .value_from
        .as_ref()
        .unwrap();
    assert_eq!(
        cpu.resource_field_ref
            .as_ref()
            .unwrap()
            .container_name
            .as_deref(),
        Some("app")
    );
    let secret = env(agent, "TPR_APP_SECRET")
        .unwrap()
        .value_from
        .as_ref()
        .unwrap();
    assert_eq!(secret.secret_key_ref.as_ref().unwrap().key, "k");
    // The app's own variables come after the agent's, in their order, so
    // that `$(VAR)` still refers to an earlier entry.
    let names: Vec<_> = agent
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    let first_app = names
        .iter()
        .take_while(|n| n.starts_with("TPR_AGENT_"))
        .count();
    assert_eq!(
        &names[first_app..],
        ["TPR_APP_A", "TPR_APP_B", "TPR_APP_CPU", "TPR_APP_SECRET"]
    );
    let prefixes: Vec<_> = agent
        .env_from
        .iter()
        .flatten()
        .map(|e| e.prefix.clone().unwrap())
        .collect();
    assert_eq!(prefixes, ["TPR_APP_", "TPR_APP_P_"]);
    // The app container itself is untouched apart from the port name.
    assert_eq!(container(&t, "app").env, container(&template(), "app").env);
}

#[test]
fn numeric_port_gets_the_init_container() {
    let (ports, t) = patched(&[redirect(8080)]);
    let app = container(&t, "app");
    assert_eq!(
        app.ports,
        container(&template(), "app").ports,
        "nothing renamed"
    );
    let init = &t.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    assert_eq!(init.name, AGENT_INIT_CONTAINER);
    assert_eq!(init.args.as_deref(), Some(&["init".to_string()][..]));
    assert_eq!(
        env(init, "TPR_AGENT_REDIRECTS").unwrap().value.as_deref(),
        Some("8080=9901")
    );
    let sc = init.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_non_root), (Some(0), Some(false)));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(ports[0].mode, PortMode::Redirect);
}

#[test]
fn installing_again_with_the_same_ports_changes_nothing() {
    let (ports, t) = patched(&[swap("http", 8080)]);
    let again = add(&ports, &[swap("http", 8080)]);
    assert_eq!(again, ports);
    let t2 = patch_template(
        &template(),
        &AgentSpec::default(),
        &again,
        "deployment/hello",
    )
    .unwrap();
    assert_eq!(t, t2);
    // The server adds defaults to what was written; that is still current.
    let mut stored = serde_json::to_value(&t).unwrap();
    for c in stored["spec"]["containers"].as_array_mut().unwrap() {
        c["terminationMessagePath"] = json!("/dev/termination-log");
    }
    stored["spec"]["restartPolicy"] = json!("Always");
    assert!(covers(&stored, &serde_json::to_value(&t2).unwrap()));
}

#[test]
fn a_second_port_extends_the_agent() {
    let (ports, _) = patched(&[swap("http", 8080)]);
    let more = add(&ports, &[redirect(8081)]);
    assert_eq!(more[0], ports[0], "the first port keeps its agent port");
    assert_eq!((more[1].app_port, more[1].agent_port), (8081, 9902));
    let t = patch_template(
        &template(),
        &AgentSpec::default(),
        &more,
        "deployment/hello",
    )
    .unwrap();
    let agent = container(&t, AGENT_CONTAINER);
    assert_eq!(
        env(agent, "TPR_AGENT_FORWARDS").unwrap().value.as_deref(),
        Some("9901=8080,9902=8081")
    );
    let init = &t.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    assert_eq!(
        env(init, "TPR_AGENT_REDIRECTS").unwrap().value.as_deref(),
        Some("8081=9902")
    );
    let (_, one) = patched(&[swap("http", 8080)]);
    assert!(!covers(
        &serde_json::to_value(&one).unwrap(),
        &serde_json::to_value(&t).unwrap()
    ));
}

#[test]
fn a_port_wanted_by_a_headless_service_too_becomes_a_redirect() {
    let (ports, _) = patched(&[swap("http", 8080)]);
    let both = add(&ports, &[redirect(8080)]);
    assert_eq!(both.len(), 1);
    assert_eq!(
        (both[0].agent_port, &both[0].mode),
        (9901, &PortMode::Redirect)
    );
}

#[test]
fn a_port_an_http_intercept_wants_stays_an_http_port() {
    let http = PortRequest {
        http: true,
        ..swap("http", 8080)
    };
    let (ports, t) = patched(std::slice::from_ref(&http));
    assert!(ports[0].http);
    assert_eq!(
        env(container(&t, AGENT_CONTAINER), "TPR_AGENT_FORWARDS")
            .unwrap()
            .value
            .as_deref(),
        Some("9901=8080/http")
    );
    // A tcp intercept on it later (another developer's file) keeps it http:
    // nothing to roll out, nobody's personal intercepts broken.
    let again = add(&ports, &[swap("http", 8080)]);
    assert_eq!(again, ports);
    // And a tcp port becomes http when an http intercept first wants it.
    let plain = add(&[], &[swap("http", 8080)]);
    assert!(!plain[0].http);
    assert_eq!(add(&plain, &[http]), ports);
}

#[test]
fn agent_ports_skip_ports_the_pod_uses() {
    let mut t = template();
    t.spec.as_mut().unwrap().containers[0]
        .ports
        .as_mut()
        .unwrap()
        .push(ContainerPort {
            container_port: 9901,
            ..Default::default()
        });
    let ports = merge_ports(&t, &[], &[redirect(8080), redirect(8081)], 9902);
    let agent_ports: Vec<_> = ports.iter().map(|p| p.agent_port).collect();
    assert_eq!(agent_ports, [9903, 9904]);
}

#[test]
fn renamed_port_names_stay_valid() {
    assert_eq!(renamed_port("http"), "tpr-http");
    assert_eq!(renamed_port("metrics-endpoint"), "tpr-metrics-end");
    assert_eq!(renamed_port("abcdefghij-xy"), "tpr-abcdefghij");
    assert!(renamed_port("abcdefghijklmnop").len() <= 15);
}

#[test]
fn references_are_prefixed_as_the_kubelet_reads_them() {
    assert_eq!(prefix_refs("$(A)", "P_"), "$(P_A)");
    assert_eq!(prefix_refs("x$(A)y$(B_2)", "P_"), "x$(P_A)y$(P_B_2)");
    assert_eq!(prefix_refs("$$(A)", "P_"), "$$(A)");
    assert_eq!(prefix_refs("$$$(A)", "P_"), "$$$(P_A)");
    assert_eq!(prefix_refs("$(A", "P_"), "$(A");
    assert_eq!(prefix_refs("cost: $5", "P_"), "cost: $5");
    assert_eq!(prefix_refs("", "P_"), "");
}

#[test]
fn covers_sees_removed_entries_but_not_defaults() {
    let cur = json!({"a": [1, 2], "b": {"c": 1, "d": 2}});
    assert!(covers(&cur, &json!({"a": [1, 2], "b": {"c": 1}})));
    assert!(!covers(&cur, &json!({"a": [1]})));
    assert!(!covers(&cur, &json!({"b": {"c": 2}})));
    assert!(!covers(&cur, &json!({"e": 1})));
}

#[test]
fn agent_ports_annotation_format() {
    let p = AgentPort {
        container: "app".into(),
        app_port: 8080,
        agent_port: 9901,
        mode: PortMode::Swap {
            name: "http".into(),
        },
        http: false,
    };
    let s = serde_json::to_value(&p).unwrap();
    assert_eq!(
        s,
        json!({"container": "app", "appPort": 8080, "agentPort": 9901, "mode": "swap", "name": "http"})
    );
    let r = AgentPort {
        mode: PortMode::Redirect,
        ..p
    };
    assert_eq!(serde_json::to_value(&r).unwrap()["mode"], "redirect");
    assert_eq!(
        serde_json::from_value::<AgentPort>(serde_json::to_value(&r).unwrap()).unwrap(),
        r
    );
    // `http` is written only when set; annotations written before it read
    // as plain ports.
    let h = AgentPort { http: true, ..r };
    assert_eq!(serde_json::to_value(&h).unwrap()["http"], true);
    assert_eq!(
        serde_json::from_value::<AgentPort>(serde_json::to_value(&h).unwrap()).unwrap(),
        h
    );
}

#[test]
fn custom_agent_spec_is_used_for_both_containers() {
    let spec = AgentSpec {
        image: "reg/agent:dev".into(),
        pull_policy: "Never".into(),
        grpc_port: 9000,
        resources: None,
    };
    let ports = merge_ports(&template(), &[], &[redirect(8080)], 9000);
    let t = patch_template(&template(), &spec, &ports, "deployment/hello").unwrap();
    let agent = container(&t, AGENT_CONTAINER);
    let init = &t.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    for c in [agent, init] {
        assert_eq!(
            (c.image.as_deref(), c.image_pull_policy.as_deref()),
            (Some("reg/agent:dev"), Some("Never"))
        );
    }
    assert_eq!(
        env(agent, "TPR_AGENT_GRPC_PORT").unwrap().value.as_deref(),
        Some("9000")
    );
}
