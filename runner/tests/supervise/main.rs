//! Supervision and watching with real processes and real files.

mod cleanup;
mod reload;
mod restart;
mod support;
