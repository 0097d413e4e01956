//! The runner<->agent wire protocol (`schema/proto/agent.proto`), compiled
//! with tonic, and the few rules both ends share: metadata keys, keepalive
//! timing, flow-control windows and how a byte stream travels as `Chunk`s
//! ([`pipe`]).
//!
//! The generated code is committed; `schema/proto/codegen` checks it
//! and says how to regenerate it.

mod generated {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    include!("proto/tpr.agent.v1.rs");
}
pub mod mounts;
pub mod pipe;

use std::time::Duration;

pub use generated::*;

/// Request metadata of `Connect`: the announced connection's id.
pub const CONN_ID_METADATA: &str = "tpr-conn-id";
/// Request metadata of `DialPod`: the pod port to dial.
pub const PORT_METADATA: &str = "tpr-port";
/// Request metadata of `DialOut`: the destination, an IP socket address.
pub const DEST_METADATA: &str = "tpr-dest";
/// The header of the default http match, valued `<install id>:<intercept>`.
pub const INTERCEPT_ID_HEADER: &str = "x-telepresence-intercept-id";

/// How often the runner pings its session.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
/// How long the agent keeps a silent session: two missed pings and some
/// slack for a busy machine, so traffic reverts within 3 seconds.
pub const SESSION_TIMEOUT: Duration = Duration::from_millis(2500);

/// HTTP/2 flow-control windows of the tunnel connection. Large, so a single
/// stream is never held back on loopback or a port-forward; the connection
/// window is many stream windows, so one stalled stream cannot starve the
/// session's pings.
pub const STREAM_WINDOW: u32 = 2 << 20;
pub const CONNECTION_WINDOW: u32 = 32 << 20;
/// Largest HTTP/2 frame each end accepts: a chunk travels in one frame.
pub const MAX_FRAME: u32 = 256 << 10;
/// Largest payload of one `Chunk`. 256 KiB chunks measured no faster (the
/// tunnel's cost is per byte, not per message) and hold more memory.
pub const CHUNK_SIZE: usize = 64 << 10;
