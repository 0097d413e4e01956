//! Empty: this crate only holds the test that regenerates the protocol code.
