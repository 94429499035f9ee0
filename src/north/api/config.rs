//! `GET /api/v1/config` and `PUT /api/v1/config` (engineer): the configuration file as
//! JSON with its secrets hidden, and changes to it.
//!
//! A PUT sends only what changes, as nested tables (`{"alerts": {"pass_rate_target_percent":
//! 85}}`; `null` removes a key, so its default applies). The change is merged into the file
//! with its comments and layout kept, the whole file is validated as at start-up (errors
//! name the key), written atomically (temporary file, fsync, rename, fsync of the
//! directory), audit-logged with the keys it changed, and applied at once where that is
//! safe: `log.filter` and the `[alerts]` rules. Every other change waits for a restart,
//! and both answers say which keys are waiting.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use chrono::Utc;
use serde::Serialize;
use serde_json::Value as Json_;
use tokio::sync::watch;

use super::ApiState;
use super::auth::{Caller, ClientAddr};
use super::error::ApiError;
#[allow(unused_imports, reason = "named by the OpenAPI attributes")]
use super::error::{ErrorBody, Guarded, Invalid};
use super::wrenches::json_error;
use crate::config::{Config, EMBEDDED_DEFAULTS};

/// Shown instead of a secret; sent back unchanged, it keeps the secret as it is.
pub const REDACTED: &str = "********";

/// The running configuration's file and what of it is live.
pub struct ConfigFile {
    /// `None` when the daemon runs on its embedded defaults: nothing to edit.
    pub path: Option<PathBuf>,
    /// The TOML the daemon runs on: the file at start plus the changes applied live.
    running: Mutex<toml::Table>,
    /// One change at a time.
    writing: tokio::sync::Mutex<()>,
    alerts: watch::Sender<crate::alerts::AlertsConfig>,
}

impl ConfigFile {
    pub fn new(config: &Config, alerts: watch::Sender<crate::alerts::AlertsConfig>) -> ConfigFile {
        let text = match &config.source {
            Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
            None => EMBEDDED_DEFAULTS.to_owned(),
        };
        ConfigFile {
            path: config.source.clone(),
            running: Mutex::new(text.parse().unwrap_or_default()),
            writing: tokio::sync::Mutex::new(()),
            alerts,
        }
    }

    fn read(&self) -> Result<String, ApiError> {
        match &self.path {
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read {}: {e}", path.display()))
            }),
            None => Ok(EMBEDDED_DEFAULTS.to_owned()),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ConfigView {
    /// The file, or `null` for the embedded defaults.
    path: Option<String>,
    config: Json_,
    /// Keys whose value in the file is not the running one (a restart applies them).
    restart_required: Vec<String>,
}

/// The configuration file as JSON, secrets hidden, with the keys waiting for a restart.
#[utoipa::path(
    get,
    path = "/api/v1/config",
    tag = "config",
    responses((status = 200, description = "done", body = ConfigView), Guarded),
    security(("bearer" = []))
)]
pub async fn get(State(state): State<ApiState>) -> Result<Json<ConfigView>, ApiError> {
    let file = &state.config_file;
    let on_disk: toml::Table =
        file.read()?.parse().map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")))?;
    let running = file.running.lock().expect("config lock").clone();
    let restart_required = changed_keys(&running, &on_disk).into_iter().collect();
    let mut config = serde_json::to_value(&on_disk).expect("TOML is JSON");
    redact(&mut config);
    Ok(Json(ConfigView { path: file.path.as_ref().map(|p| p.display().to_string()), config, restart_required }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ConfigChange {
    status: &'static str,
    changed: Vec<String>,
    /// Changed and already in effect.
    applied: Vec<String>,
    /// Every key that waits for a restart, from this change or earlier ones.
    restart_required: Vec<String>,
}

/// Changes configuration keys: validated, written atomically, audit-logged, applied live where safe.
#[utoipa::path(
    put,
    path = "/api/v1/config",
    tag = "config",
    request_body(content = Object, description = "the tables and keys to change; null removes a key"),
    responses((status = 200, description = "done", body = ConfigChange), (status = 409, description = "conflicts with the current state", body = ErrorBody), Guarded, Invalid),
    security(("bearer" = []))
)]
pub async fn put(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Extension(client): Extension<ClientAddr>,
    body: Result<Json<Json_>, JsonRejection>,
) -> Result<Json<ConfigChange>, ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let file = &state.config_file;
    let Some(path) = file.path.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the daemon runs on its embedded defaults; start it with --config FILE to change its configuration",
        ));
    };
    let Json_::Object(changes) = body else {
        return Err(ApiError::unprocessable("send a JSON object of the tables and keys to change"));
    };
    let _one_at_a_time = file.writing.lock().await;
    let before = file.read()?;
    let mut document: toml_edit::DocumentMut =
        before.parse().map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")))?;
    merge(document.as_table_mut(), &changes, "")?;
    let after = document.to_string();
    let config = Config::from_toml_str(&after).map_err(|e| ApiError::unprocessable(e.to_string()))?;
    config.check_files().map_err(|e| ApiError::unprocessable(e.to_string()))?;

    let old: toml::Table = before.parse().unwrap_or_default();
    let new: toml::Table = after.parse().expect("validated above");
    let changed: Vec<String> = changed_keys(&old, &new).into_iter().collect();
    if changed.is_empty() {
        let running = file.running.lock().expect("config lock").clone();
        let restart_required = changed_keys(&running, &new).into_iter().collect();
        return Ok(Json(ConfigChange { status: "unchanged", changed, applied: Vec::new(), restart_required }));
    }
    let written = tokio::task::spawn_blocking(move || write_atomically(&path, &after))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "writing the configuration failed"))?;
    written.map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot write the configuration: {e}"))
    })?;

    // Apply what is safe to apply live.
    let mut applied = Vec::new();
    if changed.iter().any(|k| k.starts_with("alerts.")) {
        file.alerts.send_replace(config.alerts.clone());
        applied.extend(changed.iter().filter(|k| k.starts_with("alerts.")).cloned());
    }
    if changed.iter().any(|k| k == "log.filter") {
        match crate::telemetry::set_filter(&config.log_filter) {
            Ok(()) => applied.push("log.filter".to_owned()),
            Err(reason) => tracing::info!(reason, "log filter not changed live; it applies at restart"),
        }
    }
    let restart_required = {
        let mut running = file.running.lock().expect("config lock");
        for key in &applied {
            copy_key(&new, &mut running, key);
        }
        changed_keys(&running, &new).into_iter().collect()
    };

    let detail = format!(
        "changed {}; applied {}",
        changed.join(", "),
        if applied.is_empty() { "none".to_owned() } else { applied.join(", ") }
    );
    tracing::info!(target: "audit", actor = caller.username, detail, "configuration changed");
    let (actor, client) = (caller.username.clone(), client.0.map(|ip| ip.to_string()));
    state
        .inspector
        .storage
        .call(move |db| db.audit(Utc::now(), Some(&actor), client.as_deref(), "config_changed", &detail))
        .await?;
    Ok(Json(ConfigChange { status: "saved", changed, applied, restart_required }))
}

/// Merges a JSON object into a TOML table: objects into tables (made when missing),
/// `null` removes, the redaction marker keeps a secret, anything else replaces.
fn merge(table: &mut toml_edit::Table, changes: &serde_json::Map<String, Json_>, prefix: &str) -> Result<(), ApiError> {
    for (key, value) in changes {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            Json_::Null => {
                table.remove(key);
            }
            Json_::String(s) if s == REDACTED => {}
            Json_::Object(inner) => {
                let entry = table.entry(key).or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()));
                match entry {
                    toml_edit::Item::Table(t) => merge(t, inner, &path)?,
                    toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => {
                        let mut expanded = t.clone().into_table();
                        merge(&mut expanded, inner, &path)?;
                        *entry = toml_edit::Item::Value(toml_edit::Value::InlineTable(expanded.into_inline_table()));
                    }
                    _ => return Err(ApiError::unprocessable(format!("`{path}` is a value, not a table"))),
                }
            }
            other => {
                let value = json_to_toml(other, &path)?;
                match table.get_mut(key) {
                    Some(toml_edit::Item::Value(existing)) => {
                        // Keep the comment and spacing around the old value.
                        let decor = existing.decor().clone();
                        *existing = value;
                        *existing.decor_mut() = decor;
                    }
                    _ => {
                        table.insert(key, toml_edit::Item::Value(value));
                    }
                }
            }
        }
    }
    Ok(())
}

fn json_to_toml(value: &Json_, path: &str) -> Result<toml_edit::Value, ApiError> {
    Ok(match value {
        Json_::Bool(b) => (*b).into(),
        Json_::Number(n) => match n.as_i64() {
            Some(i) => i.into(),
            None => n.as_f64().ok_or_else(|| ApiError::unprocessable(format!("`{path}`: number out of range")))?.into(),
        },
        Json_::String(s) => s.as_str().into(),
        Json_::Array(items) => {
            let mut array = toml_edit::Array::new();
            for item in items {
                array.push(json_to_toml(item, path)?);
            }
            toml_edit::Value::Array(array)
        }
        Json_::Null | Json_::Object(_) => {
            return Err(ApiError::unprocessable(format!("`{path}`: nested tables go in arrays only as values")));
        }
    })
}

/// Dotted paths of the leaf keys whose values differ between two tables.
fn changed_keys(a: &toml::Table, b: &toml::Table) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    diff(a, b, "", &mut keys);
    keys
}

fn diff(a: &toml::Table, b: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for name in names {
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        match (a.get(name), b.get(name)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => diff(x, y, &path, out),
            (Some(toml::Value::Table(x)), None) => diff(x, &toml::Table::new(), &path, out),
            (None, Some(toml::Value::Table(y))) => diff(&toml::Table::new(), y, &path, out),
            (x, y) if x != y => {
                out.insert(path);
            }
            _ => {}
        }
    }
}

/// Sets `key` (a dotted path) in `to` as it is in `from`, or removes it.
fn copy_key(from: &toml::Table, to: &mut toml::Table, key: &str) {
    let parts: Vec<&str> = key.split('.').collect();
    let (last, tables) = parts.split_last().expect("a key has a name");
    let mut source = Some(from);
    let mut target = to;
    for part in tables {
        source = source.and_then(|t| t.get(*part)).and_then(toml::Value::as_table);
        target = match target.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new())) {
            toml::Value::Table(t) => t,
            _ => return,
        };
    }
    match source.and_then(|t| t.get(*last)) {
        Some(value) => {
            target.insert(last.to_string(), value.clone());
        }
        None => {
            target.remove(*last);
        }
    }
}

/// Hides passwords and secrets, wherever they are.
fn redact(value: &mut Json_) {
    match value {
        Json_::Object(map) => {
            for (key, inner) in map.iter_mut() {
                let secret = key == "password" || key.ends_with("_password") || key.contains("secret");
                if secret && inner.is_string() {
                    *inner = Json_::String(REDACTED.to_owned());
                } else {
                    redact(inner);
                }
            }
        }
        Json_::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Temporary file beside the target, fsync, rename over it, fsync the directory: a crash
/// leaves the old file or the new one, never a torn one. The old one stays as `.bak`.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("stationd.toml");
    let temporary = dir.join(format!(".{name}.new"));
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    if let Ok(metadata) = std::fs::metadata(path) {
        std::fs::set_permissions(&temporary, metadata.permissions())?;
        // The backup is best effort: a read-only copy must not block the change.
        let _ = std::fs::copy(path, dir.join(format!("{name}.bak")));
    }
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_comments_removes_on_null_and_keeps_redacted_secrets() {
        let text =
            "# top\n[alerts]\n# the target\npass_rate_target_percent = 90 # percent\n\n[mqtt]\npassword = \"s3cret\"\n";
        let mut document: toml_edit::DocumentMut = text.parse().unwrap();
        let changes = serde_json::json!({
            "alerts": {"pass_rate_target_percent": 85, "check_interval_s": null},
            "mqtt": {"password": REDACTED},
            "log": {"filter": "debug"}
        });
        merge(document.as_table_mut(), changes.as_object().unwrap(), "").unwrap();
        let merged = document.to_string();
        assert!(merged.contains("# the target\npass_rate_target_percent = 85 # percent"), "{merged}");
        assert!(merged.contains("password = \"s3cret\""), "{merged}");
        assert!(merged.contains("[log]\nfilter = \"debug\""), "{merged}");

        let bad = serde_json::json!({"alerts": {"pass_rate_target_percent": {"x": 1}}});
        let mut document: toml_edit::DocumentMut = text.parse().unwrap();
        let err = merge(document.as_table_mut(), bad.as_object().unwrap(), "").unwrap_err();
        assert_eq!(err.detail, "`alerts.pass_rate_target_percent` is a value, not a table");
    }

    #[test]
    fn changed_keys_copy_and_redact() {
        let a: toml::Table = "x = 1\n[t]\ny = 2\nz = 3\n".parse().unwrap();
        let b: toml::Table = "x = 1\n[t]\ny = 5\n[u]\nw = true\n".parse().unwrap();
        assert_eq!(changed_keys(&a, &b).into_iter().collect::<Vec<_>>(), ["t.y", "t.z", "u.w"]);
        let mut running = a.clone();
        copy_key(&b, &mut running, "t.y");
        copy_key(&b, &mut running, "t.z");
        assert_eq!(changed_keys(&running, &b).into_iter().collect::<Vec<_>>(), ["u.w"]);

        let mut json =
            serde_json::json!({"mqtt": {"password": "p", "host": "h"}, "opcua": {"users": {"plc": {"password": "q"}}}});
        redact(&mut json);
        assert_eq!(json["mqtt"], serde_json::json!({"password": REDACTED, "host": "h"}));
        assert_eq!(json["opcua"]["users"]["plc"]["password"], REDACTED);
    }
}
