//! `saga-orchestrator [run]`: runs the order saga until SIGTERM / SIGINT.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "saga-orchestrator",
    about = "orderstream order saga orchestrator"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the saga for this process's share of the partitions (the default).
    Run,
}

/// jemalloc, for Rust and librdkafka alike, configured at build time for a small resident set
/// (`.cargo/config.toml`; decision 0013).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command.unwrap_or(Command::Run) {
        Command::Run => saga_orchestrator::run_from_env().await,
    }
}
