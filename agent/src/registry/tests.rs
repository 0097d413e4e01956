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
    }
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
    assert_eq!(
        registry.match_request(8080, "/", &hit).unwrap().name,
        "orders"
    );
    let other = headers(&[("x-telepresence-intercept-id", "id-bob:orders")]);
    assert!(registry.match_request(8080, "/", &other).is_none());
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
    assert!(
        registry
            .match_request(8080, "/v1", &headers(&[("x-dev", "1")]))
            .is_none()
    );
    assert!(
        registry
            .match_request(8080, "/v2/x", &headers(&[("x-dev", "1")]))
            .is_some()
    );
}

#[test]
fn ending_a_session_removes_its_intercepts_and_cancels_their_connections() {
    let (registry, ids) = registry_with(&["alice"]);
    registry
        .create_intercept(&ids[0], http("orders", vec![], ""))
        .unwrap();
    let hit = headers(&[("x-telepresence-intercept-id", "id-alice:orders")]);
    let intercept = registry.match_request(8080, "/", &hit).unwrap();
    registry.close_session(&ids[0]);
    assert!(intercept.ended.is_cancelled());
    assert!(registry.match_request(8080, "/", &hit).is_none());
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
