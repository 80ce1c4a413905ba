//! What the routes read from paths and headers, as the OpenAPI document states it: the same
//! bounds the handlers enforce (a test checks them against the domain's constants), so a
//! generated client knows them. Only the document uses these types.

use utoipa::IntoParams;

/// The headers every command route reads.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // read by `CommandHeaders::parse`; this type only describes them
pub struct CommandHeaderParams {
    /// Makes a retry safe: the same key from the same caller on the same route is the same
    /// command, answered from the log, never applied twice; reused with another body it is 422.
    /// Keys are remembered for the deployment's idempotency window (24 hours unless configured):
    /// after it the key is free and a request with it is a new one.
    #[param(
        rename = "Idempotency-Key",
        required = false,
        pattern = "^[!-~]{1,255}$",
        min_length = 1,
        max_length = 255
    )]
    pub idempotency_key: String,
    /// Act only if the aggregate is at this version (`"3"` or `W/"3"`); 409 otherwise.
    #[param(
        rename = "If-Match",
        required = false,
        pattern = "^(W/)?\"?[0-9]{1,19}\"?$"
    )]
    pub if_match: String,
}
