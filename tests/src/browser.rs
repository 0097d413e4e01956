//! A real browser for the tests: headless Chromium (Debian's `chromium`,
//! installed by `tests/cluster/install-deps`).
//!
//! Each [`Browser`] is one profile (its own user-data-dir and HOME, so its
//! own cookies and cache: two of them are two users), resolves every name
//! under `*.tpr.test` to 127.0.0.1 (the cluster's ingress controller) and
//! trusts the ingress CA ([`crate::ingress::ca_path`], through an NSS
//! database in its HOME, as a user's machine would). Every call launches
//! Chromium once: it loads the URL, waits for the page to settle (its
//! subresources and `fetch()`es included: virtual time does not advance
//! while a request is pending) and prints the DOM. Cookies without an
//! expiry last one launch; persistent ones stay in the profile.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::{Error, Result};

/// Debian's launcher; `$TPR_CHROMIUM` names another.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium profile.
pub struct Browser {
    home: tempfile::TempDir,
    /// Longest a launch may take before it is killed and the call fails.
    pub timeout: Duration,
    /// Virtual time the page gets after it started loading (timers, its
    /// scripts' work); network waits do not count.
    pub budget: Duration,
    /// Window size, for screenshots.
    pub window: (u32, u32),
    /// Extra Chromium flags.
    pub args: Vec<String>,
}

impl Browser {
    /// A fresh profile trusting the ingress CA when the cluster made one.
    pub fn new() -> Result<Self> {
        let ca = crate::ingress::ca_path();
        Self::with_ca(ca.exists().then_some(ca.as_path()))
    }

    /// A fresh profile trusting `ca` (a PEM file) for TLS, or no extra CA.
    pub fn with_ca(ca: Option<&Path>) -> Result<Self> {
        let home = tempfile::Builder::new().prefix("tpr-browser-").tempdir()?;
        if let Some(ca) = ca {
            trust(home.path(), ca)?;
        }
        Ok(Browser {
            home,
            timeout: Duration::from_secs(60),
            budget: Duration::from_secs(5),
            window: (1024, 768),
            args: Vec::new(),
        })
    }

    /// The profile's user-data-dir (cookies live in `Default/Cookies`).
    pub fn profile_dir(&self) -> PathBuf {
        self.home.path().join("profile")
    }

    /// Loads `url` and returns the DOM once the page settled.
    pub async fn dump_dom(&self, url: &str) -> Result<String> {
        self.load(url, None).await
    }

    /// Loads `url`, writes a PNG screenshot of the window to `png` and
    /// returns the DOM (one launch).
    pub async fn screenshot(&self, url: &str, png: &Path) -> Result<String> {
        self.load(url, Some(png)).await
    }

    /// Loads `url` once, with a screenshot to `png` when given; returns the
    /// serialized DOM. Fails, naming the URL, when Chromium cannot start,
    /// the page does not load (a network or TLS error: Chromium's
    /// `net::ERR_...`), or it takes longer than [`Self::timeout`].
    pub async fn load(&self, url: &str, png: Option<&Path>) -> Result<String> {
        // Chromium abandons a load when the machine's interfaces change (a
        // pod started by another test adds a veth): ERR_NETWORK_CHANGED says
        // nothing about the page, so that load is made again.
        let mut attempts = 1;
        loop {
            match self.load_once(url, png).await {
                Err(Error::Browser(e)) if e.contains("ERR_NETWORK_CHANGED") && attempts < 5 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    }

    async fn load_once(&self, url: &str, png: Option<&Path>) -> Result<String> {
        let bin = std::env::var_os("TPR_CHROMIUM").unwrap_or_else(|| CHROMIUM.into());
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.env("HOME", self.home.path())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                // http:// stays http:// (no automatic upgrade to https).
                "--disable-features=HttpsUpgrades",
                "--host-resolver-rules=MAP *.tpr.test 127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", self.profile_dir().display()))
            .arg(format!("--virtual-time-budget={}", self.budget.as_millis()))
            .arg(format!("--window-size={},{}", self.window.0, self.window.1))
            .args(&self.args)
            .arg("--dump-dom");
        if let Some(png) = png {
            cmd.arg(format!("--screenshot={}", png.display()));
        }
        cmd.arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills the renderers too.
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| {
            Error::Browser(format!(
                "{}: {e} (tests/cluster/install-deps installs chromium)",
                Path::new(&bin).display()
            ))
        })?;
        let pid = child.id();
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(out) => out?,
            Err(_) => {
                if let Some(pid) = pid {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &format!("-{pid}")])
                        .status();
                }
                return Err(Error::Browser(format!(
                    "chromium did not finish loading {url} in {:?}",
                    self.timeout
                )));
            }
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Chromium exits 0 even when the page failed; it says so on stderr.
        if let Some(failed) = stderr
            .lines()
            .find_map(|l| l.split_once("Page load failed: ").map(|(_, e)| e))
        {
            return Err(Error::Browser(format!("{url}: page load failed: {failed}")));
        }
        let dom = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || dom.trim().is_empty() {
            return Err(Error::Browser(format!(
                "chromium loading {url} ({}) printed no DOM; stderr:\n{}",
                out.status,
                noise_free(&stderr)
            )));
        }
        if let Some(png) = png
            && !png.exists()
        {
            return Err(Error::Browser(format!(
                "chromium loading {url} wrote no screenshot at {}; stderr:\n{}",
                png.display(),
                noise_free(&stderr)
            )));
        }
        Ok(dom)
    }
}

/// An NSS database in `home/.pki/nssdb` (where Chromium on Linux looks)
/// trusting `ca` to identify web sites.
fn trust(home: &Path, ca: &Path) -> Result<()> {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db)?;
    let db = format!("sql:{}", db.display());
    let certutil = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new("certutil")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                Error::Browser(format!(
                    "certutil: {e} (tests/cluster/install-deps installs libnss3-tools)"
                ))
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Browser(format!(
                "certutil {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    };
    certutil(&["-N", "-d", &db, "--empty-password"])?;
    let ca = ca.display().to_string();
    certutil(&["-A", "-d", &db, "-t", "C,,", "-n", "tpr test CA", "-i", &ca])
}

/// Chromium's stderr without the lines every headless run prints here
/// (no D-Bus, the launcher's /dev/shm check).
fn noise_free(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.contains("dbus") && !l.contains("unexpected operator"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_page_reports_its_stylesheet_and_fetch_in_the_dom_and_a_screenshot() {
        let server = crate::page::PageServer::start("workstation").expect("the page server");
        let browser = Browser::with_ca(None).expect("a profile");
        let url = server.url();
        let png = browser.home.path().join("page.png");
        let dom = browser
            .screenshot(&url, &png)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(dom.contains(&crate::page::result("workstation")), "{dom}");
        let shot = std::fs::read(&png).expect("the screenshot");
        assert!(
            shot.starts_with(b"\x89PNG") && shot.len() > 1000,
            "{} bytes",
            shot.len()
        );
        // A second profile is a second user; a failed load says why.
        let other = Browser::with_ca(None).expect("a profile");
        assert_ne!(other.profile_dir(), browser.profile_dir());
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let err = other
            .dump_dom(&format!("http://127.0.0.1:{closed}/"))
            .await
            .expect_err("nothing listens there");
        assert!(err.to_string().contains("net::ERR_"), "{err}");
    }
}
