//! The browser preview test's page (`tests/up/fixtures/preview_page.py`):
//! `/` (and `/page`) loads `/style.css` and `fetch()`es `/api/who`, then
//! writes `page=WHO style=WHO api=WHO` into `<pre id="result">`, naming who
//! answered each. The workstation side serves it naming `workstation`
//! (as a `tpr up` process, [`process_toml`], or by itself, [`PageServer`]);
//! the example app serves the same page at `/page` naming `cluster`.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::{Error, Result};

/// The script (Python 3, standard library only).
pub fn script() -> PathBuf {
    crate::repo_root().join("tests/up/fixtures/preview_page.py")
}

/// What the page's DOM holds once everything on it came from `who`.
pub fn result(who: &str) -> String {
    format!(r#"<pre id="result">page={who} style={who} api={who}</pre>"#)
}

/// A `[[process]]` table for a test project running the page on `port`
/// (naming `workstation`), with `env_from`'s environment; it watches
/// `src` like the other test processes.
pub fn process_toml(port: u16, env_from: &str) -> String {
    format!(
        "[[process]]\nname = \"page\"\ncommand = [\"python3\", \"{}\", \"{port}\"]\nenv_from = \"{env_from}\"\nwatch = [\"src\"]\n",
        script().display()
    )
}

/// The page served on this machine (127.0.0.1, a free port), naming
/// `who`; stopped on drop.
pub struct PageServer {
    child: Child,
    port: u16,
}

impl PageServer {
    /// Starts it and waits until it listens.
    pub fn start(who: &str) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())?
            .port();
        let mut child = Command::new("python3")
            .arg(script())
            .arg(port.to_string())
            .arg(who)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        // Stopped on drop from here on, whatever happens next.
        let server = PageServer { child, port };
        // It prints one line once it listens.
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        if !line.contains("listening") {
            return Err(Error::Io(std::io::Error::other(format!(
                "{} {port} {who} did not start: {line:?}",
                script().display()
            ))));
        }
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
