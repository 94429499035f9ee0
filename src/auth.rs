//! Users, roles and tokens for the REST API: the role ladder, the password rules, argon2id
//! hashing, and HS256 access tokens checked against an explicit `now`.
//!
//! What is stored (users, refresh tokens, the signing secret, the audit log) lives in
//! `storage/users.rs`; the HTTP side (login, refresh, the per-route policy and the rate
//! limits) in `north/api/auth.rs`. Nothing here does I/O except drawing random bytes.
//!
//! Access tokens are short-lived JWTs (default 15 min) carrying the user id and the user's
//! token generation; the API also checks them against the live user directory, so a
//! disabled user, a deleted one or a changed password stops working at once rather than
//! at expiry.
//! Refresh tokens are opaque random strings stored only as SHA-256 hashes, rotated on
//! every use and revoked by logout.

use std::fmt;

use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a user may do. Each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Runs the station: reads everything, inspects, acknowledges alerts.
    Operator,
    /// Sets the station up: devices, pipelines, models, configuration.
    Engineer,
    /// Manages users and reads the audit log.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Engineer, Role::Operator];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Engineer => "engineer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Shortest password accepted. Long passphrases beat composition rules (NIST SP 800-63B),
/// so length is the rule, plus not being the user name.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest password accepted, so that hashing cost stays bounded.
pub const MAX_PASSWORD_BYTES: usize = 256;

/// Checks a new password against the rules; the error is a sentence for the user. An empty
/// `username` skips the name rule.
pub fn check_password_rules(username: &str, password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!("password must have at least {MIN_PASSWORD_CHARS} characters"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("password must have at most {MAX_PASSWORD_BYTES} bytes"));
    }
    if password.trim().is_empty() {
        return Err("password must not be only spaces".to_owned());
    }
    if !username.is_empty() && password.to_lowercase().contains(&username.to_lowercase()) {
        return Err("password must not contain the user name".to_owned());
    }
    Ok(())
}

/// User names: 1 to 64 of letters, digits, `.`, `_`, `-`, `@`.
pub fn check_username(username: &str) -> Result<(), String> {
    let ok = !username.is_empty()
        && username.len() <= 64
        && username.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok { Ok(()) } else { Err("username must be 1 to 64 letters, digits, '.', '_', '-' or '@'".to_owned()) }
}

/// An argon2id PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`), OWASP's minimum
/// parameters. Takes tens of milliseconds on purpose: call it off the async runtime.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).expect("argon2 with default parameters").to_string()
}

/// Whether `password` matches a stored hash. A hash that does not parse never matches.
pub fn verify_password(password: &str, stored_hash: &str) -> bool {
    PasswordHash::new(stored_hash)
        .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// A hash of a password nobody knows, verified against when the user name is unknown so
/// that a failed login takes as long whether or not the user exists.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&random_token()))
}

/// 32 random bytes from the OS, hex: refresh tokens, signing secrets.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

/// A random password for the first admin: 20 characters without look-alikes.
pub fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 20];
    OsRng.fill_bytes(&mut bytes);
    // 256 % 54 != 0 leaves a slight bias; 20 characters of ~5.7 bits still give > 100 bits.
    bytes.iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect()
}

/// How a refresh token is stored: its SHA-256, so a copy of the database does not hold
/// usable tokens.
pub fn refresh_token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// User name, for logs.
    pub name: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// The user's token generation at issue; a password change moves it on.
    pub generation: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
}

/// Issues and checks access tokens with one HS256 secret (kept in the database, made at
/// first start).
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub ttl: chrono::TimeDelta,
}

impl Tokens {
    pub fn new(secret: &[u8], ttl: chrono::TimeDelta) -> Tokens {
        Tokens { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), ttl }
    }

    pub fn issue(&self, user_id: &str, username: &str, generation: i64, now: DateTime<Utc>) -> String {
        let claims = Claims {
            sub: user_id.to_owned(),
            name: username.to_owned(),
            generation,
            iat: now.timestamp(),
            exp: (now + self.ttl).timestamp(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).expect("HS256 signs any claims")
    }

    /// Checks the signature and algorithm, then expiry against `now` (no leeway: the
    /// station's clock is the only clock involved).
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let claims =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(|_| TokenError::Invalid)?.claims;
        if now.timestamp() >= claims.exp { Err(TokenError::Expired) } else { Ok(claims) }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn tokens_verify_until_expiry_and_reject_tampering() {
        let tokens = Tokens::new(b"0123456789abcdef0123456789abcdef", TimeDelta::minutes(15));
        let token = tokens.issue("u1", "alice", 0, at(0));
        let claims = tokens.verify(&token, at(899)).unwrap();
        assert_eq!((claims.sub.as_str(), claims.name.as_str(), claims.exp - claims.iat), ("u1", "alice", 900));
        assert_eq!(tokens.verify(&token, at(900)), Err(TokenError::Expired));

        let other = Tokens::new(b"another secret, another station!", TimeDelta::minutes(15));
        assert_eq!(other.verify(&token, at(1)), Err(TokenError::Invalid), "signed with another secret");
        let mut forged = token.clone();
        forged.pop();
        assert_eq!(tokens.verify(&forged, at(1)), Err(TokenError::Invalid));
        assert_eq!(tokens.verify("not a token", at(1)), Err(TokenError::Invalid));
        // "alg": "none" with the same claims.
        let payload = token.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert_eq!(tokens.verify(&none, at(1)), Err(TokenError::Invalid));
    }

    #[test]
    fn password_rules() {
        assert!(check_password_rules("alice", "correct horse").is_ok());
        assert_eq!(check_password_rules("alice", "short").unwrap_err(), "password must have at least 10 characters");
        assert_eq!(
            check_password_rules("alice", "my-Alice-password").unwrap_err(),
            "password must not contain the user name"
        );
        assert!(check_password_rules("alice", "          ").is_err());
        assert!(check_password_rules("alice", &"x".repeat(300)).is_err());
        assert!(check_username("line-2.op_1@plant").is_ok());
        assert!(check_username("bad name").is_err());
        assert!(check_username("").is_err());
    }

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let hash = hash_password("correct horse");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong horse!", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
        assert_ne!(hash, hash_password("correct horse"), "salted");
    }

    #[test]
    fn roles_order_and_round_trip() {
        assert!(Role::Admin > Role::Engineer && Role::Engineer > Role::Operator);
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
        assert_eq!(random_password().len(), 20);
        assert_eq!(random_token().len(), 64);
        assert_ne!(random_token(), random_token());
    }
}
