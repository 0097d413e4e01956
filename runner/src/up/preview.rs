//! Preview links (`[intercept.preview]`): the token of each intercept and
//! where its link goes.
//!
//! The token is 128 bits from the OS, as 32 hex digits, kept per install
//! id and intercept name in `preview-tokens.json` beside the install id
//! (mode 0600) until `tpr preview rotate`. It is a bearer secret: it
//! appears in the link (the intercept block, `intercept_active`,
//! `tpr status`, `tpr preview url`) and nowhere else.
//!
//! The ingress is the file's `[intercept.preview.ingress]`, else detected
//! ([`crate::k8s::routes_to`]) before anything in the cluster changes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tpr_schema::{IngressAddress, Intercept, Mechanism};

use super::UpError;
use super::event::UpEvent;
use crate::k8s::{self, Cluster, K8sError, Resolved};
use crate::tunnel::PreviewToken;

/// The random bytes of a token: 128 bits.
const TOKEN_BYTES: usize = 16;

/// `preview-tokens.json` beside the install id.
pub fn tokens_path() -> Option<PathBuf> {
    Some(
        super::install_id::install_id_path()?
            .parent()?
            .join("preview-tokens.json"),
    )
}

/// install id -> intercept name -> token.
type Tokens = BTreeMap<String, BTreeMap<String, String>>;

/// A new token: 128 random bits, URL-safe (hex).
pub fn new_token() -> Result<String, UpError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| UpError::Io {
        what: "making a preview token".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads, changes and writes the token file under a lock, so that two tpr
/// commands never lose each other's tokens.
fn with_tokens<T>(change: impl FnOnce(&mut Tokens) -> Result<T, UpError>) -> Result<T, UpError> {
    with_tokens_at(&tokens_path().ok_or(UpError::NoHome)?, change)
}

fn with_tokens_at<T>(
    path: &std::path::Path,
    change: impl FnOnce(&mut Tokens) -> Result<T, UpError>,
) -> Result<T, UpError> {
    let io = |source| UpError::Io {
        what: format!("preview tokens in {}", path.display()),
        source,
    };
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).map_err(io)?;
    let lock = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join("preview-tokens.lock"))
            .map_err(io)?
    };
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io(std::io::Error::from(e)))?;
    let mut tokens: Tokens = match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_default(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Tokens::new(),
        Err(e) => return Err(io(e)),
    };
    let before = tokens.clone();
    let out = change(&mut tokens)?;
    if tokens != before {
        let text = serde_json::to_string_pretty(&tokens).expect("tokens serialize");
        super::env_export::write_private(path, &text)?;
    }
    Ok(out)
}

/// The token of `intercept` for `install_id`, made on first use.
pub fn token(install_id: &str, intercept: &str) -> Result<String, UpError> {
    with_tokens(get_or_make(install_id, intercept))
}

fn get_or_make(
    install_id: &str,
    intercept: &str,
) -> impl FnOnce(&mut Tokens) -> Result<String, UpError> {
    move |t| {
        let mine = t.entry(install_id.to_owned()).or_default();
        if let Some(token) = mine.get(intercept).filter(|t| t.len() >= 2 * TOKEN_BYTES) {
            return Ok(token.clone());
        }
        let token = new_token()?;
        mine.insert(intercept.to_owned(), token.clone());
        Ok(token)
    }
}

/// Replaces the token of `intercept` for `install_id`: the old link stops
/// routing once the running `tpr up` registers the new one.
pub fn rotate(install_id: &str, intercept: &str) -> Result<String, UpError> {
    with_tokens(replace(install_id, intercept))
}

fn replace(
    install_id: &str,
    intercept: &str,
) -> impl FnOnce(&mut Tokens) -> Result<String, UpError> {
    move |t| {
        let token = new_token()?;
        t.entry(install_id.to_owned())
            .or_default()
            .insert(intercept.to_owned(), token.clone());
        Ok(token)
    }
}

/// Where an intercept's preview link goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewPlan {
    pub address: IngressAddress,
    /// Where the link lands.
    pub path: String,
    /// The Ingress it was detected from (`None`: the file says).
    pub detected: Option<String>,
}

impl PreviewPlan {
    pub fn url(&self, token: &str) -> String {
        self.address.url(&self.path, token)
    }

    /// What the agent needs with the intercept's (first) port.
    pub fn token(&self, token: String) -> PreviewToken {
        PreviewToken {
            token,
            secure: self.address.tls,
        }
    }

    /// The `preview_ingress` event.
    pub fn event(&self, intercept: &str) -> UpEvent {
        UpEvent::PreviewIngress {
            intercept: intercept.to_owned(),
            ingress: self.detected.clone(),
            host: self.address.host.clone(),
            port: self.address.port,
            tls: self.address.tls,
            l5: self.address.l5.clone(),
            path: self.path.clone(),
        }
    }
}

/// Where the preview of `intercept` goes: the file's ingress, else the
/// one Ingress route to the intercept's first Service port (`resolved`).
/// Reads only. `None` when the intercept has no preview.
pub async fn plan(
    cluster: &Cluster,
    intercept: &Intercept,
    resolved: &Resolved,
) -> Result<Option<PreviewPlan>, UpError> {
    let Some(preview) = &intercept.preview else {
        return Ok(None);
    };
    let namespace = resolved
        .workload
        .metadata()
        .namespace
        .clone()
        .unwrap_or_default();
    let (detected, route) = if preview.ingress.host.is_some() {
        (None, None)
    } else {
        let ingresses = k8s::list_ingresses(cluster, &namespace)
            .await
            .map_err(|e| detect_error(intercept, &namespace, e))?;
        let routes = k8s::routes_to(&ingresses, &resolved.service, &resolved.service_port);
        let route = choose(intercept, &namespace, resolved, routes)?;
        (route.link().ok(), Some(route))
    };
    let address = preview
        .ingress
        .complete(detected.as_ref())
        .expect("a host: from the file or detected");
    let prefix = match &intercept.mechanism {
        Mechanism::Http(h) => h.path_prefix.clone(),
        Mechanism::Tcp => None,
    };
    let path = preview
        .path
        .clone()
        .or(prefix)
        .or_else(|| route.as_ref().and_then(|r| r.path.clone()))
        .unwrap_or_else(|| "/".to_owned());
    Ok(Some(PreviewPlan {
        address,
        path,
        detected: route.map(|r| r.ingress),
    }))
}

/// The one usable route, or an error that lists them and says how to
/// choose.
fn choose(
    intercept: &Intercept,
    namespace: &str,
    resolved: &Resolved,
    routes: Vec<k8s::IngressRoute>,
) -> Result<k8s::IngressRoute, UpError> {
    let port = resolved.service_port.identifier();
    let (usable, unusable): (Vec<_>, Vec<_>) = routes.into_iter().partition(|r| r.link().is_ok());
    match usable.len() {
        1 => Ok(usable.into_iter().next().expect("one")),
        0 => {
            let mut message = format!(
                "no Ingress in namespace {namespace} routes to Service {} port {port}",
                resolved.service
            );
            for r in &unusable {
                message.push_str(&format!("; {}", r.describe()));
            }
            Err(UpError::Preview {
                intercept: intercept.name.clone(),
                message,
                help: format!(
                    "say where the link goes: add [intercept.preview.ingress] with host = \"<the name your ingress answers for {}>\" (and tls = false for plain http) to intercept {}",
                    resolved.service, intercept.name
                ),
            })
        }
        _ => {
            let list: Vec<String> = usable.iter().map(|r| r.describe()).collect();
            let choices: Vec<String> = usable
                .iter()
                .filter_map(|r| Some(format!("preview.ingress = {{ {} }}", r.settings()?)))
                .collect();
            Err(UpError::Preview {
                intercept: intercept.name.clone(),
                message: format!(
                    "{} Ingress routes reach Service {} port {port} in namespace {namespace}: {}",
                    usable.len(),
                    resolved.service,
                    list.join("; ")
                ),
                help: format!(
                    "choose one: in intercept {} (telepresence.local.toml, for yourself) set {}",
                    intercept.name,
                    choices.join(" or ")
                ),
            })
        }
    }
}

/// A failed list of Ingresses, with the way around it.
fn detect_error(intercept: &Intercept, namespace: &str, e: K8sError) -> UpError {
    let help = match &e {
        K8sError::Forbidden { .. } => format!(
            "set [intercept.preview.ingress] host = \"...\" for intercept {} (no detection then), or ask for `list` on ingresses.networking.k8s.io in namespace {namespace} (docs/rbac.yaml)",
            intercept.name
        ),
        _ => format!(
            "set [intercept.preview.ingress] host = \"...\" for intercept {} to skip detection",
            intercept.name
        ),
    };
    UpError::Preview {
        intercept: intercept.name.clone(),
        message: format!("cannot detect its ingress: {e}"),
        help,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_128_bit_hex_and_differ() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn a_token_is_kept_per_install_id_and_intercept_until_rotated_in_a_0600_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tpr/preview-tokens.json");
        let get = |id: &str, name: &str| with_tokens_at(&path, get_or_make(id, name)).unwrap();
        let a = get("alice", "hello");
        assert_eq!(get("alice", "hello"), a, "stable");
        let b = get("bob", "hello");
        assert_ne!(a, b, "another install id, another token");
        assert_ne!(get("alice", "world"), a, "another intercept, another token");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let rotated = with_tokens_at(&path, replace("alice", "hello")).unwrap();
        assert_ne!(rotated, a);
        assert_eq!(get("alice", "hello"), rotated);
        assert_eq!(get("bob", "hello"), b, "others keep theirs");
    }
}
