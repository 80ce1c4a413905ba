//! `query-api`: serves the read views.

/// jemalloc, for Rust and librdkafka alike, configured at build time for a small resident set
/// (`.cargo/config.toml`; decision 0013).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    query_api::run_from_env().await
}
