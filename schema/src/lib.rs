//! The contracts of tpr: the project file (`telepresence.toml`) and the
//! runner<->agent wire protocol. Pure types and validation: no I/O runtime,
//! no Kubernetes client.
#[cfg(feature = "proto")]
pub mod proto;
