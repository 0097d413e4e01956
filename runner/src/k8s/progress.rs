//! Progress messages for slow operations (rollouts): a spinner for people, a
//! closure for tests.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Receives progress messages such as `rolling out deployment/hello: 0/1 pods ready`.
pub trait Progress: Sync {
    /// The current state, replacing the previous message.
    fn message(&self, msg: &str);
}

impl<F: Fn(&str) + Sync> Progress for F {
    fn message(&self, msg: &str) {
        self(msg)
    }
}

impl Progress for ProgressBar {
    fn message(&self, msg: &str) {
        self.set_message(msg.to_string());
    }
}

/// A spinner on stderr (hidden when stderr is not a terminal); finish it
/// with `finish_and_clear` or `finish_with_message`.
pub fn spinner() -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("a valid template"),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}
