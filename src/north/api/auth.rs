//! Who may call what: login, refresh and logout, users (admin), the audit log, and the
//! `guard` middleware in front of every route, which limits each client's request rate,
//! checks the bearer token and applies the route's role (`required_role`).
//!
//! The user directory is an in-memory copy of the users table (id → name, role, active,
//! tokens valid after), written only by the handlers here after their commit, so that a
//! request is checked without a database round trip and a disabled user or a changed
//! password takes effect at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::error::ApiError;
#[allow(unused_imports, reason = "named by the OpenAPI attributes")]
use super::error::{ErrorBody, Guarded, Invalid, NotFound};
use super::wrenches::json_error;
use crate::auth::{Role, Tokens};
use crate::config::AuthConfig;
use crate::storage::{AuditEntry, NewUser, Storage, UserChange, UserRecord, UserUpdate};

/// The authenticated user of a request, put in its extensions by `guard`.
#[derive(Debug, Clone)]
pub struct Caller {
    pub id: String,
    pub username: String,
    pub role: Role,
}

/// The client's address (for the audit log), put in every request's extensions by
/// `guard`; `None` when the server was not started with connection info (router tests).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

#[derive(Debug, Clone)]
struct DirectoryEntry {
    username: String,
    role: Role,
    active: bool,
    token_generation: i64,
}

/// Tokens, the user directory and the rate limiters; one per API.
pub struct AuthState {
    tokens: Tokens,
    refresh_ttl: TimeDelta,
    /// A tiny leaf cache behind a std lock, never held across an await.
    directory: RwLock<HashMap<String, DirectoryEntry>>,
    logins: Limiter,
    requests: Limiter,
}

/// Made at start-up: the signing secret, the first admin when there is no user, and the
/// directory. Returns the first admin's password when it was just made.
pub async fn prepare(storage: &Storage, config: &AuthConfig) -> anyhow::Result<(Arc<AuthState>, Option<String>)> {
    let secret = storage.call(|db| db.signing_secret()).await?;
    let first_admin = storage
        .call(|db| {
            if db.user_count()? > 0 {
                return Ok(None);
            }
            let password = crate::auth::random_password();
            let new = NewUser {
                username: "admin".to_owned(),
                email: None,
                role: Role::Admin,
                password_hash: crate::auth::hash_password(&password),
            };
            db.insert_user(new, Utc::now())?;
            db.audit(Utc::now(), None, None, "user_created", "first start: user admin (admin)")?;
            Ok(Some(password))
        })
        .await?;
    let users = storage.call(|db| db.users()).await?;
    let to_delta = |d: Duration| TimeDelta::from_std(d).expect("validated lifetimes fit");
    let state = AuthState {
        tokens: Tokens::new(secret.as_bytes(), to_delta(config.access_token_ttl)),
        refresh_ttl: to_delta(config.refresh_token_ttl),
        directory: RwLock::new(users.iter().map(|u| (u.id.clone(), entry(u))).collect()),
        logins: Limiter::per_minute(config.logins_per_minute),
        requests: Limiter::per_minute(config.requests_per_minute),
    };
    Ok((Arc::new(state), first_admin))
}

fn entry(user: &UserRecord) -> DirectoryEntry {
    DirectoryEntry {
        username: user.username.clone(),
        role: user.role,
        active: user.active,
        token_generation: user.token_generation,
    }
}

impl AuthState {
    fn remember(&self, user: &UserRecord) {
        self.directory.write().expect("directory lock").insert(user.id.clone(), entry(user));
    }

    fn forget(&self, id: &str) {
        self.directory.write().expect("directory lock").remove(id);
    }

    /// The caller a bearer token stands for, if the token is valid now, its user active
    /// and its generation the user's current one.
    fn caller(&self, token: &str, now: DateTime<Utc>) -> Result<Caller, &'static str> {
        let claims = self.tokens.verify(token, now).map_err(|err| match err {
            crate::auth::TokenError::Expired => "token expired",
            crate::auth::TokenError::Invalid => "invalid token",
        })?;
        let directory = self.directory.read().expect("directory lock");
        match directory.get(&claims.sub) {
            Some(user) if user.active && claims.generation == user.token_generation => {
                Ok(Caller { id: claims.sub.clone(), username: user.username.clone(), role: user.role })
            }
            Some(user) if !user.active => Err("user is disabled"),
            Some(_) => Err("token revoked"),
            None => Err("user no longer exists"),
        }
    }
}

/// The least role a route needs; `None` for the public ones. Reads are for every user,
/// changes for engineers, users and the audit log for admins; operators may also inspect,
/// acknowledge alerts and manage their own account.
pub fn required_role(method: &Method, route: &str) -> Option<Role> {
    const PUBLIC: [&str; 7] = [
        "/api/v1/health",
        "/api/v1/ready",
        "/metrics",
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/openapi.json",
        "/docs",
    ];
    const OPERATOR_CHANGES: [&str; 6] = [
        "/api/v1/inspect",
        "/api/v1/inspect/camera",
        "/api/v1/auth/logout",
        "/api/v1/alerts/{id}/acknowledge",
        "/api/v1/users/me",
        "/api/v1/users/me/password",
    ];
    if PUBLIC.contains(&route) {
        return None;
    }
    let own_account = route.starts_with("/api/v1/users/me") || route == "/api/v1/auth/me";
    if (route.starts_with("/api/v1/users") && !own_account) || route == "/api/v1/audit" {
        return Some(Role::Admin);
    }
    // The configuration names MQTT and OPC-UA credentials.
    if route == "/api/v1/config" {
        return Some(Role::Engineer);
    }
    // A dataset export hands out every labelled image.
    if route == "/api/v1/learning/export" {
        return Some(Role::Engineer);
    }
    // Operators may flag a doubtful result and label the queue at the HMI.
    if ["/api/v1/learning/{id}", "/api/v1/learning/{id}/annotations"].contains(&route) {
        return Some(Role::Operator);
    }
    // The station's operators build units and log in at the station.
    let operator_station = route.starts_with("/api/v1/coaching")
        || ["/api/v1/operators/rfid", "/api/v1/operators/login", "/api/v1/operators/validate-password"]
            .contains(&route);
    if *method == Method::GET || *method == Method::HEAD || OPERATOR_CHANGES.contains(&route) || operator_station {
        return Some(Role::Operator);
    }
    Some(Role::Engineer)
}

/// Per-client request limits (GCRA: a burst of the per-minute figure, refilled evenly).
struct Limiter {
    quota: Quota,
    per_minute: u32,
    buckets: RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock, StateInformationMiddleware>,
}

enum Verdict {
    Allowed { remaining: u32, reset: Duration },
    Limited { retry_after: Duration },
}

/// Clients remembered before forgetting those that are back to a full burst.
const MAX_TRACKED_CLIENTS: usize = 4096;

impl Limiter {
    fn per_minute(n: u32) -> Limiter {
        let per_minute = NonZeroU32::new(n).expect("validated: at least 1");
        let quota = Quota::per_minute(per_minute);
        Limiter { quota, per_minute: per_minute.get(), buckets: RateLimiter::hashmap(quota).with_middleware() }
    }

    fn check(&self, client: IpAddr) -> Verdict {
        if self.buckets.len() > MAX_TRACKED_CLIENTS {
            self.buckets.retain_recent();
        }
        match self.buckets.check_key(&client) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let reset = self.quota.replenish_interval() * (self.per_minute - remaining);
                Verdict::Allowed { remaining, reset }
            }
            Err(not_until) => Verdict::Limited { retry_after: not_until.wait_time_from(DefaultClock::default().now()) },
        }
    }
}

fn seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// In front of every route: rate limit (login has its own), then token, then role.
pub async fn guard(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let Some(route) = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()) else {
        // No route matched: the fallback answers 404 whoever asks.
        return next.run(request).await;
    };
    let method = request.method().clone();
    let needed = required_role(&method, &route);
    let probe = matches!(route.as_str(), "/api/v1/health" | "/api/v1/ready" | "/metrics");
    let client = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    request.extensions_mut().insert(ClientAddr(client));
    let auth = state.auth.clone();
    let limiter = if route == "/api/v1/auth/login" { &auth.logins } else { &auth.requests };
    let mut limit_headers = None;
    if let (false, Some(client)) = (probe, client) {
        match limiter.check(client) {
            Verdict::Allowed { remaining, reset } => limit_headers = Some((limiter.per_minute, remaining, reset)),
            Verdict::Limited { retry_after } => {
                let wait = seconds_up(retry_after).max(1);
                let mut response = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("rate limit exceeded: {} requests per minute; retry in {wait} s", limiter.per_minute),
                )
                .into_response();
                let headers = response.headers_mut();
                headers.insert(header::RETRY_AFTER, HeaderValue::from(wait));
                set_limit_headers(headers, limiter.per_minute, 0, retry_after);
                return response;
            }
        }
    }
    if let Some(needed) = needed {
        let token = bearer(request.headers()).or_else(|| query_token(&request));
        let caller = match token.map(|t| auth.caller(&t, Utc::now())) {
            None => return unauthorized("missing bearer token: log in at POST /api/v1/auth/login"),
            Some(Err(reason)) => return unauthorized(reason),
            Some(Ok(caller)) => caller,
        };
        if caller.role < needed {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!("{} {route} needs the {needed} role; {} is {}", method, caller.username, caller.role),
            )
            .into_response();
        }
        request.extensions_mut().insert(caller);
    }
    let mut response = next.run(request).await;
    if let Some((limit, remaining, reset)) = limit_headers {
        set_limit_headers(response.headers_mut(), limit, remaining, reset);
    }
    response
}

fn set_limit_headers(headers: &mut HeaderMap, limit: u32, remaining: u32, reset: Duration) {
    headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    headers.insert("x-ratelimit-reset", HeaderValue::from(seconds_up(reset)));
}

fn unauthorized(reason: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, reason).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// `?access_token=` on GET requests, for the clients that cannot set a header: a browser's
/// WebSocket and `<img>` tags showing a camera stream.
fn query_token(request: &Request) -> Option<String> {
    if request.method() != Method::GET {
        return None;
    }
    request.uri().query()?.split('&').find_map(|pair| pair.strip_prefix("access_token=")).map(|token| token.to_owned())
}

impl ClientAddr {
    fn text(self) -> Option<String> {
        self.0.map(|ip| ip.to_string())
    }
}

// ---- DTOs ----

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserDto {
    id: String,
    username: String,
    email: Option<String>,
    role: &'static str,
    /// The inspection seed's shape: a list, with this station's one role in it.
    roles: [&'static str; 1],
    active: bool,
    created_at: DateTime<Utc>,
}

impl From<&UserRecord> for UserDto {
    fn from(user: &UserRecord) -> UserDto {
        UserDto {
            id: user.id.clone(),
            username: user.username.clone(),
            email: user.email.clone(),
            role: user.role.as_str(),
            roles: [user.role.as_str()],
            active: user.active,
            created_at: user.created_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    access_token: String,
    refresh_token: String,
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: i64,
    user: UserDto,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserList {
    users: Vec<UserDto>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditDto {
    seq: i64,
    at: DateTime<Utc>,
    actor: Option<String>,
    client: Option<String>,
    action: String,
    detail: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditList {
    entries: Vec<AuditDto>,
}

impl From<AuditEntry> for AuditDto {
    fn from(e: AuditEntry) -> AuditDto {
        AuditDto { seq: e.seq, at: e.at, actor: e.actor, client: e.client, action: e.action, detail: e.detail }
    }
}

// ---- handlers ----

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    username: String,
    password: String,
}

/// POST /api/v1/auth/login. Failures are audit-logged and answer the same 401 whether the
/// user is unknown, disabled or the password wrong.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    request_body = LoginBody,
    responses((status = 200, description = "done", body = TokenPair), (status = 401, description = "Invalid credentials: unknown user, wrong password or disabled user", body = ErrorBody), (status = 429, description = "rate limit exceeded (Retry-After)", body = ErrorBody), Invalid)
)]
pub async fn login(
    State(state): State<ApiState>,
    axum::Extension(client): axum::Extension<ClientAddr>,
    body: Result<Json<LoginBody>, JsonRejection>,
) -> Result<Json<TokenPair>, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let storage = &state.inspector.storage;
    let client = client.text();
    let name = body.username.clone();
    let user = storage.call(move |db| db.user_by_name(&name)).await?;
    let (hash, usable) = match &user {
        Some(user) => (user.password_hash.clone(), user.active),
        None => (crate::auth::decoy_hash().to_owned(), false),
    };
    let matches = verify_off_runtime(body.password, hash).await?;
    let reason = match (&user, matches) {
        (None, _) => "unknown user",
        (Some(_), false) => "wrong password",
        (Some(_), true) => "user disabled",
    };
    let Some(user) = user.filter(|_| matches && usable) else {
        tracing::warn!(target: "audit", username = %body.username, client = ?client, reason, "login failed");
        let detail = format!("user {:?}: {reason}", body.username);
        storage.call(move |db| db.audit(Utc::now(), None, client.as_deref(), "login_failed", &detail)).await?;
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "Invalid credentials"));
    };
    let (actor, detail) = (user.username.clone(), format!("user {}", user.username));
    storage.call(move |db| db.audit(Utc::now(), Some(&actor), client.as_deref(), "login", &detail)).await?;
    issue(&state, user).await.map(Json)
}

async fn issue(state: &ApiState, user: UserRecord) -> Result<TokenPair, ApiError> {
    // The directory learns of users made or reset by `stationd user` at their login.
    state.auth.remember(&user);
    let now = Utc::now();
    let access_token = state.auth.tokens.issue(&user.id, &user.username, user.token_generation, now);
    let refresh_token = crate::auth::random_token();
    let (hash, user_id, expires) =
        (crate::auth::refresh_token_hash(&refresh_token), user.id.clone(), now + state.auth.refresh_ttl);
    state.inspector.storage.call(move |db| db.insert_refresh_token(&hash, &user_id, expires, now)).await?;
    Ok(TokenPair {
        access_token,
        refresh_token,
        token_type: "bearer",
        expires_in: state.auth.tokens.ttl.num_seconds(),
        user: UserDto::from(&user),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    refresh_token: String,
}

/// POST /api/v1/auth/refresh: a new access token and a new refresh token; the one sent is
/// used up.
#[utoipa::path(
    post,
    path = "/api/v1/auth/refresh",
    tag = "auth",
    request_body = RefreshBody,
    responses((status = 200, description = "done", body = TokenPair), (status = 401, description = "the refresh token is unknown, used, expired or its user disabled", body = ErrorBody), (status = 429, description = "rate limit exceeded (Retry-After)", body = ErrorBody), Invalid)
)]
pub async fn refresh(
    State(state): State<ApiState>,
    body: Result<Json<RefreshBody>, JsonRejection>,
) -> Result<Json<TokenPair>, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let hash = crate::auth::refresh_token_hash(&body.refresh_token);
    let user = state
        .inspector
        .storage
        .call(move |db| match db.take_refresh_token(&hash, Utc::now())? {
            Some(user_id) => db.user(&user_id),
            None => Ok(None),
        })
        .await?;
    match user.filter(|u| u.active) {
        Some(user) => issue(&state, user).await.map(Json),
        None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid or expired refresh token")),
    }
}

/// POST /api/v1/auth/logout {refresh_token}: revokes it. The access token lapses on its own.
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    request_body = RefreshBody,
    responses((status = 204, description = "done"), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn logout(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<Json<RefreshBody>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let hash = crate::auth::refresh_token_hash(&body.refresh_token);
    let revoked = state.inspector.storage.call(move |db| db.revoke_refresh_token(&hash, &caller.id)).await?;
    if revoked { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::not_found("no such refresh token for this user")) }
}

/// GET /api/v1/auth/me.
#[utoipa::path(
    get,
    path = "/api/v1/auth/me",
    tag = "auth",
    responses((status = 200, description = "done", body = UserDto), Guarded),
    security(("bearer" = []))
)]
pub async fn me(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<UserDto>, ApiError> {
    let user = state.inspector.storage.call(move |db| db.user(&caller.id)).await?;
    user.map(|u| Json(UserDto::from(&u))).ok_or_else(|| ApiError::not_found("user no longer exists"))
}

/// GET /api/v1/users.
#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "users",
    responses((status = 200, description = "done", body = UserList), Guarded),
    security(("bearer" = []))
)]
pub async fn list_users(State(state): State<ApiState>) -> Result<Json<UserList>, ApiError> {
    let users = state.inspector.storage.call(|db| db.users()).await?;
    Ok(Json(UserList { users: users.iter().map(UserDto::from).collect() }))
}

/// GET /api/v1/users/{id}.
#[utoipa::path(
    get,
    path = "/api/v1/users/{id}",
    tag = "users",
    params(("id" = String, Path)),
    responses((status = 200, description = "done", body = UserDto), Guarded, NotFound),
    security(("bearer" = []))
)]
pub async fn get_user(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<UserDto>, ApiError> {
    let user = state.inspector.storage.call(move |db| db.user(&id)).await?;
    user.map(|u| Json(UserDto::from(&u))).ok_or_else(|| ApiError::not_found("no such user"))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUserBody {
    username: String,
    password: String,
    role: String,
    #[serde(default)]
    email: Option<String>,
}

fn parse_role(text: &str) -> Result<Role, ApiError> {
    Role::parse(text)
        .ok_or_else(|| ApiError::unprocessable(format!("role {text:?} is not one of admin, engineer, operator")))
}

fn check_email(email: &Option<String>) -> Result<(), ApiError> {
    match email {
        Some(e) if e.len() > 254 || !e.contains('@') => {
            Err(ApiError::unprocessable(format!("email {e:?} is not an address")))
        }
        _ => Ok(()),
    }
}

pub(super) async fn verify_off_runtime(password: String, hash: String) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || crate::auth::verify_password(&password, &hash))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "password check failed"))
}

pub(super) async fn hash_off_runtime(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || crate::auth::hash_password(&password))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "password hashing failed"))
}

pub(super) async fn audit(
    state: &ApiState,
    caller: &Caller,
    client: ClientAddr,
    action: &'static str,
    detail: String,
) -> Result<(), ApiError> {
    let (actor, client) = (caller.username.clone(), client.text());
    tracing::info!(target: "audit", actor = %actor, client = ?client, action, detail = %detail);
    state
        .inspector
        .storage
        .call(move |db| db.audit(Utc::now(), Some(&actor), client.as_deref(), action, &detail))
        .await?;
    Ok(())
}

/// POST /api/v1/users (admin): 201 with the user; 409 when the name is taken.
#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "users",
    request_body = NewUserBody,
    responses((status = 201, description = "done", body = UserDto), (status = 409, description = "conflicts with the current state", body = ErrorBody), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn create_user(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    axum::Extension(client): axum::Extension<ClientAddr>,
    body: Result<Json<NewUserBody>, JsonRejection>,
) -> Result<(StatusCode, Json<UserDto>), ApiError> {
    let Json(body) = body.map_err(json_error)?;
    crate::auth::check_username(&body.username).map_err(ApiError::unprocessable)?;
    crate::auth::check_password_rules(&body.username, &body.password).map_err(ApiError::unprocessable)?;
    let role = parse_role(&body.role)?;
    check_email(&body.email)?;
    let new = NewUser {
        username: body.username.clone(),
        email: body.email,
        role,
        password_hash: hash_off_runtime(body.password).await?,
    };
    let Some(user) = state.inspector.storage.call(move |db| db.insert_user(new, Utc::now())).await? else {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("user {:?} exists", body.username)));
    };
    state.auth.remember(&user);
    audit(&state, &caller, client, "user_created", format!("user {} ({role})", user.username)).await?;
    Ok((StatusCode::CREATED, Json(UserDto::from(&user))))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserBody {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    active: Option<bool>,
    /// An admin's reset of someone's password.
    #[serde(default)]
    password: Option<String>,
}

/// PUT /api/v1/users/{id} (admin): email, role, active, password; 409 for a change that
/// would leave no active admin.
#[utoipa::path(
    put,
    path = "/api/v1/users/{id}",
    tag = "users",
    params(("id" = String, Path)),
    request_body = UpdateUserBody,
    responses((status = 200, description = "done", body = UserDto), (status = 409, description = "conflicts with the current state", body = ErrorBody), Guarded, NotFound, Invalid),
    security(("bearer" = []))
)]
pub async fn update_user(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    axum::Extension(client): axum::Extension<ClientAddr>,
    Path(id): Path<String>,
    body: Result<Json<UpdateUserBody>, JsonRejection>,
) -> Result<Json<UserDto>, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let role = body.role.as_deref().map(parse_role).transpose()?;
    check_email(&body.email)?;
    let password_hash = match body.password {
        Some(password) => {
            let target = id.clone();
            let user = state.inspector.storage.call(move |db| db.user(&target)).await?;
            let user = user.ok_or_else(|| ApiError::not_found("no such user"))?;
            crate::auth::check_password_rules(&user.username, &password).map_err(ApiError::unprocessable)?;
            Some(hash_off_runtime(password).await?)
        }
        None => None,
    };
    let what = describe_update(&body.email, role, body.active, password_hash.is_some());
    let update = UserUpdate { email: body.email.map(Some), role, active: body.active, password_hash };
    let user = apply_change(&state, &id, update).await?;
    audit(&state, &caller, client, "user_updated", format!("user {}: {what}", user.username)).await?;
    Ok(Json(UserDto::from(&user)))
}

fn describe_update(email: &Option<String>, role: Option<Role>, active: Option<bool>, password: bool) -> String {
    let mut parts = Vec::new();
    if email.is_some() {
        parts.push("email".to_owned());
    }
    if let Some(role) = role {
        parts.push(format!("role {role}"));
    }
    if let Some(active) = active {
        parts.push(if active { "enabled" } else { "disabled" }.to_owned());
    }
    if password {
        parts.push("password reset".to_owned());
    }
    if parts.is_empty() { "no change".to_owned() } else { parts.join(", ") }
}

async fn apply_change(state: &ApiState, id: &str, update: UserUpdate) -> Result<UserRecord, ApiError> {
    let target = id.to_owned();
    match state.inspector.storage.call(move |db| db.update_user(&target, update, Utc::now())).await? {
        UserChange::Done(Some(user)) => {
            state.auth.remember(&user);
            Ok(user)
        }
        UserChange::Done(None) | UserChange::NotFound => Err(ApiError::not_found("no such user")),
        UserChange::LastAdmin => Err(last_admin()),
    }
}

fn last_admin() -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "the station must keep one active admin")
}

/// DELETE /api/v1/users/{id} (admin): 204; 409 for the last active admin.
#[utoipa::path(
    delete,
    path = "/api/v1/users/{id}",
    tag = "users",
    params(("id" = String, Path)),
    responses((status = 204, description = "done"), (status = 409, description = "conflicts with the current state", body = ErrorBody), Guarded, NotFound),
    security(("bearer" = []))
)]
pub async fn delete_user(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    axum::Extension(client): axum::Extension<ClientAddr>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let target = id.clone();
    let name = state.inspector.storage.call(move |db| db.user(&target)).await?.map(|u| u.username);
    let target = id.clone();
    match state.inspector.storage.call(move |db| db.delete_user(&target)).await? {
        UserChange::Done(_) => {
            state.auth.forget(&id);
            let detail = format!("user {}", name.unwrap_or(id));
            audit(&state, &caller, client, "user_deleted", detail).await?;
            Ok(StatusCode::NO_CONTENT)
        }
        UserChange::NotFound => Err(ApiError::not_found("no such user")),
        UserChange::LastAdmin => Err(last_admin()),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeBody {
    email: Option<String>,
}

/// PUT /api/v1/users/me {email}: the caller's own email.
#[utoipa::path(
    put,
    path = "/api/v1/users/me",
    tag = "users",
    request_body = UpdateMeBody,
    responses((status = 200, description = "done", body = UserDto), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn update_me(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<Json<UpdateMeBody>, JsonRejection>,
) -> Result<Json<UserDto>, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    check_email(&body.email)?;
    let update = UserUpdate { email: Some(body.email), ..UserUpdate::default() };
    apply_change(&state, &caller.id, update).await.map(|u| Json(UserDto::from(&u)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    current_password: String,
    new_password: String,
}

/// PUT /api/v1/users/me/password: needs the current password; voids the caller's other
/// tokens (log in again).
#[utoipa::path(
    put,
    path = "/api/v1/users/me/password",
    tag = "users",
    request_body = PasswordBody,
    responses((status = 204, description = "done"), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn change_my_password(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    axum::Extension(client): axum::Extension<ClientAddr>,
    body: Result<Json<PasswordBody>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let id = caller.id.clone();
    let user = state.inspector.storage.call(move |db| db.user(&id)).await?;
    let user = user.ok_or_else(|| ApiError::not_found("user no longer exists"))?;
    let matches = verify_off_runtime(body.current_password, user.password_hash.clone()).await?;
    if !matches {
        audit(&state, &caller, client, "password_change_failed", "wrong current password".to_owned()).await?;
        return Err(ApiError::new(StatusCode::FORBIDDEN, "the current password is wrong"));
    }
    crate::auth::check_password_rules(&user.username, &body.new_password).map_err(ApiError::unprocessable)?;
    let update =
        UserUpdate { password_hash: Some(hash_off_runtime(body.new_password).await?), ..UserUpdate::default() };
    apply_change(&state, &caller.id, update).await?;
    audit(&state, &caller, client, "password_changed", format!("user {}", caller.username)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<u32>,
    before: Option<i64>,
}

/// GET /api/v1/audit?limit=&before= (admin): newest first.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "users",
    params(AuditQuery),
    responses((status = 200, description = "done", body = AuditList), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn audit_log(
    State(state): State<ApiState>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditList>, ApiError> {
    let Query(query) = query.map_err(super::routes::query_error)?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let entries = state.inspector.storage.call(move |db| db.audit_log(limit, query.before)).await?;
    Ok(Json(AuditList { entries: entries.into_iter().map(AuditDto::from).collect() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_by_route() {
        let get = Method::GET;
        let post = Method::POST;
        let put = Method::PUT;
        assert_eq!(required_role(&get, "/api/v1/health"), None);
        assert_eq!(required_role(&post, "/api/v1/auth/login"), None);
        assert_eq!(required_role(&get, "/metrics"), None);
        assert_eq!(required_role(&get, "/api/v1/inspections"), Some(Role::Operator));
        assert_eq!(required_role(&post, "/api/v1/inspect"), Some(Role::Operator));
        assert_eq!(required_role(&put, "/api/v1/users/me/password"), Some(Role::Operator));
        assert_eq!(required_role(&get, "/api/v1/auth/me"), Some(Role::Operator));
        assert_eq!(required_role(&post, "/api/v1/wrenches/toggle"), Some(Role::Engineer));
        assert_eq!(required_role(&Method::DELETE, "/api/v1/inspections/{id}"), Some(Role::Engineer));
        assert_eq!(required_role(&get, "/api/v1/config"), Some(Role::Engineer));
        assert_eq!(required_role(&get, "/api/v1/users"), Some(Role::Admin));
        assert_eq!(required_role(&put, "/api/v1/users/{id}"), Some(Role::Admin));
        assert_eq!(required_role(&get, "/api/v1/audit"), Some(Role::Admin));
    }
}
