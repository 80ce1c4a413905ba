//! `projectors` exactly as its binary serves (cargo gives a package's tests only its own binaries).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    projectors::run_from_env().await
}
