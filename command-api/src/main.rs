//! `command-api [serve]` runs the service; `command-api token --sub S --role R` prints a token.

use anyhow::Context;
use clap::{Parser, Subcommand};
use command_api::auth::Auth;

#[derive(Parser)]
#[command(name = "command-api", about = "orderstream command API")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP and run this process's partition writers (the default).
    Serve,
    /// Print a signed bearer token for local use (needs AUTH_JWT_SECRET).
    Token {
        #[arg(long)]
        sub: String,
        /// admin or customer; repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
    },
}

/// jemalloc, for Rust and librdkafka alike, configured at build time for a small resident set
/// (`.cargo/config.toml`; decision 0013).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command.unwrap_or(Command::Serve) {
        Command::Serve => {
            command_api::run_from_env().await?;
        }
        Command::Token { sub, roles, ttl } => {
            let secret = std::env::var("AUTH_JWT_SECRET").context("AUTH_JWT_SECRET is not set")?;
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            let token = Auth::new(&secret, 1)
                .sign(&sub, &roles, ttl)
                .context("signing")?;
            #[allow(clippy::print_stdout)]
            {
                println!("{token}");
            }
        }
    }
    Ok(())
}
