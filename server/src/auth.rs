//! Connection tokens: JWTs signed by the platform's backend, verified locally.
//!
//! HS256 with a shared secret is the default; ES256 with a public key is the
//! option for backends that keep the signing key to themselves. Verification
//! never calls anything over the network.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use roomcast_protocol::{ErrorCode, v1};
use serde::{Deserialize, Serialize};

use anyhow::Context;

use crate::Config;
use roomcast_protocol::dev::SECRET_FILE as DEV_SECRET_FILE;

/// A user's role in every room it joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Viewer,
    Host,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "host" => Some(Self::Host),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Host => "host",
            Self::Admin => "admin",
        }
    }

    pub fn to_proto(self) -> v1::Role {
        match self {
            Self::Viewer => v1::Role::Viewer,
            Self::Host => v1::Role::Host,
            Self::Admin => v1::Role::Admin,
        }
    }
}

/// Who is on the other end of a connection, as the token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: Arc<str>,
    pub name: Arc<str>,
    pub role: Role,
}

impl Identity {
    pub fn to_proto(&self) -> v1::User {
        v1::User {
            user_id: self.user_id.to_string(),
            display_name: self.name.to_string(),
            role: self.role.to_proto() as i32,
        }
    }
}

/// The JWT claims roomcast reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id: required, 1 to 128 bytes.
    pub sub: String,
    /// Display name, at most 128 bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `viewer`, `host` or `admin`; `viewer` when absent. Anything else is a
    /// bad token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Expiry, Unix seconds: required, checked with the verifier's leeway.
    pub exp: u64,
}

/// Checks connection tokens.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier").field("algorithms", &self.validation.algorithms).finish()
    }
}

impl TokenVerifier {
    pub fn hs256(secret: &[u8], leeway_secs: u64) -> Self {
        Self::new(DecodingKey::from_secret(secret), Algorithm::HS256, leeway_secs)
    }

    /// `pem`: an SPKI public key (`-----BEGIN PUBLIC KEY-----`).
    pub fn es256(pem: &[u8], leeway_secs: u64) -> Result<Self, jsonwebtoken::errors::Error> {
        Ok(Self::new(DecodingKey::from_ec_pem(pem)?, Algorithm::ES256, leeway_secs))
    }

    fn new(key: DecodingKey, alg: Algorithm, leeway_secs: u64) -> Self {
        let mut validation = Validation::new(alg);
        validation.leeway = leeway_secs;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_aud = false;
        Self { key, validation }
    }

    /// Verifies `token` and returns who it names, or the code to close with.
    pub fn verify(&self, token: &str) -> Result<Identity, ErrorCode> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => ErrorCode::TokenExpired,
            _ => ErrorCode::BadToken,
        })?;
        let c = data.claims;
        if c.sub.is_empty() || c.sub.len() > 128 || c.name.len() > 128 {
            return Err(ErrorCode::BadToken);
        }
        let role = match c.role.as_deref() {
            None => Role::Viewer,
            Some(r) => Role::parse(r).ok_or(ErrorCode::BadToken)?,
        };
        Ok(Identity { user_id: c.sub.into(), name: c.name.into(), role })
    }
}

/// Mints an HS256 token, for development and tests. Production tokens are
/// minted by the platform's backend.
pub fn mint_hs256(secret: &[u8], user: &str, name: &str, role: Role, ttl: Duration) -> String {
    let exp = SystemTime::now()
        .checked_add(ttl)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(u64::MAX);
    mint_hs256_with_exp(secret, user, name, role, exp)
}

/// Mints an HS256 token with an explicit expiry (Unix seconds).
pub fn mint_hs256_with_exp(secret: &[u8], user: &str, name: &str, role: Role, exp: u64) -> String {
    let claims = Claims { sub: user.into(), name: name.into(), role: Some(role.as_str().into()), exp };
    match jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret)) {
        Ok(t) => t,
        Err(e) => unreachable!("HS256 signing of plain claims cannot fail: {e}"),
    }
}

/// The HS256 secret: the configured one, or the development secret in the
/// data directory (created on first use).
pub fn hs256_secret(config: &Config) -> anyhow::Result<Vec<u8>> {
    if let Some(s) = &config.auth.hs256_secret {
        return Ok(s.as_bytes().to_vec());
    }
    dev_secret(&config.data_dir)
}

fn dev_secret(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(DEV_SECRET_FILE);
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if s.is_empty() {
            return make_dev_secret(dir, &path);
        }
        // What this node writes: 64 hex digits. Anything else (a file an
        // older node cut short on a full disk) would be a weak secret.
        anyhow::ensure!(
            s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()),
            "the development secret {} is not 64 hex digits (cut short?): delete it to make a new one \
             (tokens signed with the old one stop working), or set auth.hs256_secret",
            path.display()
        );
        return Ok(s.as_bytes().to_vec());
    }
    make_dev_secret(dir, &path)
}

fn make_dev_secret(dir: &Path, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut raw = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    crate::durable::write_private(path, hex.as_bytes())?;
    Ok(hex.into_bytes())
}

/// The token verifier the configuration asks for.
pub fn verifier(config: &Config) -> anyhow::Result<TokenVerifier> {
    let leeway = config.auth.leeway_secs;
    match &config.auth.es256_public_key {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            TokenVerifier::es256(&pem, leeway).context("ES256 public key")
        }
        None => Ok(TokenVerifier::hs256(&hs256_secret(config)?, leeway)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        roomcast_protocol::unix_ms(SystemTime::now()) / 1000
    }

    #[test]
    fn the_development_secret_is_made_once_and_one_cut_short_refuses_the_start() {
        let dir = std::env::temp_dir().join(format!("roomcast-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = dev_secret(&dir).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(dev_secret(&dir).unwrap(), first, "kept and reused");
        assert!(!dir.join(format!("{DEV_SECRET_FILE}.tmp")).exists(), "no temporary file left");
        // What an older node left when the disk filled mid-write.
        std::fs::write(dir.join(DEV_SECRET_FILE), &first[..20]).unwrap();
        let refused = dev_secret(&dir).unwrap_err().to_string();
        assert!(refused.contains("not 64 hex digits") && refused.contains("delete it"), "{refused}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn accepts_a_good_token() {
        let v = TokenVerifier::hs256(b"s3cret", 0);
        let t = mint_hs256(b"s3cret", "alice", "Alice", Role::Host, Duration::from_secs(60));
        let id = v.verify(&t).unwrap();
        assert_eq!(&*id.user_id, "alice");
        assert_eq!(&*id.name, "Alice");
        assert_eq!(id.role, Role::Host);
    }

    #[test]
    fn rejects_forged_expired_and_garbage() {
        let v = TokenVerifier::hs256(b"s3cret", 0);
        let forged = mint_hs256(b"other", "alice", "", Role::Viewer, Duration::from_secs(60));
        assert_eq!(v.verify(&forged), Err(ErrorCode::BadToken));
        let expired = mint_hs256_with_exp(b"s3cret", "alice", "", Role::Viewer, now() - 10);
        assert_eq!(v.verify(&expired), Err(ErrorCode::TokenExpired));
        assert_eq!(v.verify("not.a.jwt"), Err(ErrorCode::BadToken));
        assert_eq!(v.verify(""), Err(ErrorCode::BadToken));
    }

    #[test]
    fn default_leeway_tolerates_a_phone_clock_a_minute_off() {
        let leeway = crate::config::AuthConfig::default().leeway_secs;
        let v = TokenVerifier::hs256(b"k", leeway);
        let token = |exp| mint_hs256_with_exp(b"k", "pat", "", Role::Viewer, exp);
        assert_eq!(&*v.verify(&token(now() - 30)).unwrap().user_id, "pat", "expired 30 s ago: accepted");
        assert_eq!(v.verify(&token(now() - 120)), Err(ErrorCode::TokenExpired), "expired 2 min ago");
    }

    #[test]
    fn claims_without_sub_or_exp_are_bad_tokens() {
        #[derive(Serialize)]
        struct Partial {
            #[serde(skip_serializing_if = "Option::is_none")]
            sub: Option<&'static str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            exp: Option<u64>,
        }
        let v = TokenVerifier::hs256(b"k", 60);
        let sign = |claims: &Partial| {
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(b"k"))
                .unwrap()
        };
        assert!(v.verify(&sign(&Partial { sub: Some("sam"), exp: Some(now() + 60) })).is_ok());
        assert_eq!(v.verify(&sign(&Partial { sub: None, exp: Some(now() + 60) })), Err(ErrorCode::BadToken));
        assert_eq!(v.verify(&sign(&Partial { sub: Some("sam"), exp: None })), Err(ErrorCode::BadToken));
    }

    #[test]
    fn rejects_unknown_role_and_empty_user() {
        let v = TokenVerifier::hs256(b"k", 0);
        let claims =
            Claims { sub: "bob".into(), name: String::new(), role: Some("god".into()), exp: now() + 60 };
        let t =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"k"))
                .unwrap();
        assert_eq!(v.verify(&t), Err(ErrorCode::BadToken));
        let t = mint_hs256(b"k", "", "", Role::Viewer, Duration::from_secs(60));
        assert_eq!(v.verify(&t), Err(ErrorCode::BadToken));
    }

    #[test]
    fn es256_tokens_verify_with_the_public_key() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let claims = Claims { sub: "carol".into(), name: String::new(), role: None, exp: now() + 60 };
        let enc = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        let t = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &enc).unwrap();
        let v = TokenVerifier::es256(kp.public_key_pem().as_bytes(), 0).unwrap();
        assert_eq!(v.verify(&t).unwrap().role, Role::Viewer);
        // An HS256 token is refused by an ES256 verifier.
        let hs = mint_hs256(b"k", "carol", "", Role::Viewer, Duration::from_secs(60));
        assert_eq!(v.verify(&hs), Err(ErrorCode::BadToken));
    }
}
