//! The control socket of a running `tpr up` (beside its state file): one
//! line in (`status`, `leave NAME`, `preview-rotate NAME`, `down`), one line out (`ok ...` or
//! `err ...`). `tpr leave`, `down` and `status` use it.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::UpError;

/// A request from another tpr command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The current state, as JSON.
    Status,
    /// End one intercept.
    Leave(String),
    /// Register an intercept again with its new preview token.
    RotatePreview(String),
    /// Stop `tpr up`.
    Down,
}

impl Request {
    fn parse(line: &str) -> Option<Self> {
        let line = line.trim();
        match line.split_once(' ') {
            Some(("leave", name)) => Some(Request::Leave(name.trim().to_owned())),
            Some(("preview-rotate", name)) => Some(Request::RotatePreview(name.trim().to_owned())),
            None if line == "status" => Some(Request::Status),
            None if line == "down" => Some(Request::Down),
            _ => None,
        }
    }

    fn line(&self) -> String {
        match self {
            Request::Status => "status\n".into(),
            Request::Leave(name) => format!("leave {name}\n"),
            Request::RotatePreview(name) => format!("preview-rotate {name}\n"),
            Request::Down => "down\n".into(),
        }
    }
}

/// A request and where its answer goes.
pub type Incoming = (Request, oneshot::Sender<Result<String, String>>);

/// Listens on `path` (replacing a stale socket) and forwards requests.
pub fn serve(path: &Path, tx: mpsc::Sender<Incoming>) -> Result<(), UpError> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| UpError::Io {
        what: format!("listening on the control socket {}", path.display()),
        source,
    })?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(read).read_line(&mut line).await.is_err() {
                    return;
                }
                let answer = match Request::parse(&line) {
                    None => Err(format!("unknown request {:?}", line.trim())),
                    Some(req) => {
                        let (reply, rx) = oneshot::channel();
                        if tx.send((req, reply)).await.is_err() {
                            return;
                        }
                        rx.await
                            .unwrap_or_else(|_| Err("tpr up is stopping".into()))
                    }
                };
                let out = match answer {
                    Ok(text) => format!("ok {}\n", text.replace('\n', " ")),
                    Err(text) => format!("err {}\n", text.replace('\n', " ")),
                };
                let _ = write.write_all(out.as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// The state of the `tpr up` running for the project of `paths`, if one is.
pub async fn live_state(paths: &super::state::StatePaths) -> Option<super::state::State> {
    let text = ask(&paths.socket, &Request::Status).await.ok().flatten()?;
    serde_json::from_str(&text).ok()
}

/// Sends a request to the `tpr up` listening on `path`. `Ok(None)`: nobody
/// listens there.
pub async fn ask(path: &Path, request: &Request) -> Result<Option<String>, UpError> {
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(path)).await
    else {
        return Ok(None);
    };
    let io = |source| UpError::Io {
        what: format!("talking to tpr up on {}", path.display()),
        source,
    };
    stream
        .write_all(request.line().as_bytes())
        .await
        .map_err(io)?;
    let mut line = String::new();
    // Leaving may wait for the agent's answer (10 s at most).
    tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(stream).read_line(&mut line),
    )
    .await
    .map_err(|_| UpError::Remote("tpr up did not answer in 30 s".into()))?
    .map_err(io)?;
    match line
        .trim_end()
        .split_once(' ')
        .unwrap_or((line.trim_end(), ""))
    {
        ("ok", text) => Ok(Some(text.to_owned())),
        ("err", text) => Err(UpError::Remote(text.to_owned())),
        _ => Err(UpError::Remote(format!(
            "unexpected answer {:?}",
            line.trim()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Status,
            Request::Down,
            Request::Leave("a-b".into()),
            Request::RotatePreview("a-b".into()),
        ] {
            assert_eq!(Request::parse(&r.line()), Some(r));
        }
        assert_eq!(Request::parse("bogus"), None);
    }

    #[tokio::test]
    async fn a_request_reaches_the_server_and_the_answer_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let (tx, mut rx) = mpsc::channel::<Incoming>(4);
        serve(&path, tx).unwrap();
        tokio::spawn(async move {
            while let Some((req, reply)) = rx.recv().await {
                let _ = reply.send(match req {
                    Request::Leave(n) if n == "x" => Ok("left x".into()),
                    other => Err(format!("no {other:?}")),
                });
            }
        });
        assert_eq!(
            ask(&path, &Request::Leave("x".into())).await.unwrap(),
            Some("left x".into())
        );
        assert!(ask(&path, &Request::Down).await.is_err());
        assert_eq!(
            ask(&dir.path().join("none.sock"), &Request::Status)
                .await
                .unwrap(),
            None
        );
    }
}
