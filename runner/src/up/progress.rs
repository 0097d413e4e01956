//! Progress for slow steps: a spinner on a terminal, plain lines otherwise
//! (so logs and tests see what happened), each distinct message once.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::ProgressBar;

use crate::k8s::{self, Progress};

/// A progress display for one step.
pub enum Display {
    Spinner(ProgressBar),
    Lines(Mutex<String>),
}

impl Display {
    /// A spinner when stderr is a terminal, else plain lines.
    pub fn new() -> Self {
        if std::io::stderr().is_terminal() {
            Display::Spinner(k8s::spinner())
        } else {
            Display::Lines(Mutex::new(String::new()))
        }
    }

    /// Clears the spinner.
    pub fn finish(&self) {
        if let Display::Spinner(pb) = self {
            pb.finish_and_clear();
        }
    }
}

impl Default for Display {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Display {
    fn message(&self, msg: &str) {
        match self {
            Display::Spinner(pb) => pb.set_message(msg.to_owned()),
            Display::Lines(last) => {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if *last != msg {
                    eprintln!("tpr: {msg}");
                    *last = msg.to_owned();
                }
            }
        }
    }
}
