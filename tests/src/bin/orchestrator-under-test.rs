//! The saga orchestrator exactly as `saga-orchestrator run` starts it.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    saga_orchestrator::run_from_env().await
}
