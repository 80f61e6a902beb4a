//! Who may call the admin API: a JWT with role `admin`, signed by the same
//! backend key as connection tokens (`Authorization: Bearer <jwt>`), or the
//! configured API key (`X-Api-Key: <key>`).
//!
//! Checked in a middleware in front of every route but `/openapi.json`, and
//! before any body is read: a request without valid credentials changes
//! nothing, whatever it carries.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ring::digest::{SHA256, digest};
use roomcast_protocol::ErrorCode;

use super::AdminState;
use super::errors::{ApiCode, ApiError};
use crate::auth::{Identity, Role, TokenVerifier};

/// The header carrying the API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Who made an admin request, as its credentials say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The configured API key.
    ApiKey,
    /// An admin JWT.
    Admin(Identity),
}

/// The middleware: answers 401 (no or bad credentials) or 403 (a valid
/// token without role admin) itself, or passes the request on with its
/// [`Caller`] in the extensions.
pub async fn require_admin(State(state): State<AdminState>, mut req: Request, next: Next) -> Response {
    match authenticate(req.headers(), state.api_key.as_deref(), &state.verifier) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Checks a request's credentials. An API key header is judged alone: a
/// wrong key is refused even when a valid token comes with it.
pub fn authenticate(
    headers: &HeaderMap,
    api_key: Option<&str>,
    verifier: &TokenVerifier,
) -> Result<Caller, ApiError> {
    if let Some(given) = headers.get(API_KEY_HEADER) {
        return match api_key {
            Some(key) if keys_match(given.as_bytes(), key.as_bytes()) => Ok(Caller::ApiKey),
            _ => Err(ApiError::unauthorized("wrong API key")),
        };
    }
    let Some(auth) = headers.get(AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "credentials required: Authorization: Bearer <admin JWT> or X-Api-Key",
        ));
    };
    let token = auth
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))?;
    let identity = verifier.verify(token).map_err(|code| match code {
        ErrorCode::TokenExpired => ApiError::room(code, "the token has expired"),
        _ => ApiError::unauthorized("invalid token"),
    })?;
    if identity.role != Role::Admin {
        return Err(ApiError::new(ApiCode::Forbidden, "the token's role is not admin"));
    }
    Ok(Caller::Admin(identity))
}

/// Compares two keys in time that does not depend on where they differ:
/// both are hashed first, so neither their contents nor the configured key's
/// length shows in the timing.
fn keys_match(given: &[u8], expected: &[u8]) -> bool {
    let (a, b) = (digest(&SHA256, given), digest(&SHA256, expected));
    a.as_ref().iter().zip(b.as_ref()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::StatusCode;

    use super::*;
    use crate::auth::mint_hs256;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn api_key_admin_token_and_refusals() {
        let v = TokenVerifier::hs256(b"k", 0);
        let token = |role| mint_hs256(b"k", "ops", "Ops", role, Duration::from_secs(60));
        let key = Some("sesame");
        assert_eq!(authenticate(&headers(&[("x-api-key", "sesame")]), key, &v), Ok(Caller::ApiKey));
        let e = authenticate(&headers(&[("x-api-key", "sesam")]), key, &v).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"));
        // No key configured: no key is right.
        assert!(authenticate(&headers(&[("x-api-key", "")]), None, &v).is_err());
        let admin = format!("Bearer {}", token(Role::Admin));
        assert!(matches!(
            authenticate(&headers(&[("authorization", &admin)]), key, &v),
            Ok(Caller::Admin(_))
        ));
        let host = format!("Bearer {}", token(Role::Host));
        let e = authenticate(&headers(&[("authorization", &host)]), key, &v).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::FORBIDDEN, "FORBIDDEN"));
        let forged =
            format!("Bearer {}", mint_hs256(b"other", "ops", "", Role::Admin, Duration::from_secs(60)));
        assert_eq!(
            authenticate(&headers(&[("authorization", &forged)]), key, &v).unwrap_err().code,
            "UNAUTHORIZED"
        );
        assert_eq!(
            authenticate(&headers(&[("authorization", "Basic eDp5")]), key, &v).unwrap_err().code,
            "UNAUTHORIZED"
        );
        assert_eq!(authenticate(&HeaderMap::new(), key, &v).unwrap_err().code, "UNAUTHORIZED");
    }

    #[test]
    fn keys_match_only_when_equal() {
        assert!(keys_match(b"abc", b"abc"));
        assert!(!keys_match(b"abc", b"abd"));
        assert!(!keys_match(b"abc", b"abcd"));
        assert!(!keys_match(b"", b"abc"));
    }
}
