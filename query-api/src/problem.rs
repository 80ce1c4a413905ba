//! The one place query-api errors become HTTP: RFC 9457 problem+json.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use platform::auth::AuthError;
use platform::consistency::TokenError;
use platform::http::Problem;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// An `X-Consistency-Token` that is forged, malformed or oversized: refused, never waited on.
    #[error("X-Consistency-Token refused: {0}")]
    BadConsistencyToken(#[from] TokenError),
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
    /// The database could not be reached or did not answer in time.
    #[error("the database is unavailable")]
    DatabaseDown,
    /// A database error that says nothing about its health, or the breaker is open.
    #[error("the database is unavailable")]
    Unavailable,
}

/// Marks a response caused by an unreachable database, for the circuit breaker.
#[derive(Debug, Clone, Copy)]
pub struct DatabaseDown;

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
        // Statement timeout (57014) and the server going away (57P01..57P03) are the
        // database's health too, like a connection that cannot be had.
        let down = match &error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|code| code == "57014" || code.starts_with("57P")),
            _ => false,
        };
        if down {
            Self::DatabaseDown
        } else {
            Self::Unavailable
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = match &self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            Self::BadConsistencyToken(_) => (
                StatusCode::BAD_REQUEST,
                "bad-consistency-token",
                "Bad consistency token",
            ),
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
            Self::Unavailable | Self::DatabaseDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
        };
        let database_down = matches!(self, Self::DatabaseDown);
        let detail = self.to_string();
        let problem = Problem::new(status, slug, title, detail);
        let mut response = match self {
            Self::Invalid { errors, .. } => problem.errors(errors),
            Self::RateLimited { retry_after_secs } => problem.retry_after(retry_after_secs),
            Self::Unavailable | Self::DatabaseDown => problem.retry_after(1),
            _ => problem,
        }
        .into_response();
        if database_down {
            response.extensions_mut().insert(DatabaseDown);
        }
        response
    }
}
