//! The one place query-api errors become HTTP: RFC 9457 problem+json.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use platform::auth::AuthError;
use platform::http::Problem;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{detail}")]
    Invalid {
        detail: String,
        errors: BTreeMap<String, Vec<String>>,
    },
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    #[error(
        "the read models did not include the consistency token's events within {waited_ms} ms"
    )]
    NotCaughtUp { waited_ms: u64 },
    #[error("the database is unavailable")]
    Unavailable,
}

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            detail: "the request has invalid values".into(),
            errors: BTreeMap::from([(field.to_owned(), vec![message.into()])]),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Unauthenticated(detail) => Self::Unauthorized(detail),
            AuthError::Forbidden(detail) => Self::Forbidden(detail),
            AuthError::RateLimited { retry_after_secs } => Self::RateLimited { retry_after_secs },
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        tracing::error!(%error, "database error");
        Self::Unavailable
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = match &self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Self::Invalid { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-request",
                "Invalid request",
            ),
            Self::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            Self::NotCaughtUp { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                "not-caught-up",
                "Read models not caught up",
            ),
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
        };
        let detail = self.to_string();
        let problem = Problem::new(status, slug, title, detail);
        match self {
            Self::Invalid { errors, .. } => problem.errors(errors),
            Self::RateLimited { retry_after_secs } => problem.retry_after(retry_after_secs),
            _ => problem,
        }
        .into_response()
    }
}
