//! The OpenAPI document checked in under `docs/openapi/` is the one the service serves at
//! `/openapi.json` (generated from the handlers). Regenerate after an API change with
//! `UPDATE_OPENAPI=1 cargo test -p command-api --test openapi_document`.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use utoipa::OpenApi;

#[test]
fn the_checked_in_openapi_document_matches_what_the_service_serves() {
    let served = serde_json::to_value(command_api::openapi::ApiDoc::openapi()).unwrap();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/openapi/command-api.json"
    );
    if std::env::var("UPDATE_OPENAPI").is_ok() {
        std::fs::write(path, serde_json::to_string_pretty(&served).unwrap() + "\n").unwrap();
        return;
    }
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|_| panic!("{path} is missing: run with UPDATE_OPENAPI=1"));
    let checked_in: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        checked_in == served,
        "docs/openapi/command-api.json differs from what the service serves: run UPDATE_OPENAPI=1 cargo test -p command-api --test openapi_document"
    );
}
