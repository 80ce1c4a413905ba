//! `query-api`: serves the read views.

/// mimalloc: the services allocate per record (headers, payloads, rows); glibc malloc took about a
/// fifth of the projectors' CPU in the benchmarks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    query_api::run_from_env().await
}
