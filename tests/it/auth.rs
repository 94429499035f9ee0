//! Users and tokens end to end: 401 without a valid token, 403 below a route's role,
//! refresh rotation, logout, password change and disabling voiding tokens at once,
//! expiry, the first admin, and the per-client rate limits with their headers.

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{ADMIN, Daemon, sample, test_config};

async fn as_user(daemon: &Daemon, token: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let (content_type, bytes) = match body {
        Some(body) => (Some("application/json"), body.to_string().into_bytes()),
        None => (None, Vec::new()),
    };
    let (status, _, body) = daemon.request_as(Some(token), method, path, content_type, bytes).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_refresh_logout_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;

    // Probes are public; everything else needs a valid token.
    for path in ["/api/v1/health", "/api/v1/ready", "/metrics"] {
        let (status, _, _) = daemon.request_as(None, Method::GET, path, None, Vec::new()).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (status, headers, body) = daemon.request_as(None, Method::GET, "/api/v1/inspections", None, Vec::new()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert!(String::from_utf8_lossy(&body).contains("missing bearer token"), "{body:?}");
    let (status, body) = as_user(&daemon, "not.a.token", Method::GET, "/api/v1/inspections", None).await;
    assert_eq!((status, body["detail"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid token")));

    // A failed login is a plain 401 and lands in the audit log with the client address.
    let (status, body) = daemon.login(ADMIN.0, "wrong password!").await;
    assert_eq!((status, body["detail"].as_str()), (StatusCode::UNAUTHORIZED, Some("Invalid credentials")));
    let (status, body) = daemon.login("nobody", "wrong password!").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (_, audit) = daemon.get_json("/api/v1/audit?limit=5").await;
    let failed: Vec<&Value> =
        audit["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "login_failed").collect();
    assert_eq!(failed.len(), 2, "{audit}");
    assert_eq!(failed[0]["client"], "127.0.0.1");
    assert_eq!(failed[0]["detail"], "user \"nobody\": unknown user");

    // Admin makes an engineer and an operator; the rules are checked.
    let (status, body) = daemon
        .json(Method::POST, "/api/v1/users", Some(json!({"username": "olga", "password": "short", "role": "operator"})))
        .await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("password must have at least 10 characters"))
    );
    let (status, body) = daemon
        .json(
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": "olga", "password": "line 2 lamp", "role": "boss"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, olga) = daemon
        .json(
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": "olga", "password": "line 2 lamp", "role": "operator"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{olga}");
    assert_eq!(olga["roles"], json!(["operator"]));
    let (status, _) = daemon
        .json(
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": "OLGA", "password": "line 2 lamp", "role": "operator"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = daemon
        .json(
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": "erik", "password": "torque and vision", "role": "engineer"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, login) = daemon.login("olga", "line 2 lamp").await;
    assert_eq!(status, StatusCode::OK, "{login}");
    assert_eq!((login["token_type"].as_str(), login["expires_in"].as_i64()), (Some("bearer"), Some(900)));
    assert_eq!(login["user"]["username"], "olga");
    let operator = login["access_token"].as_str().unwrap().to_owned();
    let (_, erik) = daemon.login("erik", "torque and vision").await;
    let engineer = erik["access_token"].as_str().unwrap().to_owned();

    // Operators read and inspect; changes need an engineer; users need an admin.
    let (status, me) = as_user(&daemon, &operator, Method::GET, "/api/v1/auth/me", None).await;
    assert_eq!((status, me["username"].as_str()), (StatusCode::OK, Some("olga")));
    let (status, _) = as_user(&daemon, &operator, Method::GET, "/api/v1/inspections", None).await;
    assert_eq!(status, StatusCode::OK);
    let (boundary, form) = crate::support::multipart(&sample("00_ok.jpg"), "image/jpeg", &[]);
    let (status, _, _) = daemon
        .request_as(
            Some(&operator),
            Method::POST,
            "/api/v1/inspect",
            Some(&format!("multipart/form-data; boundary={boundary}")),
            form,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let cleanup = Some(json!({"older_than_days": 30}));
    let (status, body) = as_user(&daemon, &operator, Method::POST, "/api/v1/storage/cleanup", cleanup.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["detail"], "POST /api/v1/storage/cleanup needs the engineer role; olga is operator");
    let (status, _) = as_user(&daemon, &engineer, Method::POST, "/api/v1/storage/cleanup", cleanup).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = as_user(&daemon, &engineer, Method::GET, "/api/v1/users", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, users) = daemon.get_json("/api/v1/users").await;
    assert_eq!((status, users["users"].as_array().unwrap().len()), (StatusCode::OK, 3));

    // Refresh rotates: the token sent is used up.
    let first_refresh = login["refresh_token"].as_str().unwrap().to_owned();
    let (status, rotated) =
        daemon.json(Method::POST, "/api/v1/auth/refresh", Some(json!({"refresh_token": first_refresh}))).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let (status, _) =
        daemon.json(Method::POST, "/api/v1/auth/refresh", Some(json!({"refresh_token": first_refresh}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a refresh token is used once");
    let refreshed = rotated["access_token"].as_str().unwrap().to_owned();
    let second_refresh = rotated["refresh_token"].as_str().unwrap().to_owned();
    let (status, _) = as_user(&daemon, &refreshed, Method::GET, "/api/v1/auth/me", None).await;
    assert_eq!(status, StatusCode::OK);

    // Logout revokes the refresh token.
    let body = Some(json!({"refresh_token": second_refresh}));
    let (status, _) = as_user(&daemon, &refreshed, Method::POST, "/api/v1/auth/logout", body.clone()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = daemon.json(Method::POST, "/api/v1/auth/refresh", body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A password change needs the current one and voids the older tokens at once.
    let wrong = Some(json!({"current_password": "guess guess", "new_password": "a new lamp 4 me"}));
    let (status, _) = as_user(&daemon, &refreshed, Method::PUT, "/api/v1/users/me/password", wrong).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let right = Some(json!({"current_password": "line 2 lamp", "new_password": "a new lamp 4 me"}));
    let (status, _) = as_user(&daemon, &refreshed, Method::PUT, "/api/v1/users/me/password", right).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = as_user(&daemon, &refreshed, Method::GET, "/api/v1/auth/me", None).await;
    assert_eq!((status, body["detail"].as_str()), (StatusCode::UNAUTHORIZED, Some("token revoked")));
    assert_eq!(daemon.login("olga", "line 2 lamp").await.0, StatusCode::UNAUTHORIZED);
    let (status, again) = daemon.login("olga", "a new lamp 4 me").await;
    assert_eq!(status, StatusCode::OK);
    let operator = again["access_token"].as_str().unwrap().to_owned();
    let (status, me) =
        as_user(&daemon, &operator, Method::PUT, "/api/v1/users/me", Some(json!({"email": "olga@plant.example"})))
            .await;
    assert_eq!((status, me["email"].as_str()), (StatusCode::OK, Some("olga@plant.example")));

    // Disabling a user stops their token and their logins.
    let path = format!("/api/v1/users/{}", olga["id"].as_str().unwrap());
    let (status, _) = daemon.json(Method::PUT, &path, Some(json!({"active": false}))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = as_user(&daemon, &operator, Method::GET, "/api/v1/auth/me", None).await;
    assert_eq!((status, body["detail"].as_str()), (StatusCode::UNAUTHORIZED, Some("user is disabled")));
    assert_eq!(daemon.login("olga", "a new lamp 4 me").await.0, StatusCode::UNAUTHORIZED);

    // The last admin stays.
    let (_, me) = daemon.get_json("/api/v1/auth/me").await;
    let path = format!("/api/v1/users/{}", me["id"].as_str().unwrap());
    let (status, body) = daemon.json(Method::DELETE, &path, None).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (StatusCode::CONFLICT, Some("the station must keep one active admin"))
    );
    let (status, _) = daemon.json(Method::PUT, &path, Some(json!({"role": "operator"}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let erik_path = format!("/api/v1/users/{}", erik["user"]["id"].as_str().unwrap());
    let (status, _) = daemon.json(Method::DELETE, &erik_path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = as_user(&daemon, &engineer, Method::GET, "/api/v1/inspections", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a deleted user's token stops at once");

    assert!(daemon.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_expire_and_refresh_renews_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.auth.access_token_ttl = std::time::Duration::from_secs(2);
    let daemon = Daemon::start_with(config).await;
    let (_, login) = daemon.login(ADMIN.0, ADMIN.1).await;
    let token = login["access_token"].as_str().unwrap();
    assert_eq!(login["expires_in"], 2);
    assert_eq!(as_user(&daemon, token, Method::GET, "/api/v1/auth/me", None).await.0, StatusCode::OK);

    // Token expiry is wall-clock time: poll until it lapses (2 s, at most 5 s).
    let started = std::time::Instant::now();
    let body = loop {
        let (status, body) = as_user(&daemon, token, Method::GET, "/api/v1/auth/me", None).await;
        if status == StatusCode::UNAUTHORIZED {
            break body;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "the token did not expire");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(body["detail"], "token expired");
    let (status, renewed) =
        daemon.json(Method::POST, "/api/v1/auth/refresh", Some(json!({"refresh_token": login["refresh_token"]}))).await;
    assert_eq!(status, StatusCode::OK);
    let fresh = renewed["access_token"].as_str().unwrap();
    assert_eq!(as_user(&daemon, fresh, Method::GET, "/api/v1/auth/me", None).await.0, StatusCode::OK);
    assert!(daemon.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_headers_and_spare_the_probes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.auth.requests_per_minute = 5;
    // The harness's own login takes one of these.
    config.auth.logins_per_minute = 3;
    let daemon = Daemon::start_with(config).await;

    for remaining in (0..5).rev() {
        let (status, headers, _) = daemon.request(Method::GET, "/api/v1/stations", None, Vec::new()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-ratelimit-limit"], "5");
        assert_eq!(headers["x-ratelimit-remaining"], remaining.to_string().as_str());
        assert!(headers.contains_key("x-ratelimit-reset"));
    }
    let (status, headers, body) = daemon.request(Method::GET, "/api/v1/stations", None, Vec::new()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body:?}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry), "one request comes back every 12 s: {retry}");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert!(String::from_utf8_lossy(&body).contains("rate limit exceeded: 5 requests per minute"));
    assert_eq!(daemon.get("/api/v1/health").await.0, StatusCode::OK, "probes are not limited");
    assert_eq!(daemon.get("/metrics").await.0, StatusCode::OK);

    // Logins have their own, smaller budget.
    assert_eq!(daemon.login(ADMIN.0, "wrong password!").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(daemon.login(ADMIN.0, "wrong password!").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(daemon.login(ADMIN.0, ADMIN.1).await.0, StatusCode::TOO_MANY_REQUESTS);
    assert!(daemon.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_makes_an_admin_with_a_random_password_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = stationd::app::start(test_config(dir.path())).await.unwrap();
    let password = app.first_admin_password.clone().expect("no user yet: an admin is made");
    assert_eq!(password.len(), 20);
    assert!(app.shutdown().await);

    let app = stationd::app::start(test_config(dir.path())).await.unwrap();
    assert!(app.first_admin_password.is_none(), "made once");
    app.wait_ready().await.unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = hyper::Request::post(format!("http://{}/api/v1/auth/login", app.api_addr))
        .header("content-type", "application/json")
        .body(json!({"username": "admin", "password": password}).to_string().into())
        .unwrap();
    assert_eq!(client.request(request).await.unwrap().status(), StatusCode::OK);
    assert!(app.shutdown().await);
}
