use super::*;
use crate::config::Config;

fn router() -> Router {
    let config = Config::from_yaml(
        r#"
services:
  - name: notes
    upstream: http://127.0.0.1:9000/base/
    endpoints:
      - { method: POST, path: /notes/create, credits: 5 }
      - { method: GET,  path: "/notes/{id}", credits: 1 }
      - { method: ANY,  path: "/search/*",   credits: 2 }
"#,
    )
    .unwrap();
    Router::new(&config.services).unwrap()
}

#[test]
fn routes_to_the_endpoint_and_rewrites_the_path() {
    let r = router();
    let m = r
        .route("POST", "/api/proxy/notes/notes/create", Some("a=1"))
        .unwrap();
    assert!(matches!(m.endpoint().credits, EndpointPrice::Fixed(5)));
    assert_eq!(m.upstream_path, "/base/notes/create?a=1");
    let m = r.route("GET", "/api/proxy/notes/notes/7", None).unwrap();
    assert_eq!(
        (m.endpoint().path.as_str(), m.upstream_path.as_str()),
        ("/notes/{id}", "/base/notes/7")
    );
    let m = r
        .route("DELETE", "/api/proxy/notes/search/x/y", None)
        .unwrap();
    assert!(matches!(m.endpoint().credits, EndpointPrice::Fixed(2)));
}

#[test]
fn unknown_services_and_endpoints_are_not_found() {
    let r = router();
    assert!(matches!(
        r.route("GET", "/api/proxy/nope/x", None),
        Err(RouteError::NotFound(_))
    ));
    assert!(matches!(
        r.route("GET", "/api/proxy/notes/other", None),
        Err(RouteError::NotFound(_))
    ));
    assert!(matches!(
        r.route("GET", "/api/proxy/notes", None),
        Err(RouteError::NotFound(_))
    ));
    assert!(matches!(
        r.route("GET", "/elsewhere", None),
        Err(RouteError::NotFound(_))
    ));
    assert!(matches!(
        r.route("GET", "/api/proxy/evil.com:80/x", None),
        Err(RouteError::NotFound(_))
    ));
}

#[test]
fn hostile_paths_are_bad_requests() {
    let r = router();
    for path in [
        "/api/proxy/notes/../admin",
        "/api/proxy/notes/search/..",
        "/api/proxy/notes/./search/x",
        "/api/proxy/notes/search/%2e%2e/x",
        "/api/proxy/notes/search/%2E%2E/x",
        "/api/proxy/notes/search/a%2fb",
        "/api/proxy/notes/search/a%2Fb",
        "/api/proxy/notes/search/a%5cb",
        "/api/proxy/notes/search/a%00",
        "/api/proxy/notes/search/a\\b",
        "/api/proxy/notes//search/x",
        "/api/proxy/%2e%2e/x",
        "relative",
    ] {
        assert!(
            matches!(r.route("GET", path, None), Err(RouteError::BadPath(_))),
            "{path}"
        );
    }
}
