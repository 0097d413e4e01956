use http::HeaderValue;

use super::*;

fn registry_with(users: &[&str]) -> (Registry, Vec<String>) {
    let registry = Registry::new(vec![8080]);
    let ids = users
        .iter()
        .map(|u| {
            let (tx, rx) = mpsc::unbounded_channel();
            std::mem::forget(rx); // keep the channel open
            registry
                .open_session(format!("id-{u}"), format!("{u}@test"), tx)
                .0
        })
        .collect();
    (registry, ids)
}

fn http(name: &str, headers: Vec<HeaderMatch>, path_prefix: &str) -> CreateIntercept {
    CreateIntercept {
        name: name.into(),
        port: 8080,
        mechanism: Mechanism::Http as i32,
        headers,
        path_prefix: path_prefix.into(),
        local_port: 3000,
        ..CreateIntercept::default()
    }
}

/// The intercept that takes a request without preview tokens.
fn routed(registry: &Registry, path: &str, headers: &HeaderMap) -> Option<Arc<Intercept>> {
    registry
        .match_request(8080, path, headers, &preview::Offered::default())
        .intercept
}

fn headers(list: &[(&'static str, &'static str)]) -> HeaderMap {
    list.iter()
        .map(|(k, v)| {
            (
                http::HeaderName::from_static(k),
                HeaderValue::from_static(v),
            )
        })
        .collect()
}

#[test]
fn the_default_http_match_is_install_id_and_name() {
    let (registry, ids) = registry_with(&["alice"]);
    registry
        .create_intercept(&ids[0], http("orders", vec![], ""))
        .unwrap();
    let hit = headers(&[("x-telepresence-intercept-id", "id-alice:orders")]);
    assert_eq!(routed(&registry, "/", &hit).unwrap().name, "orders");
    let other = headers(&[("x-telepresence-intercept-id", "id-bob:orders")]);
    assert!(routed(&registry, "/", &other).is_none());
}

#[test]
fn identical_matches_of_two_sessions_conflict_different_ones_do_not() {
    let (registry, ids) = registry_with(&["alice", "bob"]);
    let dev = |v: &str| HeaderMatch {
        name: "x-dev".into(),
        value: Some(header_match::Value::Exact(v.into())),
    };
    registry
        .create_intercept(&ids[0], http("a", vec![dev("1")], ""))
        .unwrap();
    let err = registry
        .create_intercept(&ids[1], http("b", vec![dev("1")], ""))
        .unwrap_err();
    assert!(err.to_string().contains("alice@test"), "{err}");
    registry
        .create_intercept(&ids[1], http("b", vec![dev("2")], ""))
        .unwrap();
    // Re-creating one's own intercept replaces it.
    registry
        .create_intercept(&ids[0], http("a", vec![dev("1")], "/v2"))
        .unwrap();
    assert!(routed(&registry, "/v1", &headers(&[("x-dev", "1")])).is_none());
    assert!(routed(&registry, "/v2/x", &headers(&[("x-dev", "1")])).is_some());
}

#[test]
fn ending_a_session_removes_its_intercepts_and_cancels_their_connections() {
    let (registry, ids) = registry_with(&["alice"]);
    registry
        .create_intercept(&ids[0], http("orders", vec![], ""))
        .unwrap();
    let hit = headers(&[("x-telepresence-intercept-id", "id-alice:orders")]);
    let intercept = routed(&registry, "/", &hit).unwrap();
    registry.close_session(&ids[0]);
    assert!(intercept.ended.is_cancelled());
    assert!(routed(&registry, "/", &hit).is_none());
    assert!(matches!(registry.route(8080), Route::App));
}

#[test]
fn bad_regexes_and_unknown_ports_are_refused() {
    let (registry, ids) = registry_with(&["alice"]);
    let bad = HeaderMatch {
        name: "x-dev".into(),
        value: Some(header_match::Value::Regex("(".into())),
    };
    let err = registry
        .create_intercept(&ids[0], http("a", vec![bad], ""))
        .unwrap_err();
    assert!(matches!(err, InterceptError::BadRegex { .. }), "{err}");
    let mut elsewhere = http("b", vec![], "");
    elsewhere.port = 9999;
    let err = registry.create_intercept(&ids[0], elsewhere).unwrap_err();
    assert!(err.to_string().contains("8080"), "{err}");
}

const ALICE_TOKEN: &str = "alice-token-0123456789";
const BOB_TOKEN: &str = "bob-token-0123456789ab";

fn previewed(name: &str, token: &str, path_prefix: &str) -> CreateIntercept {
    CreateIntercept {
        preview_token: token.into(),
        ..http(name, vec![], path_prefix)
    }
}

/// Where a request offering `cookie` as its preview cookie goes.
fn by_cookie(registry: &Registry, path: &str, cookie: &str) -> Option<String> {
    let offered = preview::Offered {
        query: vec![],
        cookie: vec![cookie.as_bytes()],
    };
    registry
        .match_request(8080, path, &HeaderMap::new(), &offered)
        .intercept
        .map(|i| i.name.clone())
}

#[test]
fn a_preview_token_routes_without_the_header_match_and_never_crosses() {
    let (registry, ids) = registry_with(&["alice", "bob"]);
    registry
        .create_intercept(&ids[0], previewed("orders", ALICE_TOKEN, ""))
        .unwrap();
    registry
        .create_intercept(&ids[1], previewed("orders", BOB_TOKEN, ""))
        .unwrap();
    let holder = |token: &str| {
        let offered = preview::Offered {
            query: vec![],
            cookie: vec![token.as_bytes()],
        };
        let route = registry.match_request(8080, "/", &HeaderMap::new(), &offered);
        route.intercept.map(|i| i.session_id.clone())
    };
    assert_eq!(holder(ALICE_TOKEN).as_ref(), Some(&ids[0]));
    assert_eq!(holder(BOB_TOKEN).as_ref(), Some(&ids[1]));
    assert_eq!(by_cookie(&registry, "/", "alice-token-012345678"), None);
    assert_eq!(by_cookie(&registry, "/", "unknown-token-0123456789"), None);

    // The query parameter asks for the cookie, whichever way it goes.
    let offered = preview::Offered {
        query: vec![BOB_TOKEN.as_bytes()],
        cookie: vec![],
    };
    let route = registry.match_request(8080, "/", &HeaderMap::new(), &offered);
    let (to, cookie) = (route.intercept.unwrap(), route.preview.unwrap());
    assert!(Arc::ptr_eq(&to, &cookie));
    assert_eq!(
        cookie.preview_cookie().unwrap(),
        format!("tpr_preview={BOB_TOKEN}; Path=/; HttpOnly; SameSite=Lax")
    );

    // Removed: the token is unknown, the request goes to the app.
    assert!(registry.remove_intercept(&ids[1], "orders"));
    assert_eq!(by_cookie(&registry, "/", BOB_TOKEN), None);
    let route = registry.match_request(8080, "/", &HeaderMap::new(), &offered);
    assert!(route.intercept.is_none() && route.preview.is_none());
}

#[test]
fn a_preview_keeps_the_path_prefix_but_its_link_sets_the_cookie_anywhere() {
    let (registry, ids) = registry_with(&["alice"]);
    registry
        .create_intercept(&ids[0], previewed("orders", ALICE_TOKEN, "/api/"))
        .unwrap();
    assert_eq!(
        by_cookie(&registry, "/api/x", ALICE_TOKEN).as_deref(),
        Some("orders")
    );
    assert_eq!(by_cookie(&registry, "/", ALICE_TOKEN), None);
    let offered = preview::Offered {
        query: vec![ALICE_TOKEN.as_bytes()],
        cookie: vec![],
    };
    let route = registry.match_request(8080, "/", &HeaderMap::new(), &offered);
    assert!(route.intercept.is_none(), "the landing page is the app's");
    assert!(route.preview.is_some(), "and it sets the cookie");
}

#[test]
fn preview_tokens_are_unique_per_port_and_well_formed() {
    let (registry, ids) = registry_with(&["alice", "bob"]);
    registry
        .create_intercept(&ids[0], previewed("orders", ALICE_TOKEN, ""))
        .unwrap();
    let dev = HeaderMatch {
        name: "x-dev".into(),
        value: Some(header_match::Value::Exact("bob".into())),
    };
    let reused = CreateIntercept {
        headers: vec![dev],
        ..previewed("orders", ALICE_TOKEN, "")
    };
    let err = registry.create_intercept(&ids[1], reused).unwrap_err();
    assert!(
        matches!(err, InterceptError::PreviewTokenInUse { .. })
            && err.to_string().contains("alice@test"),
        "{err}"
    );
    // Re-creating one's own intercept with its token replaces it.
    registry
        .create_intercept(&ids[0], previewed("orders", ALICE_TOKEN, "/v2"))
        .unwrap();
    let err = registry
        .create_intercept(&ids[1], previewed("cart", "bad token; x", ""))
        .unwrap_err();
    assert!(
        matches!(err, InterceptError::BadPreviewToken { .. }),
        "{err}"
    );
    assert!(!err.to_string().contains("bad token"), "{err}");
    assert!(!format!("{err:?}").contains("bad token"), "{err:?}");
}
