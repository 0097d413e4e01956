//! `tpr-agent ready`: the readiness probe. Exit 0 when the gRPC server on
//! 127.0.0.1 answers a health call.

use std::time::Duration;

use tpr_schema::proto::{HealthRequest, agent_client::AgentClient};

pub async fn probe(port: u16) -> Result<String, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("the agent does not answer on 127.0.0.1:{port}: {e}"))?;
    let health = AgentClient::new(channel)
        .health(HealthRequest {})
        .await
        .map_err(|e| format!("the agent on 127.0.0.1:{port} failed its health call: {e}"))?
        .into_inner();
    Ok(format!(
        "tpr-agent {} ready, {} session(s)",
        health.version, health.sessions
    ))
}
