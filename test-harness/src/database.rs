//! A fresh database per test, created on the cluster `DATABASE_URL` points at.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool};

/// A database that only this test uses.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDatabase {
    /// Creates the database and applies `migrations` (if any).
    pub async fn create(migrations: Option<&Migrator>) -> Self {
        let admin_url = crate::env::database_url();
        let name = crate::unique_name();
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("connect to DATABASE_URL");
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .expect("create test database");
        let url = with_database(&admin_url, &name);
        let options: PgConnectOptions = url.parse().expect("database url");
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect_with(options)
            .await
            .expect("connect to test database");
        if let Some(migrator) = migrations {
            migrator.run(&pool).await.expect("apply migrations");
        }
        Self { name, url, pool }
    }
}

/// Replaces the database name in a Postgres URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end);
    let root = path_start.map_or(base, |i| &base[..i]);
    match query {
        Some(query) => format!("{root}/{database}?{query}"),
        None => format!("{root}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn swaps_the_database_name() {
        assert_eq!(
            with_database("postgres://p@h:1/postgres", "x"),
            "postgres://p@h:1/x"
        );
        assert_eq!(with_database("postgres://p@h:1", "x"), "postgres://p@h:1/x");
        assert_eq!(
            with_database("postgres://p@h:1/a?sslmode=disable", "x"),
            "postgres://p@h:1/x?sslmode=disable"
        );
    }
}
