use super::*;

fn req() -> Request<'static> {
    Request {
        verb: "update",
        resource: "deployments.apps",
        namespace: "shop",
        url: "https://h:6443/",
        context: "dev",
    }
}

fn status(code: u16) -> kube::Error {
    kube::Error::Api(Box::new(kube::core::Status {
        code,
        message: "denied".into(),
        reason: "Forbidden".into(),
        ..Default::default()
    }))
}

#[test]
fn forbidden_names_verb_resource_namespace_and_fix() {
    let msg = req().error(status(403)).to_string();
    assert!(
        msg.starts_with("forbidden: tpr needs `update` on `deployments.apps` in namespace `shop`"),
        "{msg}"
    );
    assert!(
        msg.contains("--verb=update --resource=deployments.apps"),
        "{msg}"
    );
    assert!(matches!(
        req().error(status(409)),
        K8sError::Api { code: 409, .. }
    ));
}

#[test]
fn forbidden_takes_verb_and_resource_from_the_server() {
    let e = kube::Error::Api(Box::new(kube::core::Status {
        code: 403,
        message: "pods \"p\" is forbidden: User \"system:serviceaccount:n:dev\" cannot get resource \"pods/portforward\" in API group \"\" in the namespace \"n\"".into(),
        ..Default::default()
    }));
    let K8sError::Forbidden { verb, resource, .. } = req().error(e) else {
        panic!()
    };
    assert_eq!(
        (verb.as_str(), resource.as_str()),
        ("get", "pods/portforward")
    );
    let msg = "deployments.apps \"a\" is forbidden: User \"u\" cannot update resource \"deployments\" in API group \"apps\" in the namespace \"n\"";
    assert_eq!(
        refused(msg),
        Some(("update".into(), "deployments.apps".into()))
    );
}

#[test]
fn rollback_is_said() {
    assert!(Rollback::Restored.to_string().contains("restored"));
    assert!(
        Rollback::Failed("x".into())
            .to_string()
            .contains("tpr uninstall")
    );
}
