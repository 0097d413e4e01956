//! `tpr-agent`: the traffic agent sidecar (no arguments), its readiness
//! probe (`ready`) and its init-container step (`init`). Settings come from
//! the environment (docs/agent-contract.md); bad settings exit with 64.

mod config;
mod detect;
mod env;
mod forward;
mod grpc;
mod http;
mod iptables;
mod outbound;
mod preview;
mod ready;
mod registry;
mod relay;
mod volumes;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;
use tpr_schema::proto;
use tracing::{error, info};

use crate::config::Config;

/// `EX_USAGE`: bad arguments or settings.
const EXIT_CONFIG: u8 = 64;

fn vars() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => run(),
        ["ready"] => ready(),
        ["init"] => init(),
        ["--version"] => {
            println!("tpr-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "usage: tpr-agent [ready | init]  (settings come from TPR_AGENT_* variables)"
            );
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    // Two workers: this is a sidecar on a shared node, not a proxy farm.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

fn ready() -> ExitCode {
    let port = match config::grpc_port(vars()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tpr-agent ready: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(ready::probe(port)) {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

fn init() -> ExitCode {
    let redirects = match config::redirects(vars()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tpr-agent init: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match iptables::init(std::path::Path::new(iptables::IPTABLES), &redirects) {
        Ok(()) => {
            for (app, agent) in &redirects {
                println!(
                    "tpr-agent init: tcp port {app} -> {agent} (gid {} exempt)",
                    iptables::AGENT_GID
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tpr-agent init: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> ExitCode {
    let config = match Config::from_vars(vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tpr-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mounts =
        match proto::mounts::decode(&std::env::var(proto::mounts::VOLUMES_VAR).unwrap_or_default())
        {
            Ok(m) => m,
            Err(e) => {
                eprintln!("tpr-agent: {}: {e}", proto::mounts::VOLUMES_VAR);
                return ExitCode::from(EXIT_CONFIG);
            }
        };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TPR_AGENT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Container logs are files: colour only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match runtime().block_on(serve(config, mounts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, mounts: Vec<proto::mounts::Mount>) -> Result<(), String> {
    let registry = Arc::new(registry::Registry::new(
        config.forwards.iter().map(|f| f.app_port).collect(),
    ));
    for forward in &config.forwards {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, forward.agent_port));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (TPR_AGENT_FORWARDS): {e}"))?;
        info!(
            agent_port = forward.agent_port,
            app_port = forward.app_port,
            "forwarding"
        );
        tokio::spawn(forward::serve(listener, *forward, registry.clone()));
    }
    let grpc_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, config.grpc_port));
    let incoming = tonic::transport::server::TcpIncoming::bind(grpc_addr)
        .map_err(|e| format!("cannot listen on {grpc_addr} (TPR_AGENT_GRPC_PORT): {e}"))?
        .with_nodelay(Some(true));
    let service = grpc::AgentService {
        registry,
        pod: config.pod.clone(),
        app_env: env::app_env(&config.env, &config.env_prefix),
        mounts,
        volumes_root: proto::mounts::VOLUMES_ROOT.into(),
    };
    info!(%grpc_addr, pod = %config.pod, "tpr-agent {} serving", env!("CARGO_PKG_VERSION"));
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(proto::PING_INTERVAL))
        .http2_keepalive_timeout(Some(proto::SESSION_TIMEOUT))
        .initial_stream_window_size(proto::STREAM_WINDOW)
        .initial_connection_window_size(proto::CONNECTION_WINDOW)
        .max_frame_size(proto::MAX_FRAME)
        .serve_with_incoming(grpc::Router::new(service), incoming);
    // Stop at once: sessions are long-lived streams, waiting for them to
    // drain would only delay the kubelet.
    tokio::select! {
        r = server => r.map_err(|e| format!("gRPC server failed: {e}")),
        () = shutdown() => Ok(()),
    }
}

/// SIGTERM (the kubelet) or SIGINT. As PID 1 the agent must handle them
/// itself or it would ignore them.
async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!("stopping");
}
