//! Test harness: a daemon on a temporary state dir, and a small HTTP client for it.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use stationd::app::RunningApp;
use stationd::auth::Role;
use stationd::config::{Config, EMBEDDED_DEFAULTS};

pub struct Daemon {
    pub app: RunningApp,
    pub addr: SocketAddr,
    /// An admin's access token, sent with every request of the helpers below.
    pub token: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The test admin, made in the database before the daemon starts.
pub const ADMIN: (&str, &str) = ("tester", "test-password-1");

/// The embedded defaults, with state under `state_dir` and the API on an ephemeral port.
pub fn test_config(state_dir: &std::path::Path) -> Config {
    Config::from_toml_str(&test_config_text(state_dir)).expect("test config is valid")
}

/// `test_config` as TOML text, for tests that write a config file.
pub fn test_config_text(state_dir: &std::path::Path) -> String {
    EMBEDDED_DEFAULTS
        .replace("state_dir = \"./var\"", &format!("state_dir = {:?}", state_dir.display().to_string()))
        .replace("bind = \"127.0.0.1:8080\"", "bind = \"127.0.0.1:0\"")
        .replace("bind = \"127.0.0.1:5020\"", "bind = \"127.0.0.1:0\"")
        .replace("bind = \"127.0.0.1:4840\"", "bind = \"127.0.0.1:0\"")
        // The demo's simulated wrench produces results on a timer; tests drive their own.
        .replace("sim_interval_ms = 5000\n", "")
        // Tests call faster than an HMI; the limits have their own test.
        + "\n[auth]\nrequests_per_minute = 100000\nlogins_per_minute = 1000\n"
}

/// `test_config` with state under `dir/state` and camera `cam0` pointed at an empty
/// folder under `dir`: a camera that will not open.
pub fn blind_camera_config(dir: &std::path::Path) -> Config {
    let empty = dir.join("no-frames");
    std::fs::create_dir_all(&empty).unwrap();
    let mut config = test_config(&dir.join("state"));
    config.cameras.insert(
        "cam0".into(),
        stationd::config::CameraConfig { backend: stationd::config::CameraBackend::Sim { folder: empty } },
    );
    config
}

impl Daemon {
    pub async fn start(state_dir: &std::path::Path) -> Daemon {
        Daemon::start_with(test_config(state_dir)).await
    }

    pub async fn start_with(config: Config) -> Daemon {
        add_user(&config, ADMIN.0, ADMIN.1, Role::Admin);
        let app = stationd::app::start(config).await.expect("daemon starts");
        app.wait_ready().await.expect("daemon gets ready");
        Daemon::logged_in(app).await
    }

    async fn logged_in(app: RunningApp) -> Daemon {
        let addr = app.api_addr;
        let mut daemon =
            Daemon { app, addr, token: String::new(), client: Client::builder(TokioExecutor::new()).build_http() };
        let (status, body) = daemon.login(ADMIN.0, ADMIN.1).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        daemon.token = body["access_token"].as_str().expect("an access token").to_owned();
        daemon
    }

    /// POST /api/v1/auth/login.
    pub async fn login(&self, username: &str, password: &str) -> (StatusCode, serde_json::Value) {
        let body = serde_json::json!({"username": username, "password": password}).to_string().into_bytes();
        let (status, _, body) =
            self.request_as(None, Method::POST, "/api/v1/auth/login", Some("application/json"), body).await;
        (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }

    /// Starts without waiting for every service to be ready: start-up is over when none is
    /// still starting (some may be degraded).
    pub async fn start_settled(config: Config) -> Daemon {
        add_user(&config, ADMIN.0, ADMIN.1, Role::Admin);
        let app = stationd::app::start(config).await.expect("daemon starts");
        app.readiness.wait_all_settled().await;
        Daemon::logged_in(app).await
    }

    pub async fn shutdown(self) -> bool {
        self.app.shutdown().await
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, hyper::HeaderMap, Bytes) {
        self.request_as(Some(&self.token), method, path, content_type, body).await
    }

    /// A request with another bearer token, or none.
    pub async fn request_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, hyper::HeaderMap, Bytes) {
        let mut builder = Request::builder().method(method).uri(format!("http://{}{path}", self.addr));
        if let Some(token) = token {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(content_type) = content_type {
            builder = builder.header(hyper::header::CONTENT_TYPE, content_type);
        }
        let response = self.client.request(builder.body(Full::new(Bytes::from(body))).unwrap()).await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        (status, headers, body)
    }

    /// A GET whose body is read by the caller (a stream).
    pub async fn get_streaming(&self, path: &str) -> hyper::Response<hyper::body::Incoming> {
        let request = Request::get(format!("http://{}{path}", self.addr))
            .header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.client.request(request).await.expect("request")
    }

    /// A request with an optional JSON body; the answer as JSON (`null` when empty).
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let (content_type, bytes) = match body {
            Some(body) => (Some("application/json"), body.to_string().into_bytes()),
            None => (None, Vec::new()),
        };
        let (status, _, body) = self.request(method, path, content_type, bytes).await;
        let json = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or_else(|_| panic!("{path}: not JSON: {body:?}"))
        };
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Bytes) {
        let (status, _, body) = self.request(Method::GET, path, None, Vec::new()).await;
        (status, body)
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, serde_json::Value) {
        let (status, body) = self.get(path).await;
        (status, serde_json::from_slice(&body).unwrap_or_else(|_| panic!("{path}: not JSON: {body:?}")))
    }

    /// POST /api/v1/inspect with a multipart form.
    pub async fn upload(
        &self,
        file: &[u8],
        content_type: &str,
        fields: &[(&str, &str)],
    ) -> (StatusCode, serde_json::Value) {
        let (boundary, body) = multipart(file, content_type, fields);
        let (status, _, body) = self
            .request(Method::POST, "/api/v1/inspect", Some(&format!("multipart/form-data; boundary={boundary}")), body)
            .await;
        (status, serde_json::from_slice(&body).unwrap_or_else(|_| panic!("not JSON: {body:?}")))
    }
}

/// Adds a user to the daemon's database, as `stationd user add` does.
pub fn add_user(config: &Config, username: &str, password: &str, role: Role) {
    let mut db = stationd::storage::Db::open_for_users(&config.state_dir).expect("database opens");
    let new = stationd::storage::NewUser {
        username: username.to_owned(),
        email: None,
        role,
        password_hash: stationd::auth::hash_password(password),
    };
    db.insert_user(new, chrono::Utc::now()).expect("user stored");
}

pub fn multipart(file: &[u8], content_type: &str, fields: &[(&str, &str)]) -> (&'static str, Vec<u8>) {
    let boundary = "stationd-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"part\"\r\nContent-Type: {content_type}\r\n\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (boundary, body)
}

pub fn sample(name: &str) -> Vec<u8> {
    std::fs::read(format!("examples/parts/{name}")).expect("sample image")
}

/// A controller simulator on 127.0.0.1:0, running until the token is cancelled.
pub async fn start_sim(
    settings: stationd::south::wrench::sim::SimSettings,
) -> (stationd::south::wrench::sim::SimHandle, tokio_util::sync::CancellationToken) {
    let sim = stationd::south::wrench::sim::SimController::bind(([127, 0, 0, 1], 0).into(), settings)
        .await
        .expect("sim binds");
    let handle = sim.handle();
    let token = tokio_util::sync::CancellationToken::new();
    let stop = token.clone();
    #[allow(clippy::disallowed_methods, reason = "a test controller, not a daemon service")]
    tokio::spawn(async move { sim.run(stop).await });
    (handle, token)
}
