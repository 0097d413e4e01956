//! Preview links: an http intercept may hold an unguessable token, and a
//! request that carries it, as the query parameter [`NAME`] or the cookie
//! [`NAME`], goes to that intercept's workstation whatever its headers (the
//! intercept's path prefix still applies: a preview shows the whole site with
//! the developer's part of it). The first request of a link carries the
//! parameter; its answer sets the cookie, which the browser sends from then
//! on, also with the page's own requests (scripts, XHR, WebSocket).
//!
//! A link's answer sets the cookie wherever the request went: a link to a
//! page outside the path prefix (the app's front page, say) still starts
//! the preview for the requests under it.
//!
//! The token is a credential: it never reaches the workstation's process
//! (parameter and cookie are removed from what goes there), it is compared
//! in constant time, and it is never logged (`Debug` hides it). Requests to
//! the app go as sent: a frontend that passes cookies on to a service behind
//! it carries the preview on to that service's agent.
//!
//! An unknown token (an ended or replaced intercept) makes an ordinary
//! request, so a stale link shows the cluster's app. Its cookie is not
//! cleared: a cookie belongs to the host, not to one service, and the agent
//! of another service behind the same ingress cannot tell a stale token from
//! one of a live preview elsewhere.

use std::borrow::Cow;
use std::fmt;

use http::header::{COOKIE, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, Request};
use subtle::ConstantTimeEq;

/// The query parameter and the cookie that carry the token.
pub const NAME: &str = "tpr_preview";

/// Shortest token accepted: a guard against mistakes (an empty or trivial
/// token), not a measure of its randomness, which is the runner's (128 bits
/// as 32 hex digits).
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest token accepted.
pub const MAX_TOKEN_LEN: usize = 256;

/// An intercept's preview token and the cookie that carries it.
pub struct Token {
    token: Box<[u8]>,
    set_cookie: HeaderValue,
}

/// Why a preview token was refused; never names the token.
#[derive(Debug, thiserror::Error)]
#[error(
    "the preview token must be {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} characters of A-Z a-z 0-9 - _ . ~"
)]
pub struct BadToken;

impl Token {
    /// `token` must be URL-safe as it is (the unreserved characters of RFC
    /// 3986, which are valid cookie values too); `secure` adds `Secure` to
    /// the cookie (the link is https).
    pub fn new(token: &str, secure: bool) -> Result<Token, BadToken> {
        let unreserved = |b: &u8| b.is_ascii_alphanumeric() || b"-_.~".contains(b);
        if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&token.len())
            || !token.as_bytes().iter().all(unreserved)
        {
            return Err(BadToken);
        }
        let secure = if secure { "; Secure" } else { "" };
        let mut set_cookie = HeaderValue::try_from(format!(
            "{NAME}={token}; Path=/; HttpOnly; SameSite=Lax{secure}"
        ))
        .map_err(|_| BadToken)?;
        // HTTP/2: never put the token in the HPACK table.
        set_cookie.set_sensitive(true);
        Ok(Token {
            token: token.as_bytes().into(),
            set_cookie,
        })
    }

    /// Is `offered` this token? In constant time for tokens of equal length.
    pub fn is(&self, offered: &[u8]) -> bool {
        bool::from(self.token.as_ref().ct_eq(offered))
    }

    /// Are both the same token?
    pub fn same(&self, other: &Token) -> bool {
        self.is(&other.token)
    }

    /// Is one of the request's tokens this one?
    pub fn offered_in(&self, offered: &[&[u8]]) -> bool {
        offered.iter().any(|t| self.is(t))
    }

    /// `Set-Cookie: tpr_preview=<token>; Path=/; HttpOnly; SameSite=Lax[; Secure]`.
    pub fn set_cookie(&self) -> HeaderValue {
        self.set_cookie.clone()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<hidden>)")
    }
}

/// The tokens a request offers: its `tpr_preview` query parameters and
/// cookies, as sent. No `Debug`: tokens are not logged.
#[derive(Default)]
pub struct Offered<'a> {
    pub query: Vec<&'a [u8]>,
    pub cookie: Vec<&'a [u8]>,
}

impl<'a> Offered<'a> {
    pub fn of<B>(req: &'a Request<B>) -> Offered<'a> {
        let query = req
            .uri()
            .query()
            .map(|q| query_tokens(q).collect())
            .unwrap_or_default();
        let cookie = cookie_tokens(req.headers()).collect();
        Offered { query, cookie }
    }

    /// Every offered token, query first.
    pub fn all(&self) -> Vec<&'a [u8]> {
        self.query.iter().chain(&self.cookie).copied().collect()
    }
}

fn query_tokens(query: &str) -> impl Iterator<Item = &[u8]> {
    // Cheap test first: most queries carry no token.
    let candidates = query.contains(NAME).then_some(query);
    candidates
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.strip_prefix(NAME)?.strip_prefix('='))
        .filter(|t| !t.is_empty())
        .map(str::as_bytes)
}

/// Cookie pairs of every Cookie header (HTTP/2 may split them over several).
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(COOKIE)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .map(<[u8]>::trim_ascii)
}

fn is_preview_cookie(pair: &[u8]) -> bool {
    pair.strip_prefix(NAME.as_bytes())
        .is_some_and(|rest| rest.first() == Some(&b'='))
}

fn cookie_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    cookies(headers)
        .filter(|pair| is_preview_cookie(pair))
        .map(|pair| &pair[NAME.len() + 1..])
        .filter(|t| !t.is_empty())
}

/// Removes every `tpr_preview` query parameter and cookie, keeping the rest
/// as sent and in order (a query left empty loses its `?`, a Cookie header
/// left empty goes).
pub fn strip<B>(req: &mut Request<B>) {
    if let Some(uri) = strip_query(req.uri()) {
        *req.uri_mut() = uri;
    }
    strip_cookies(req.headers_mut());
}

fn strip_query(uri: &Uri) -> Option<Uri> {
    let query = uri.query()?;
    let is_param = |pair: &&str| pair.split('=').next() == Some(NAME);
    if !query.split('&').any(|p| is_param(&p)) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_param(p)).collect();
    let kept = kept.join("&");
    let path_and_query = if kept.is_empty() {
        Cow::Borrowed(uri.path())
    } else {
        Cow::Owned(format!("{}?{kept}", uri.path()))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query.as_ref()).ok()?);
    Uri::from_parts(parts).ok()
}

fn strip_cookies(headers: &mut HeaderMap) {
    if !cookies(headers).any(is_preview_cookie) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(COOKIE)
        .into_iter()
        .filter_map(|v| {
            let pairs: Vec<&[u8]> = v
                .as_bytes()
                .split(|b| *b == b';')
                .map(<[u8]>::trim_ascii)
                .filter(|p| !p.is_empty() && !is_preview_cookie(p))
                .collect();
            HeaderValue::from_bytes(&pairs.join(&b"; "[..]))
                .ok()
                .filter(|v| !v.is_empty())
        })
        .collect();
    headers.remove(COOKIE);
    for v in kept {
        headers.append(COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdef-_.~XYZ";

    fn req(uri: &str, cookies: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for c in cookies {
            b = b.header(COOKIE, *c);
        }
        b.body(()).unwrap()
    }

    fn strings(list: &[&[u8]]) -> Vec<String> {
        list.iter()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect()
    }

    #[test]
    fn tokens_are_read_from_the_query_and_every_cookie_header() {
        let r = req(
            "/p?a=1&tpr_preview=q1&tpr_previewx=no&b&tpr_preview=",
            &[
                "x=1; tpr_preview=c1",
                "tpr_preview=c2;y=2",
                "tpr_previewx=no",
            ],
        );
        let offered = Offered::of(&r);
        assert_eq!(strings(&offered.query), ["q1"]);
        assert_eq!(strings(&offered.cookie), ["c1", "c2"]);
        let none = req("/p?a=1&b=tpr_preview", &["x=1"]);
        assert!(Offered::of(&none).all().is_empty());
    }

    #[test]
    fn stripping_keeps_the_other_params_and_cookies_in_order() {
        let mut r = req(
            "http://host:80/p/q?a=1&tpr_preview=T&b=2&tpr_preview=U&c",
            &["x=1; tpr_preview=T; y=2", "tpr_preview=T", "z=3"],
        );
        strip(&mut r);
        assert_eq!(r.uri().to_string(), "http://host:80/p/q?a=1&b=2&c");
        let cookies: Vec<_> = r.headers().get_all(COOKIE).iter().collect();
        assert_eq!(cookies, ["x=1; y=2", "z=3"]);

        let mut r = req("/p?tpr_preview=T", &["tpr_preview=T"]);
        strip(&mut r);
        assert_eq!(r.uri().to_string(), "/p");
        assert!(r.headers().get(COOKIE).is_none());

        // Nothing to strip: untouched.
        let mut r = req("/p?a=tpr_preview&b=1", &["a=tpr_preview=1"]);
        strip(&mut r);
        assert_eq!(r.uri().to_string(), "/p?a=tpr_preview&b=1");
        assert_eq!(r.headers()[COOKIE], "a=tpr_preview=1");
    }

    #[test]
    fn the_cookie_has_its_attributes_and_secure_only_for_https() {
        let plain = Token::new(T, false).unwrap();
        assert_eq!(
            plain.set_cookie(),
            format!("tpr_preview={T}; Path=/; HttpOnly; SameSite=Lax")
        );
        let secure = Token::new(T, true).unwrap();
        assert_eq!(
            secure.set_cookie(),
            format!("tpr_preview={T}; Path=/; HttpOnly; SameSite=Lax; Secure")
        );
        assert!(secure.set_cookie().is_sensitive());
        assert!(plain.is(T.as_bytes()));
        assert!(!plain.is(&T.as_bytes()[1..]));
        assert!(!plain.is(b"0123456789abcdef-_.~XYz"));
    }

    #[test]
    fn bad_tokens_are_refused_and_never_shown() {
        for bad in [
            "short",
            "0123456789abcdef;",
            "0123456789abcdef ",
            &"a".repeat(257),
        ] {
            assert!(Token::new(bad, false).is_err(), "{bad:?}");
        }
        assert!(!format!("{:?}", Token::new(T, false).unwrap()).contains(T));
    }
}
