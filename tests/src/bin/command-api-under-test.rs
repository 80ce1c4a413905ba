//! `command-api` exactly as its binary serves (cargo gives a package's tests only its own binaries).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    command_api::run_from_env().await
}
