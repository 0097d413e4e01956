//! The runner's side of the agent tunnel: one gRPC connection to a pod's
//! `tpr-agent` (through the Kubernetes API's port-forward in a cluster, any
//! connector in tests) carrying a [`Session`] with its intercepts, one stream
//! per intercepted connection, [`ToPod`] relays and the pod's environment.
//!
//! Inputs are plain values (names, ports, addresses), not the project file's
//! types, so the same client serves `tpr up`, tests and benchmarks.

mod session;
mod to_pod;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tpr_schema::proto::{self, GetEnvRequest, agent_client::AgentClient};

pub use session::{HeaderMatch, Hello, InterceptSpec, Mechanism, Notice, PreviewToken, Session};
pub use to_pod::ToPod;

/// What went wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The gRPC connection could not be made.
    #[error("cannot reach the traffic agent: {0}")]
    Connect(#[source] tonic::transport::Error),
    /// The agent answered a call with an error.
    #[error("the traffic agent refused {call}: {status}")]
    Call {
        call: &'static str,
        #[source]
        status: tonic::Status,
    },
    /// The agent refused an intercept (e.g. a conflict naming the holder).
    #[error("intercept {name:?} refused by the traffic agent: {reason}")]
    Refused { name: String, reason: String },
    /// The session ended (agent gone, network cut).
    #[error("the session with the traffic agent ended: {0}")]
    SessionLost(String),
    /// A local socket failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// The endpoint settings of a tunnel connection: HTTP/2 keepalive (a dead
/// port-forward is noticed) and large flow-control windows (throughput).
pub fn endpoint(uri: &str) -> Result<Endpoint, TunnelError> {
    let endpoint = Endpoint::from_shared(uri.to_owned()).map_err(TunnelError::Connect)?;
    Ok(endpoint
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(proto::PING_INTERVAL)
        .keep_alive_timeout(proto::SESSION_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(proto::STREAM_WINDOW)
        .initial_connection_window_size(proto::CONNECTION_WINDOW)
        .max_frame_size(proto::MAX_FRAME))
}

/// Connects to an agent's gRPC port on a TCP address (loopback in tests, a
/// local port-forward otherwise).
pub async fn connect(addr: SocketAddr) -> Result<Channel, TunnelError> {
    endpoint(&format!("http://{addr}"))?
        .connect()
        .await
        .map_err(TunnelError::Connect)
}

/// The app container's environment as the agent reports it. Values may be
/// secrets: never log them.
pub async fn get_env(channel: Channel) -> Result<BTreeMap<String, String>, TunnelError> {
    let env = AgentClient::new(channel)
        .get_env(GetEnvRequest {})
        .await
        .map_err(|status| TunnelError::Call {
            call: "GetEnv",
            status,
        })?
        .into_inner()
        .env;
    Ok(env.into_iter().collect())
}
