//! The connection to the cluster: the kubeconfig (honoring KUBECONFIG), the
//! context, and what error messages need to name (URL, context).

use std::path::PathBuf;
use std::time::Duration;

use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::Client;
use kube::client::ConfigExt;
use kube::client::retry::RetryPolicy;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};

use super::K8sError;
use super::error::{Request, chain};

/// How to connect.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// The kubeconfig file; default: `KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The context; default: the kubeconfig's current context.
    pub context: Option<String>,
    /// How long to wait for the API server to accept a connection; default 10 s.
    pub connect_timeout: Option<Duration>,
}

/// kube's own client stack (`Client::try_from`), on sockets with
/// TCP_NODELAY. kube's connector leaves Nagle's algorithm on, and the API
/// connection carries pods/portforward, where every write of the tunnel's
/// HTTP/2 becomes its own WebSocket message: a small write behind an
/// unacknowledged one waited for the API server's delayed ACK, about 40 ms
/// on one request in ten of an intercepted keep-alive connection. kube has
/// no hook for the socket, so the stack is assembled here from its parts
/// (its request tracing is left out).
fn client(config: kube::Config) -> Result<Client, kube::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let mut connector = TimeoutConnector::new(config.rustls_https_connector_with_connector(http)?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(hyper);
    Ok(Client::new(service, config.default_namespace))
}

/// A client for one cluster and what error messages say about it.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    url: String,
    context: String,
    default_namespace: String,
}

impl Cluster {
    /// Reads the kubeconfig and builds a client for the context. Does not
    /// contact the API server; [`Cluster::check`] does.
    pub async fn connect(opts: &ClusterOptions) -> Result<Self, K8sError> {
        let path = opts.kubeconfig.as_ref().map(|p| p.display().to_string());
        let load_err = |e: &dyn std::error::Error| K8sError::Kubeconfig {
            path: path.clone(),
            cause: chain(e),
        };
        let kubeconfig = match &opts.kubeconfig {
            Some(p) => Kubeconfig::read_from(p),
            None => Kubeconfig::read(),
        }
        .map_err(|e| load_err(&e))?;
        let available: Vec<String> = kubeconfig.contexts.iter().map(|c| c.name.clone()).collect();
        let context = match opts
            .context
            .clone()
            .or_else(|| kubeconfig.current_context.clone())
        {
            Some(c) if available.contains(&c) => c,
            Some(c) => {
                return Err(K8sError::UnknownContext {
                    context: c,
                    available,
                });
            }
            None => {
                return Err(K8sError::Kubeconfig {
                    path,
                    cause: format!(
                        "no current context; set `cluster.context` to one of: {}",
                        available.join(", ")
                    ),
                });
            }
        };
        let options = KubeConfigOptions {
            context: Some(context.clone()),
            ..Default::default()
        };
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| load_err(&e))?;
        config.connect_timeout = Some(opts.connect_timeout.unwrap_or(Duration::from_secs(10)));
        let url = config.cluster_url.to_string();
        let default_namespace = config.default_namespace.clone();
        let client = client(config).map_err(|e| load_err(&e))?;
        Ok(Self {
            client,
            url,
            context,
            default_namespace,
        })
    }

    /// Asks the API server for its version: fails fast with
    /// [`K8sError::Unreachable`] when it does not answer.
    pub async fn check(&self) -> Result<String, K8sError> {
        let v = self
            .client
            .apiserver_version()
            .await
            .map_err(|e| self.request("get", "version", "").error(e))?;
        Ok(v.git_version)
    }

    /// The kube client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The API server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The kubeconfig context.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The context's namespace (`default` when it has none).
    pub fn default_namespace(&self) -> &str {
        &self.default_namespace
    }

    pub(crate) fn request<'a>(
        &'a self,
        verb: &'static str,
        resource: &'static str,
        namespace: &'a str,
    ) -> Request<'a> {
        Request {
            verb,
            resource,
            namespace,
            url: &self.url,
            context: &self.context,
        }
    }
}
