//! `sqlx::migrate!` embeds the migrations directory when the crate compiles, and cargo does not
//! know to look at it: without this, an incremental build after a new migration ships a binary
//! that never applies it (and then fails on the column it adds).

#![allow(clippy::print_stdout)] // cargo reads build-script instructions from stdout

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
