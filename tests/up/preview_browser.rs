//! Preview links (issue 13) in a real browser: headless Chromium opens the
//! preview URL that `tpr up` printed, over HTTPS through the cluster's
//! ingress (Traefik, a TLS Ingress detected by `tpr up`). The page the
//! workstation's process serves loads, and its stylesheet and `fetch()`
//! come from the workstation too (the preview cookie, `Secure` under TLS,
//! carries them); a second profile opening the plain URL sees the
//! cluster's page; after `tpr down` the link shows the cluster's page.
//! The page writes who answered each part into its DOM; a screenshot of
//! each load is kept under `target/preview-screenshots/`. The token never
//! reaches the workstation's process (its request log and `/headers`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tpr_e2e::browser::Browser;
use tpr_e2e::{Cluster, Error, Result, ingress, page, repo_root};

use crate::support::{ProjectDir, Up, deploy_hello, free_port};
use crate::{UP, text};

/// How long a load may keep showing the wrong side after the intercept
/// changed (routing settles in seconds).
const SETTLE: Duration = Duration::from_secs(30);

/// Where the screenshots go: `$CARGO_TARGET_DIR` (else `target/`) under
/// `preview-screenshots/`.
fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("preview-screenshots")
}

/// The project: an http intercept of hello with a preview link landing on
/// `/page` (its ingress detected), and the page server as the process.
fn project(ns: &str, port: u16) -> String {
    format!(
        "format_version = 1\n[cluster]\nnamespace = \"{ns}\"\n[[intercept]]\nworkload = \"hello\"\nport = \"{port}:http\"\nmechanism = \"http\"\n[intercept.preview]\npath = \"/page\"\n{}",
        page::process_toml(port, "hello")
    )
}

/// `tpr up`'s output so far, for failure messages.
fn all(up: &Up) -> String {
    format!("--- stdout\n{}--- stderr\n{}", up.stdout(), up.stderr())
}

/// Every stdout line of `tpr up --output json` parsed.
fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn event<'a>(events: &'a [Value], name: &str, all: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == name)
        .unwrap_or_else(|| panic!("no {name} event\n{all}"))
}

/// The page server's request log lines (`preview_page: ...` on its
/// stderr, which `tpr up --output json` passes on to its own stderr).
fn request_log(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("preview_page: ") && l.contains("\"GET "))
        .collect()
}

/// Loads `url` in `browser` with a screenshot to `png` until the DOM shows
/// everything came from `who` (at most [`SETTLE`]); returns the last DOM.
async fn load_until(browser: &Browser, url: &str, png: &Path, who: &str) -> Result<String> {
    let want = page::result(who);
    let start = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let dom = browser.screenshot(url, png).await?;
        if dom.contains(&want) {
            if tries > 1 {
                eprintln!(
                    "{url} showed {who} after {tries} loads ({:?})",
                    start.elapsed()
                );
            }
            return Ok(dom);
        }
        if start.elapsed() > SETTLE {
            return Err(Error::Browser(format!(
                "{url} did not show {want} in {SETTLE:?} ({tries} loads); last DOM:\n{dom}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A PNG of some size (a blank or failed shot is far smaller).
fn assert_png(png: &Path) {
    let shot = std::fs::read(png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert!(
        shot.starts_with(b"\x89PNG\r\n\x1a\n") && shot.len() > 1000,
        "{}: {} bytes, not a screenshot",
        png.display(),
        shot.len()
    );
}

pub async fn browser(c: &Cluster, ns: &str) -> Result<()> {
    deploy_hello(c, ns).await?;
    let host = ingress::host_for(ns);
    // Ingress `hello` with TLS (Secret hello-tls, *.tpr.test), routed.
    ingress::deploy_ingress(c, ns, &host, true).await?;
    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots)?;
    eprintln!("preview screenshots in {}", shots.display());

    let port = free_port();
    let project = ProjectDir::new(&project(ns, port));
    let mut up = project.up(&["--output", "json"]);
    up.wait_for("\"event\":\"intercept_active\"", UP).await;
    up.wait_for(&format!("workstation listening on 127.0.0.1:{port}"), UP)
        .await;
    // The controller may still send some requests to the replaced pod.
    ingress::settled(&host, true, "hello from hello-").await?;
    let ev = events(&up.stdout());
    // Detected: the TLS Ingress's host, at the address it publishes.
    let detected = event(&ev, "preview_ingress", &all(&up));
    assert_eq!(detected["ingress"], "hello", "{detected}");
    assert_eq!(detected["tls"], true, "{detected}");
    assert_eq!(detected["l5"], host.as_str(), "{detected}");
    assert_eq!(detected["host"], ingress::NODE_IP, "{detected}");
    assert_eq!(detected["path"], "/page", "{detected}");
    let active = event(&ev, "intercept_active", &all(&up));
    let link = active["preview_url"]
        .as_str()
        .unwrap_or_else(|| panic!("no preview_url in {active}"))
        .to_owned();
    let prefix = format!("https://{host}/page?tpr_preview=");
    let token = link
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{link} is not {prefix}<token>"))
        .to_owned();
    assert!(
        token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "token {token:?}"
    );

    // The link's answer sets the preview cookie, Secure under TLS.
    let r = ingress::get(&host, &format!("/page?tpr_preview={token}"), true, &[]).await?;
    let cookie = r
        .headers_all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("tpr_preview="))
        .unwrap_or_else(|| panic!("no preview cookie: {r:?}\n{}", all(&up)))
        .to_owned();
    for attr in [
        format!("tpr_preview={token}"),
        "Path=/".into(),
        "HttpOnly".into(),
        "SameSite=Lax".into(),
        "Secure".into(),
    ] {
        assert!(
            cookie.split(';').any(|a| a.trim() == attr),
            "{attr} missing in {cookie}"
        );
    }

    // Browser A opens the link: page, stylesheet and fetch from here.
    let a = Browser::new()?;
    let png_a = shots.join("preview-link-workstation.png");
    let dom = load_until(&a, &link, &png_a, "workstation").await?;
    for part in ["page", "style", "api"] {
        assert!(
            dom.contains(&format!("<span id=\"{part}\">workstation</span>")),
            "{part} not from the workstation:\n{dom}"
        );
    }
    assert_png(&png_a);
    // What reaches it, as it sees it: the token's cookie gone, others kept.
    let headers = ingress::get(
        &host,
        &format!("/headers?a=1&tpr_preview={token}"),
        true,
        &[&format!("Cookie: keep=1; tpr_preview={token}")],
    )
    .await?;
    assert_eq!(headers.status, 200, "{headers:?}");
    let seen: Value = serde_json::from_str(&headers.body)
        .unwrap_or_else(|e| panic!("{e}: not the page server's /headers: {headers:?}"));
    assert_eq!(seen["Cookie"], "keep=1", "{seen}");
    assert_eq!(seen["Host"], host.as_str(), "{seen}");
    assert!(!headers.body.contains("tpr_preview"), "{seen}");

    // The page server saw the page, its stylesheet and the fetch, and
    // never the token (the agent strips parameter and cookie).
    let seen = up.stderr();
    let log = request_log(&seen);
    for path in [
        "GET /page ",
        "GET /style.css ",
        "GET /api/who ",
        "GET /headers?a=1 ",
    ] {
        assert!(
            log.iter().any(|l| l.contains(path)),
            "the page server never logged {path:?}:\n{}",
            all(&up)
        );
    }
    assert!(
        !seen.contains(&token) && !log.iter().any(|l| l.contains("tpr_preview")),
        "the workstation's process saw the token:\n{}",
        log.join("\n")
    );
    // Browser B, another user, opens the plain URL: the cluster's page,
    // and the page server hears nothing of it.
    let logged = request_log(&up.stderr()).len();
    let b = Browser::new()?;
    let plain = format!("https://{host}/page");
    let png_b = shots.join("plain-url-cluster.png");
    let dom = b.screenshot(&plain, &png_b).await?;
    assert!(
        dom.contains(&page::result("cluster")),
        "{dom}\n{}",
        all(&up)
    );
    assert_png(&png_b);
    let stderr = up.stderr();
    let after = request_log(&stderr);
    assert_eq!(
        after.len(),
        logged,
        "the plain URL reached the workstation: {:?}",
        &after[logged..]
    );

    // tpr down: the link shows the cluster's page (a stale token routes
    // nowhere special).
    let down = project.tpr(&["down"]);
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(
        up.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        all(&up)
    );
    let png_c = shots.join("preview-link-after-down-cluster.png");
    load_until(&Browser::new()?, &link, &png_c, "cluster").await?;
    assert_png(&png_c);
    Ok(())
}
