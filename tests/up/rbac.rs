//! A developer with too few rights: tpr names the verb and resource that
//! are missing, and changes nothing.

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use tpr_e2e::{Cluster, Result, kubeconfig_path};

use crate::support::{ProjectDir, deploy_hello, free_port};
use crate::{bare_project, template_json, text};

/// The admin kubeconfig's server and CA, with a ServiceAccount's token.
pub(crate) async fn kubeconfig_for(
    c: &Cluster,
    ns: &str,
    sa: &str,
    path: &std::path::Path,
) -> Result<()> {
    let sas = Api::<ServiceAccount>::namespaced(c.client.clone(), ns);
    let account: ServiceAccount = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}
    }))
    .expect("static");
    sas.create(&PostParams::default(), &account).await?;
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600}
    }))
    .expect("static");
    let token: TokenRequest = sas
        .create_subresource("token", sa, &PostParams::default(), &request)
        .await?;
    let token = token.status.expect("a token").token;
    let admin = std::fs::read_to_string(kubeconfig_path())?;
    let ca = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .expect("the admin kubeconfig has CA data");
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("a server");
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: dev\nclusters: [{{name: c, cluster: {{server: \"{server}\", certificate-authority-data: {ca}}}}}]\nusers: [{{name: dev, user: {{token: \"{token}\"}}}}]\ncontexts: [{{name: dev, context: {{cluster: c, user: dev, namespace: {ns}}}}}]\n"
        ),
    )?;
    Ok(())
}

pub async fn forbidden(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let original = template_json(c, ns, "hello").await?;
    let dir = tempfile::tempdir()?;
    let kc = dir.path().join("dev");
    kubeconfig_for(c, ns, "dev", &kc).await?;
    let kc = kc.display().to_string();
    let project = ProjectDir::new(&bare_project(
        ns,
        "hello",
        &format!("{}:http", free_port()),
        "",
    ));

    // No rights at all in the namespace.
    let out = project.tpr_env(&["up", "--once"], &[("KUBECONFIG", &kc)]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("forbidden: tpr needs") && all.contains("deployments.apps"),
        "{all}"
    );

    // Read rights but no patch: the install is refused, nothing changes.
    c.apply_yaml(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: read-only}
rules:
  - {apiGroups: ["apps"], resources: ["deployments", "replicasets", "statefulsets"], verbs: ["get", "list", "watch"]}
  - {apiGroups: [""], resources: ["services", "pods"], verbs: ["get", "list", "watch"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: dev-read-only}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-only}
subjects: [{kind: ServiceAccount, name: dev}]
"#,
        Some(ns),
    )
    .await?;
    // RBAC caches refresh within a second or two.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let out = project.tpr_env(&["up", "--once"], &[("KUBECONFIG", &kc)]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("forbidden: tpr needs"), "{all}");
    assert!(all.contains("deployments.apps"), "{all}");
    assert_eq!(
        template_json(c, ns, "hello").await?,
        original,
        "the workload changed"
    );
    Ok(())
}
