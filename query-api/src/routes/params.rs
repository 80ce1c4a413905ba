//! What the views read from paths and headers, as the OpenAPI document states it: the same
//! bounds the handlers enforce, so a generated client knows them. Only the document uses these
//! types.

use utoipa::IntoParams;

/// Read-your-writes: the headers every view reads (see `consistency`).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // read by `ReadAfter`; this type only describes them
pub struct ConsistencyHeaders {
    /// A token from a command's response (opaque, signed by command-api): the view answers
    /// only once it includes that command's events. Any other value is 400.
    #[param(rename = "X-Consistency-Token", required = false, max_length = 4096)]
    pub token: String,
    /// How long to wait for the token's events before answering 504 (default 5000).
    #[param(rename = "X-Consistency-Wait-Ms", required = false, value_type = u64, minimum = 0, maximum = 30000)]
    pub wait_ms: String,
}
