//! Bearer JWT (HS256, secret from `AUTH_JWT_SECRET`) with roles `admin` and `customer`, and
//! per-subject rate limiting (a token bucket per `sub`, answered 429 with Retry-After).

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::problem::ApiError;
use crate::processor::{ROLE_ADMIN, ROLE_CUSTOMER};
use crate::startup::AppState;

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

    fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::Unauthorized("the token has expired".into())
                }
                _ => ApiError::Unauthorized("the token is not valid".into()),
            })
    }

    fn admit(&self, subject: &str) -> Result<(), ApiError> {
        self.limiter
            .check_key(&subject.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                ApiError::RateLimited {
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

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this needs the admin role".into()))
        }
    }

    /// Admins act for anyone; a customer only for itself.
    pub fn require_self_or_admin(&self, customer_id: &str) -> Result<(), ApiError> {
        let customer = self.roles.iter().any(|r| r == ROLE_CUSTOMER) && self.subject == customer_id;
        if self.is_admin() || customer {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "a customer may only act for itself".into(),
            ))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("a bearer token is required".into()))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::Unauthorized("use the Bearer scheme".into()))?;
        let claims = state.auth().verify(token.trim())?;
        if !claims
            .roles
            .iter()
            .any(|r| r == ROLE_ADMIN || r == ROLE_CUSTOMER)
        {
            return Err(ApiError::Forbidden("the token has no known role".into()));
        }
        state.auth().admit(&claims.sub)?;
        Ok(Self {
            subject: claims.sub,
            roles: claims.roles,
        })
    }
}
