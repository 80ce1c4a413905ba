//! A JSON body extractor whose failures are problem+json: 415 without a JSON content type,
//! 413 past the body limit, 400 for syntax errors, 422 naming the field for type errors,
//! unknown or missing fields. Keeps the raw bytes for the idempotency request hash.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use crate::problem::ApiError;

/// The deserialized body and the bytes it came from.
#[derive(Debug)]
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let raw = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::MalformedJson(rejection.body_text())
                }
            })?;
        let value = parse(&raw)?;
        Ok(Self { value, raw })
    }
}

/// Parses with the failing field's path in the error.
pub fn parse<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(raw);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        match inner.classify() {
            serde_json::error::Category::Syntax
            | serde_json::error::Category::Eof
            | serde_json::error::Category::Io => {
                ApiError::MalformedJson(format!("body is not valid JSON: {inner}"))
            }
            serde_json::error::Category::Data => {
                let field = if path == "." { "body".to_owned() } else { path };
                ApiError::invalid_field(field, strip_position(&inner.to_string()))
            }
        }
    })?;
    deserializer.end().map_err(|error| {
        ApiError::MalformedJson(format!("trailing characters after the JSON value: {error}"))
    })?;
    Ok(value)
}

/// serde_json appends " at line L column C"; the field path says more to an API client.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

/// A JSON integer as JSON Schema defines it: any number with no fractional part, so `5`, `5.0`
/// and `5e0` are all 5 (a generated client may send any of them). Anything else is a type error
/// naming the field. Used with `#[serde(deserialize_with)]` on the bodies' integer fields.
pub fn integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    struct Integer;

    impl serde::de::Visitor<'_> for Integer {
        type Value = i64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer")
        }

        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<i64, E> {
            Ok(value)
        }

        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<i64, E> {
            i64::try_from(value).map_err(|_| E::custom("integer out of range"))
        }

        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<i64, E> {
            // Inside ±2^63 every float with no fraction converts exactly.
            let in_range =
                (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&value);
            if value.fract() == 0.0 && in_range {
                #[allow(clippy::cast_possible_truncation)]
                Ok(value as i64)
            } else {
                Err(E::invalid_type(serde::de::Unexpected::Float(value), &self))
            }
        }
    }

    deserializer.deserialize_any(Integer)
}

#[cfg(test)]
mod integer_tests {
    #[derive(Debug, serde::Deserialize)]
    struct Body {
        #[serde(deserialize_with = "super::integer")]
        n: i64,
    }

    fn read(text: &str) -> Option<i64> {
        serde_json::from_str::<Body>(text).ok().map(|b| b.n)
    }

    #[test]
    fn a_number_with_no_fraction_is_an_integer_however_it_is_written() {
        assert_eq!(read(r#"{"n": 5}"#), Some(5));
        assert_eq!(read(r#"{"n": 5.0}"#), Some(5));
        assert_eq!(read(r#"{"n": 5e2}"#), Some(500));
        assert_eq!(read(r#"{"n": -3}"#), Some(-3));
    }

    #[test]
    fn a_fraction_a_string_or_an_overflow_is_not() {
        assert_eq!(read(r#"{"n": 5.5}"#), None);
        assert_eq!(read(r#"{"n": "5"}"#), None);
        assert_eq!(read(r#"{"n": 1e30}"#), None);
        assert_eq!(read(r#"{"n": 18446744073709551615}"#), None);
    }
}
