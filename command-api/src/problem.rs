//! The one place errors become HTTP: RFC 9457 `application/problem+json`. Clients get a clear
//! title and detail; causes are logged where they happen, never sent to clients.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use platform::http::Problem;
use schemas::{CommandReply, RejectionCode, ReplyOutcome};

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
        match reply.outcome {
            ReplyOutcome::Conflict => Self::Conflict {
                detail,
                current_version: Some(reply.version),
            },
            ReplyOutcome::Forbidden => Self::Forbidden(detail),
            ReplyOutcome::Unavailable => Self::Unavailable(detail),
            ReplyOutcome::Rejected => Self::from_rejection(reply),
            ReplyOutcome::Accepted => {
                tracing::error!(command_id = %reply.command_id, "an accepted reply mapped as a refusal");
                Self::Internal
            }
        }
    }

    /// The domain's refusals. Every code is named, so a new one cannot become a 500 unnoticed;
    /// codes the HTTP routes never provoke (saga inputs, the writer's own faults) are logged.
    fn from_rejection(reply: &CommandReply) -> Self {
        let detail = reply.detail.clone();
        let field = |path: String| Self::invalid_field(path, detail.clone());
        let line = reply.line.unwrap_or_default();
        match reply.code {
            Some(RejectionCode::NotFound) => Self::NotFound(detail),
            Some(
                RejectionCode::AlreadyExists
                | RejectionCode::InvalidTransition
                | RejectionCode::CancellationPending,
            ) => Self::Conflict {
                detail,
                current_version: Some(reply.version),
            },
            Some(RejectionCode::IdempotencyKeyReused) => field("Idempotency-Key".into()),
            Some(RejectionCode::EmptyOrder | RejectionCode::TotalOutOfRange) => {
                field("lines".into())
            }
            Some(RejectionCode::MixedCurrencies) => {
                field(format!("lines[{line}].unit_price.currency"))
            }
            Some(RejectionCode::DuplicateSku) => field(format!("lines[{line}].sku")),
            Some(RejectionCode::StockOutOfRange) => field("quantity".into()),
            Some(
                RejectionCode::UnknownLine
                | RejectionCode::MisaddressedSaga
                | RejectionCode::InvalidCommand
                | RejectionCode::Misrouted
                | RejectionCode::VersionConflict
                | RejectionCode::Forbidden
                | RejectionCode::Expired
                | RejectionCode::UnreadableAggregate
                | RejectionCode::EncodeFailed
                | RejectionCode::Unknown,
            )
            | None => {
                tracing::error!(code = ?reply.code, detail = %reply.detail, "unexpected command rejection");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(code: RejectionCode, line: Option<i32>) -> CommandReply {
        CommandReply {
            command_id: "c".into(),
            outcome: ReplyOutcome::Rejected,
            aggregate_id: "a".into(),
            version: 4,
            event_types: vec![],
            positions: vec![],
            code: Some(code),
            line,
            detail: "why".into(),
        }
    }

    fn field_of(error: ApiError) -> Vec<String> {
        match error {
            ApiError::Invalid { errors, .. } => errors.into_keys().collect(),
            other => panic!("expected a 422, got {other:?}"),
        }
    }

    #[test]
    fn a_rejection_about_one_line_points_at_that_line() {
        let error = ApiError::from_reply(&rejected(RejectionCode::DuplicateSku, Some(2)));
        assert_eq!(field_of(error), ["lines[2].sku"]);
        let error = ApiError::from_reply(&rejected(RejectionCode::MixedCurrencies, Some(1)));
        assert_eq!(field_of(error), ["lines[1].unit_price.currency"]);
        let error = ApiError::from_reply(&rejected(RejectionCode::IdempotencyKeyReused, None));
        assert_eq!(field_of(error), ["Idempotency-Key"]);
    }

    #[test]
    fn each_refusal_gets_its_status() {
        let status = |code| {
            ApiError::from_reply(&rejected(code, None))
                .into_response()
                .status()
        };
        assert_eq!(status(RejectionCode::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(status(RejectionCode::AlreadyExists), StatusCode::CONFLICT);
        assert_eq!(
            status(RejectionCode::InvalidTransition),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(RejectionCode::EmptyOrder),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        // A code only the saga or a writer fault produces is a server error, never a 4xx
        // blaming the client.
        assert_eq!(
            status(RejectionCode::Misrouted),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
