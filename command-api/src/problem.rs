//! The one place errors become HTTP: RFC 9457 `application/problem+json`. Clients get a clear
//! title and detail; causes are logged where they happen, never sent to clients.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use platform::http::Problem;
use schemas::{CommandReply, ReplyOutcome};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedJson(String),
    #[error("{detail}")]
    BadHeader { name: &'static str, detail: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{detail}")]
    Conflict {
        detail: String,
        current_version: Option<i64>,
    },
    #[error("request body is larger than 64 KiB")]
    PayloadTooLarge,
    #[error("request body must be application/json")]
    UnsupportedMediaType,
    #[error("{detail}")]
    Invalid {
        detail: String,
        errors: BTreeMap<String, Vec<String>>,
    },
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// The command may or may not have been appended (the broker did not answer in time).
    #[error(
        "the event store did not confirm the command in time: it may or may not have been \
         appended; outcome unknown, retry with the same Idempotency-Key to learn it (the key \
         makes the retry safe: it never applies the command twice)"
    )]
    OutcomeUnknown,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// One field's problem, as a 422.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::Invalid {
            detail: "the request has invalid values".into(),
            errors: BTreeMap::from([(field.into(), vec![message])]),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON"),
            Self::BadHeader { .. } => (StatusCode::BAD_REQUEST, "bad-header", "Invalid header"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Self::Conflict { .. } => (StatusCode::CONFLICT, "conflict", "Conflict"),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
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
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            Self::OutcomeUnknown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome-unknown",
                "Outcome unknown",
            ),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    /// Maps a writer's refusal to HTTP. Only called for replies that are not `Accepted`.
    pub fn from_reply(reply: &CommandReply) -> Self {
        let detail = reply.detail.clone();
        let version = Some(reply.version);
        match (reply.outcome, reply.error_code.as_deref()) {
            (ReplyOutcome::Conflict, _) => Self::Conflict {
                detail,
                current_version: version,
            },
            (ReplyOutcome::Forbidden, _) => Self::Forbidden(detail),
            (ReplyOutcome::Unavailable, _) => Self::Unavailable(detail),
            (_, Some("not-found")) => Self::NotFound(detail),
            (_, Some("already-exists" | "invalid-transition" | "cancellation-pending")) => {
                Self::Conflict {
                    detail,
                    current_version: version,
                }
            }
            (_, Some("idempotency-key-reused")) => Self::invalid_field("Idempotency-Key", detail),
            (
                _,
                Some(
                    "empty-order" | "mixed-currencies" | "duplicate-sku" | "total-out-of-range"
                    | "stock-out-of-range",
                ),
            ) => Self::Invalid {
                detail,
                errors: reply
                    .field_errors
                    .iter()
                    .map(|(k, v)| (k.clone(), vec![v.clone()]))
                    .collect(),
            },
            _ => {
                tracing::error!(code = ?reply.error_code, detail = %reply.detail, "unexpected command rejection");
                Self::Internal
            }
        }
    }
}

impl From<platform::auth::AuthError> for ApiError {
    fn from(error: platform::auth::AuthError) -> Self {
        use platform::auth::AuthError;
        match error {
            AuthError::Unauthenticated(detail) => Self::Unauthorized(detail),
            AuthError::Forbidden(detail) => Self::Forbidden(detail),
            AuthError::RateLimited { retry_after_secs } => Self::RateLimited { retry_after_secs },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        let detail = self.to_string();
        let problem = Problem::new(status, slug, title, detail);
        match self {
            Self::Invalid { errors, .. } => problem.errors(errors),
            Self::Conflict {
                current_version, ..
            } => problem.current_version(current_version),
            Self::RateLimited { retry_after_secs } => problem.retry_after(retry_after_secs),
            _ => problem,
        }
        .into_response()
    }
}
