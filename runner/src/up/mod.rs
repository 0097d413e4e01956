//! `tpr up` and the commands that talk to it: the orchestration between the
//! project file, the cluster (`k8s`), the agents (`tunnel`) and the local
//! processes (`session_loop`).

pub mod control;
mod env_export;
pub mod event;
pub mod install_id;
pub mod interrupt;
mod link;
mod manager;
pub mod plan;
pub mod preview;
mod processes;
mod progress;
pub mod run;
pub mod state;
mod volumes;

use miette::Diagnostic;

use crate::k8s::{AgentPod, K8sError};
use crate::tunnel::TunnelError;

pub use event::{Events, UpEvent};
pub use link::channel as link_channel;
pub use manager::Manager;
pub use progress::Display;

/// What can stop `tpr up` and its sibling commands.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum UpError {
    /// Neither `$HOME` nor the XDG variables say where the user's files go.
    #[error(
        "cannot find the home directory (HOME is not set); set HOME or XDG_CONFIG_HOME and XDG_STATE_HOME"
    )]
    NoHome,
    /// A local file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The cluster refused or failed a request; the message names the fix.
    #[error(transparent)]
    K8s(#[from] K8sError),
    /// Talking to the traffic agent failed.
    #[error("traffic agent in pod {pod} ({namespace}): {source}")]
    Agent {
        pod: String,
        namespace: String,
        #[source]
        source: TunnelError,
    },
    /// A `to_pod` port cannot be listened on here (another program has it).
    #[error("on this workstation: {source}")]
    #[diagnostic(help(
        "free port {port} on this workstation (`ss -ltnp 'sport = :{port}'` shows who has it) or remove {port} from `to_pod`"
    ))]
    ToPodListen {
        port: u16,
        #[source]
        source: TunnelError,
    },
    /// The session with an agent is down (being restored).
    #[error(
        "not connected to the traffic agent in pod {pod}; it is being reconnected, try again in a moment"
    )]
    NotConnected { pod: String },
    /// Another `tpr up` runs for this project.
    #[error(
        "tpr up is already running for {project} (pid {pid}); stop it with `tpr down` or use its terminal"
    )]
    AlreadyRunning { pid: u32, project: String },
    /// No `tpr up` runs for this project.
    #[error("no tpr up is running for {project}; start one with `tpr up`")]
    NotRunning { project: String },
    /// `leave`/`env` named an intercept that is not there.
    #[error("no intercept named `{name}`; intercepts: {}", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    UnknownIntercept { name: String, known: Vec<String> },
    /// The `[cluster]` table changed while `tpr up` runs.
    #[error(
        "the [cluster] table changed; stop tpr up (Ctrl-C) and start it again to switch clusters"
    )]
    ClusterChanged,
    /// Starting the local processes failed.
    #[error(transparent)]
    Session(#[from] crate::session_loop::SessionError),
    /// Building a process's environment failed.
    #[error(transparent)]
    Supervise(#[from] crate::supervise::Error),
    /// The pod's mounted files could not be copied here.
    #[error("TELEPRESENCE_ROOT of intercept {intercept}: {message}")]
    Volumes { intercept: String, message: String },
    /// Outbound (the processes' network namespaces) cannot be set up.
    #[error(transparent)]
    Outbound(#[from] crate::outbound::OutboundError),
    /// An intercept's preview link cannot be made (its ingress is not
    /// found, or several are).
    #[error("preview of intercept {intercept}: {message}")]
    Preview {
        intercept: String,
        message: String,
        #[help]
        help: String,
    },
    /// `tpr preview` named an intercept without `[intercept.preview]`.
    #[error("intercept {name} has no preview link")]
    #[diagnostic(help(
        "add [intercept.preview] to it (an http intercept), e.g. `preview.enabled = true` to detect the ingress; README: Preview URLs"
    ))]
    NoPreview { name: String },
    /// Ctrl-C or SIGTERM stopped the start-up.
    #[error("interrupted")]
    Interrupted,
    /// The running `tpr up` answered a request with an error.
    #[error("{0}")]
    Remote(String),
}

impl UpError {
    pub(crate) fn agent(pod: &AgentPod, source: TunnelError) -> Self {
        UpError::Agent {
            pod: pod.name.clone(),
            namespace: pod.namespace.clone(),
            source,
        }
    }
}
