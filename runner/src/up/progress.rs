//! Progress for slow steps: a spinner on a terminal, otherwise `progress`
//! events (plain lines for people, so logs and tests see what happened;
//! JSON lines with `--output json`), each distinct message once.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::ProgressBar;

use super::event::{Events, UpEvent};
use crate::k8s::{self, Progress};

/// A progress display for one step.
pub enum Display {
    Spinner(ProgressBar),
    Events(Events, Mutex<String>),
}

impl Display {
    /// A spinner when stderr is a terminal, else plain lines.
    pub fn new() -> Self {
        Self::for_events(Events::Human)
    }

    /// For `events`: never a spinner for programs.
    pub fn for_events(events: Events) -> Self {
        if events == Events::Human && std::io::stderr().is_terminal() {
            Display::Spinner(k8s::spinner())
        } else {
            Display::Events(events, Mutex::new(String::new()))
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
            Display::Events(events, last) => {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if *last != msg {
                    events.emit(UpEvent::Progress {
                        message: msg.to_owned(),
                    });
                    *last = msg.to_owned();
                }
            }
        }
    }
}
