//! The OpenAPI document covers the router exactly: every route registered in
//! `src/north/api/mod.rs` is in `/openapi.json` with its method, and nothing else is;
//! every protected operation documents 401, 403 and 429 and names the bearer scheme; the
//! docs page needs no network.

use std::collections::BTreeSet;

use hyper::{Method, StatusCode};

use crate::support::Daemon;

/// (method, path) of every `.route(...)` in the router's source.
fn router_routes() -> BTreeSet<(String, String)> {
    let source = std::fs::read_to_string("src/north/api/mod.rs").unwrap();
    let start = source.find("pub fn router(").expect("the router function");
    let body = &source[start..];
    let end = body.find("\n}\n").unwrap();
    let body = &body[..end];
    let nest = body.find(".nest(\"/api/v1\", api)").expect("the /api/v1 nest");
    let mut routes = BTreeSet::new();
    for (at, _) in body.match_indices(".route(") {
        // rustfmt puts the path on its own line when the handlers do not fit.
        let rest = body[at + 7..].trim_start().strip_prefix('"').expect("a route's path is a string literal");
        let path = &rest[..rest.find('"').unwrap()];
        let full = if at < nest { format!("/api/v1{path}") } else { path.to_owned() };
        // The handlers of this route: up to the next `.route(` or the end of the chain.
        let next = rest.find(".route(").or_else(|| rest.find(";")).unwrap_or(rest.len());
        let handlers = &rest[..next];
        for method in ["get", "post", "put", "patch", "delete"] {
            if handlers.contains(&format!("{method}(")) {
                routes.insert((method.to_owned(), full.clone()));
            }
        }
    }
    assert!(routes.len() > 60, "the parser found the routes: {routes:?}");
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_with_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let (status, _, body) = daemon.request_as(None, Method::GET, "/openapi.json", None, Vec::new()).await;
    assert_eq!(status, StatusCode::OK, "public");
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.insert((method.clone(), path.clone()));
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.contains_key("429")
                    || path.ends_with("/health")
                    || path.ends_with("/ready")
                    || path == "/metrics",
                "{method} {path}: 429 documented"
            );
            let secured = op.get("security").is_some_and(|s| !s.as_array().unwrap().is_empty());
            if secured {
                for status in ["401", "403"] {
                    assert!(responses.contains_key(status), "{method} {path}: {status} documented");
                    assert!(
                        responses[status]["content"]["application/json"]["schema"]["$ref"]
                            .as_str()
                            .is_some_and(|r| r.ends_with("/ErrorBody")),
                        "{method} {path}: errors are {{\"detail\"}}"
                    );
                }
            }
            if path.contains('{') {
                assert!(responses.contains_key("404"), "{method} {path}: 404 documented");
            }
        }
    }
    let routes = router_routes();
    let missing: Vec<_> = routes.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routes).collect();
    assert!(missing.is_empty(), "routes without documentation: {missing:?}");
    assert!(extra.is_empty(), "documented but not routed: {extra:?}");

    // Bodies are described by their schemas.
    let login = &doc["paths"]["/api/v1/auth/login"]["post"];
    assert!(
        login["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str().unwrap().ends_with("/LoginBody")
    );
    assert!(doc["components"]["schemas"]["InspectionDto"]["properties"]["decision"].is_object());

    // The docs page renders the document without any network.
    let (status, _, page) = daemon.request_as(None, Method::GET, "/docs", None, Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8(page.to_vec()).unwrap();
    assert!(page.contains("fetch(\"/openapi.json\")"));
    assert!(!page.contains("http://") && !page.contains("https://"), "no external resources");
    assert!(daemon.shutdown().await);
}
