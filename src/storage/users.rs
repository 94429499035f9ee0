//! REST users, refresh tokens, the token signing secret and the audit log.
//!
//! The last active admin cannot be deleted, demoted or deactivated: the check and the
//! change happen in one transaction, so two admins removing each other cannot both win.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, TransactionBehavior, params};
use uuid::Uuid;

use super::{Db, StorageError};
use crate::auth::Role;

#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    pub role: Role,
    pub password_hash: String,
    pub active: bool,
    /// Access tokens of another generation are void.
    pub token_generation: i64,
    pub created_at: DateTime<Utc>,
}

pub struct NewUser {
    pub username: String,
    pub email: Option<String>,
    pub role: Role,
    pub password_hash: String,
}

/// A partial update; `None` leaves the field as it is.
#[derive(Default)]
pub struct UserUpdate {
    pub email: Option<Option<String>>,
    pub role: Option<Role>,
    pub active: Option<bool>,
    pub password_hash: Option<String>,
}

#[derive(Debug)]
pub enum UserChange {
    Done(Option<UserRecord>),
    NotFound,
    /// The change would leave no active admin.
    LastAdmin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: DateTime<Utc>,
    /// The user name, when the request carried a valid token.
    pub actor: Option<String>,
    /// The client's address.
    pub client: Option<String>,
    pub action: String,
    pub detail: String,
}

const USER_COLUMNS: &str = "id, username, email, role, password_hash, active, token_generation, created_at_ms";

fn read_user(row: &Row<'_>) -> rusqlite::Result<UserRecord> {
    let role: String = row.get(3)?;
    Ok(UserRecord {
        id: row.get(0)?,
        username: row.get(1)?,
        email: row.get(2)?,
        // The column's CHECK allows only the three names.
        role: Role::parse(&role).unwrap_or(Role::Operator),
        password_hash: row.get(4)?,
        active: row.get(5)?,
        token_generation: row.get(6)?,
        created_at: DateTime::from_timestamp_millis(row.get(7)?).unwrap_or_default(),
    })
}

pub(super) fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::ConstraintViolation)
}

impl Db {
    pub fn user_count(&self) -> Result<u64, StorageError> {
        let n: i64 = self.conn.query_row("SELECT count(*) FROM users", [], |row| row.get(0))?;
        Ok(n as u64)
    }

    /// `None` when the user name is taken (names compare case-insensitively).
    pub fn insert_user(&mut self, new: NewUser, now: DateTime<Utc>) -> Result<Option<UserRecord>, StorageError> {
        let id = Uuid::new_v4().to_string();
        let inserted = self.conn.execute(
            "INSERT INTO users (id, username, email, role, password_hash, active, created_at_ms, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?6)",
            params![id, new.username, new.email, new.role.as_str(), new.password_hash, now.timestamp_millis()],
        );
        match inserted {
            Ok(_) => self.user(&id),
            Err(err) if is_unique_violation(&err) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    pub fn user(&self, id: &str) -> Result<Option<UserRecord>, StorageError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1");
        Ok(self.conn.query_row(&sql, [id], read_user).optional()?)
    }

    pub fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StorageError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = ?1");
        Ok(self.conn.query_row(&sql, [username], read_user).optional()?)
    }

    pub fn users(&self) -> Result<Vec<UserRecord>, StorageError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY username");
        Ok(self.conn.prepare(&sql)?.query_map([], read_user)?.collect::<Result<_, _>>()?)
    }

    /// Applies `update`. A new password or a deactivation voids the user's tokens: it
    /// bumps the access tokens' generation and removes every refresh token.
    pub fn update_user(
        &mut self,
        id: &str,
        update: UserUpdate,
        now: DateTime<Utc>,
    ) -> Result<UserChange, StorageError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1");
        let Some(user) = tx.query_row(&sql, [id], read_user).optional()? else {
            return Ok(UserChange::NotFound);
        };
        let role = update.role.unwrap_or(user.role);
        let active = update.active.unwrap_or(user.active);
        if user.role == Role::Admin && user.active && (role != Role::Admin || !active) && other_admins(&tx, id)? == 0 {
            return Ok(UserChange::LastAdmin);
        }
        let void_tokens = update.password_hash.is_some() || (user.active && !active);
        tx.execute(
            "UPDATE users SET email = ?2, role = ?3, active = ?4, password_hash = ?5,
                 token_generation = ?6, updated_at_ms = ?7
             WHERE id = ?1",
            params![
                id,
                update.email.unwrap_or(user.email),
                role.as_str(),
                active,
                update.password_hash.unwrap_or(user.password_hash),
                user.token_generation + i64::from(void_tokens),
                now.timestamp_millis(),
            ],
        )?;
        if void_tokens {
            tx.execute("DELETE FROM refresh_tokens WHERE user_id = ?1", [id])?;
        }
        let updated = tx.query_row(&sql, [id], read_user).optional()?;
        tx.commit()?;
        Ok(UserChange::Done(updated))
    }

    pub fn delete_user(&mut self, id: &str) -> Result<UserChange, StorageError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1");
        let Some(user) = tx.query_row(&sql, [id], read_user).optional()? else {
            return Ok(UserChange::NotFound);
        };
        if user.role == Role::Admin && user.active && other_admins(&tx, id)? == 0 {
            return Ok(UserChange::LastAdmin);
        }
        // Refresh tokens go with the user (ON DELETE CASCADE).
        tx.execute("DELETE FROM users WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(UserChange::Done(None))
    }

    pub fn insert_refresh_token(
        &mut self,
        token_hash: &str,
        user_id: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        // Expired tokens go when new ones come: the table stays as small as the sessions.
        self.conn.execute("DELETE FROM refresh_tokens WHERE expires_at_ms <= ?1", [now.timestamp_millis()])?;
        self.conn.execute(
            "INSERT INTO refresh_tokens (token_hash, user_id, created_at_ms, expires_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![token_hash, user_id, now.timestamp_millis(), expires_at.timestamp_millis()],
        )?;
        Ok(())
    }

    /// Uses up a refresh token: removes it and returns its user when it was valid at
    /// `now`. A token can be used once.
    pub fn take_refresh_token(&mut self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<String>, StorageError> {
        let found: Option<(String, i64)> = self
            .conn
            .query_row(
                "DELETE FROM refresh_tokens WHERE token_hash = ?1 RETURNING user_id, expires_at_ms",
                [token_hash],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        Ok(found.filter(|(_, expires)| *expires > now.timestamp_millis()).map(|(user, _)| user))
    }

    /// Logout: removes the user's refresh token; false when it was not theirs or unknown.
    pub fn revoke_refresh_token(&mut self, token_hash: &str, user_id: &str) -> Result<bool, StorageError> {
        let n = self
            .conn
            .execute("DELETE FROM refresh_tokens WHERE token_hash = ?1 AND user_id = ?2", [token_hash, user_id])?;
        Ok(n == 1)
    }

    /// The access-token signing secret, made on first use and kept across restarts.
    pub fn signing_secret(&mut self) -> Result<String, StorageError> {
        if let Some(secret) = self.setting("auth.signing_secret")? {
            return Ok(secret);
        }
        let secret = crate::auth::random_token();
        self.put_setting("auth.signing_secret", &secret)?;
        Ok(secret)
    }

    pub fn audit(
        &mut self,
        at: DateTime<Utc>,
        actor: Option<&str>,
        client: Option<&str>,
        action: &str,
        detail: &str,
    ) -> Result<(), StorageError> {
        self.conn.execute(
            "INSERT INTO audit_log (at_ms, actor, client, action, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![at.timestamp_millis(), actor, client, action, detail],
        )?;
        Ok(())
    }

    /// Newest first; `before` pages back by sequence number.
    pub fn audit_log(&self, limit: u32, before: Option<i64>) -> Result<Vec<AuditEntry>, StorageError> {
        let mut statement = self.conn.prepare(
            "SELECT seq, at_ms, actor, client, action, detail FROM audit_log
             WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows = statement.query_map(params![before.unwrap_or(i64::MAX), limit], |row| {
            Ok(AuditEntry {
                seq: row.get(0)?,
                at: DateTime::from_timestamp_millis(row.get(1)?).unwrap_or_default(),
                actor: row.get(2)?,
                client: row.get(3)?,
                action: row.get(4)?,
                detail: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn other_admins(tx: &rusqlite::Transaction<'_>, id: &str) -> rusqlite::Result<i64> {
    tx.query_row("SELECT count(*) FROM users WHERE role = 'admin' AND active = 1 AND id != ?1", [id], |row| row.get(0))
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    fn user(name: &str, role: Role) -> NewUser {
        NewUser { username: name.into(), email: None, role, password_hash: "$argon2id$stub".into() }
    }

    #[test]
    fn users_names_are_unique_and_the_last_admin_stays() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), false).unwrap();
        let now = Utc::now();
        let admin = db.insert_user(user("admin", Role::Admin), now).unwrap().unwrap();
        assert!(db.insert_user(user("ADMIN", Role::Operator), now).unwrap().is_none(), "case-insensitive");
        let op = db.insert_user(user("op", Role::Operator), now).unwrap().unwrap();
        assert_eq!(db.user_count().unwrap(), 2);

        let demote = UserUpdate { role: Some(Role::Engineer), ..Default::default() };
        assert!(matches!(db.update_user(&admin.id, demote, now).unwrap(), UserChange::LastAdmin));
        assert!(matches!(db.delete_user(&admin.id).unwrap(), UserChange::LastAdmin));
        let off = UserUpdate { active: Some(false), ..Default::default() };
        assert!(matches!(db.update_user(&admin.id, off, now).unwrap(), UserChange::LastAdmin));

        let promote = UserUpdate { role: Some(Role::Admin), ..Default::default() };
        assert!(matches!(db.update_user(&op.id, promote, now).unwrap(), UserChange::Done(Some(_))));
        assert!(matches!(db.delete_user(&admin.id).unwrap(), UserChange::Done(None)));
        assert!(matches!(db.delete_user(&admin.id).unwrap(), UserChange::NotFound));
    }

    #[test]
    fn refresh_tokens_are_single_use_expire_and_go_with_a_password_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), false).unwrap();
        let now = Utc::now();
        let u = db.insert_user(user("admin", Role::Admin), now).unwrap().unwrap();
        db.insert_refresh_token("h1", &u.id, now + TimeDelta::hours(1), now).unwrap();
        assert_eq!(db.take_refresh_token("h1", now).unwrap().as_deref(), Some(u.id.as_str()));
        assert_eq!(db.take_refresh_token("h1", now).unwrap(), None, "used once");

        db.insert_refresh_token("h2", &u.id, now + TimeDelta::hours(1), now).unwrap();
        assert_eq!(db.take_refresh_token("h2", now + TimeDelta::hours(2)).unwrap(), None, "expired");

        db.insert_refresh_token("h3", &u.id, now + TimeDelta::hours(1), now).unwrap();
        let later = now + TimeDelta::seconds(5);
        let change = UserUpdate { password_hash: Some("$argon2id$new".into()), ..Default::default() };
        let UserChange::Done(Some(changed)) = db.update_user(&u.id, change, later).unwrap() else { panic!() };
        assert_eq!(changed.token_generation, 1);
        assert_eq!(db.take_refresh_token("h3", now).unwrap(), None, "revoked by the password change");

        db.insert_refresh_token("h4", &u.id, now + TimeDelta::hours(1), now).unwrap();
        assert!(!db.revoke_refresh_token("h4", "someone else").unwrap());
        assert!(db.revoke_refresh_token("h4", &u.id).unwrap());
    }

    #[test]
    fn signing_secret_is_made_once_and_audit_pages_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), false).unwrap();
        let secret = db.signing_secret().unwrap();
        assert_eq!(db.signing_secret().unwrap(), secret);
        let now = Utc::now();
        for n in 0..3 {
            db.audit(now, None, Some("10.0.0.9"), "login_failed", &format!("user x{n}")).unwrap();
        }
        let page = db.audit_log(2, None).unwrap();
        assert_eq!(page.iter().map(|e| e.detail.as_str()).collect::<Vec<_>>(), ["user x2", "user x1"]);
        let rest = db.audit_log(10, Some(page[1].seq)).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].client.as_deref(), Some("10.0.0.9"));
    }
}
