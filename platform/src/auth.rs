//! Bearer JWT (HS256, secret from `AUTH_JWT_SECRET`) with roles `admin` and `customer`, and
//! per-subject rate limiting (a token bucket per `sub`, answered 429 with Retry-After).
//!
//! Shared by both APIs. The [`Caller`] extractor rejects with the API's own error type (via
//! [`AuthState::Rejection`]), so each API still maps errors to HTTP in exactly one place.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The role that may do everything.
pub const ROLE_ADMIN: &str = "admin";
/// A customer acting for itself (`sub` = customer id).
pub const ROLE_CUSTOMER: &str = "customer";
/// The saga orchestrator: never a caller of the HTTP API, only of the command bus.
pub const ROLE_SYSTEM: &str = "system";

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// 401: no usable token.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: authenticated, not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 429.
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
}

/// An application state that can authenticate requests.
pub trait AuthState: Send + Sync {
    /// The API's own error type: every rejection goes through its one HTTP mapping.
    type Rejection: From<AuthError> + axum::response::IntoResponse;
    fn auth(&self) -> &Auth;
}

/// The claims of our tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub exp: i64,
}

/// Signs and checks tokens, and limits each subject's request rate.
pub struct Auth {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    limiter: DefaultKeyedRateLimiter<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth")
    }
}

impl Auth {
    pub fn new(secret: &str, per_second: u32) -> Arc<Self> {
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(per_second.saturating_mul(2).max(1)).unwrap_or(NonZeroU32::MIN);
        Arc::new(Self {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            validation,
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        })
    }

    /// A signed token (for `command-api token` and tests).
    pub fn sign(
        &self,
        subject: &str,
        roles: &[&str],
        ttl_secs: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            sub: subject.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            exp: chrono::Utc::now().timestamp() + ttl_secs,
        };
        jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &self.encoding,
        )
    }

    fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    AuthError::Unauthenticated("the token has expired".into())
                }
                _ => AuthError::Unauthenticated("the token is not valid".into()),
            })
    }

    fn admit(&self, subject: &str) -> Result<(), AuthError> {
        self.limiter
            .check_key(&subject.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                AuthError::RateLimited {
                    retry_after_secs: wait.as_secs().max(1),
                }
            })
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub subject: String,
    pub roles: Vec<String>,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == ROLE_ADMIN)
    }

    /// The role a command is issued under (admin wins).
    pub fn role(&self) -> &'static str {
        if self.is_admin() {
            ROLE_ADMIN
        } else {
            ROLE_CUSTOMER
        }
    }

    pub fn require_admin(&self) -> Result<(), AuthError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(AuthError::Forbidden("this needs the admin role".into()))
        }
    }

    /// Admins act for anyone; a customer only for itself.
    pub fn require_self_or_admin(&self, customer_id: &str) -> Result<(), AuthError> {
        let customer = self.roles.iter().any(|r| r == ROLE_CUSTOMER) && self.subject == customer_id;
        if self.is_admin() || customer {
            Ok(())
        } else {
            Err(AuthError::Forbidden(
                "a customer may only act or read for itself".into(),
            ))
        }
    }
}

impl<S: AuthState> FromRequestParts<S> for Caller {
    type Rejection = S::Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(authenticate(parts, state.auth())?)
    }
}

fn authenticate(parts: &Parts, auth: &Auth) -> Result<Caller, AuthError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| AuthError::Unauthenticated("a bearer token is required".into()))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| AuthError::Unauthenticated("use the Bearer scheme".into()))?;
    let claims = auth.verify(token.trim())?;
    if !claims
        .roles
        .iter()
        .any(|r| r == ROLE_ADMIN || r == ROLE_CUSTOMER)
    {
        return Err(AuthError::Forbidden("the token has no known role".into()));
    }
    auth.admit(&claims.sub)?;
    Ok(Caller {
        subject: claims.sub,
        roles: claims.roles,
    })
}
