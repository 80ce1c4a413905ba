//! `query-api`: serves the read views.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    query_api::run_from_env().await
}
