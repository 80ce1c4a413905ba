//! Settings, state and the server of query-api.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use platform::auth::Auth;
use platform::consistency::TokenKey;
use platform::resilience::{Breaker, BreakerPolicy};
use platform::topics::Topics;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::checkpoints::Checkpoints;
use crate::problem::{ApiError, DatabaseDown};
use crate::routes;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0} is not set or invalid")]
    Config(&'static str),
    #[error("database")]
    Database(#[from] sqlx::Error),
    #[error("could not bind {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving HTTP failed")]
    Serve(#[source] std::io::Error),
}

/// Typed settings from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `QUERY_API_ADDR` (default 127.0.0.1:8081).
    pub addr: SocketAddr,
    pub database_url: String,
    pub jwt_secret: String,
    /// `KAFKA_TOPIC_PREFIX`: names the topics whose positions tokens refer to.
    pub topic_prefix: String,
    pub rate_limit_per_second: u32,
    /// `SAGA_STUCK_AFTER_MS`: a running saga without progress for this long shows `stuck`
    /// (default 60000, the orchestrator's default too).
    pub saga_stuck_after: Duration,
    /// `CIRCUIT_BREAKER_OPEN_MS`: how long the database breaker stays open after it opened,
    /// before a trial read (default 2000, whole seconds, jittered down to half).
    pub circuit_breaker: BreakerPolicy,
}

impl Settings {
    pub fn from_env() -> Result<Self, StartupError> {
        let var = |name: &'static str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Ok(Self {
            addr: var("QUERY_API_ADDR")
                .unwrap_or_else(|| "127.0.0.1:8081".into())
                .parse()
                .map_err(|_| StartupError::Config("QUERY_API_ADDR"))?,
            database_url: var("DATABASE_URL").ok_or(StartupError::Config("DATABASE_URL"))?,
            jwt_secret: var("AUTH_JWT_SECRET").ok_or(StartupError::Config("AUTH_JWT_SECRET"))?,
            topic_prefix: var("KAFKA_TOPIC_PREFIX")
                .unwrap_or_else(|| platform::config::KafkaSettings::DEFAULT_PREFIX.into()),
            rate_limit_per_second: var("RATE_LIMIT_PER_SECOND")
                .map(|v| {
                    v.parse()
                        .map_err(|_| StartupError::Config("RATE_LIMIT_PER_SECOND"))
                })
                .transpose()?
                .unwrap_or(2000),
            // Read as the orchestrator reads it, so both agree on what is stuck.
            saga_stuck_after: platform::config::positive_millis(
                "SAGA_STUCK_AFTER_MS",
                Duration::from_secs(60),
            )
            .map_err(|e| StartupError::Config(e.name))?,
            circuit_breaker: BreakerPolicy::from_env().map_err(|e| StartupError::Config(e.name))?,
        })
    }
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    pool: PgPool,
    /// Fails fast while Postgres is down instead of holding every request for a pool timeout.
    database: Breaker,
    auth: Arc<Auth>,
    /// Verifies consistency tokens (command-api signs them with the same secret).
    token_key: TokenKey,
    /// Wakes consistency waits when the projectors move a checkpoint.
    checkpoints: Checkpoints,
    topics: Topics,
    metrics: PrometheusHandle,
    saga_stuck_after: Duration,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl platform::auth::AuthState for AppState {
    type Rejection = ApiError;
    fn auth(&self) -> &Auth {
        &self.0.auth
    }
}

impl AppState {
    pub fn database_breaker(&self) -> &Breaker {
        &self.0.database
    }
    pub fn pool(&self) -> &PgPool {
        &self.0.pool
    }
    pub fn token_key(&self) -> &TokenKey {
        &self.0.token_key
    }
    pub fn checkpoints(&self) -> &Checkpoints {
        &self.0.checkpoints
    }
    pub fn topics(&self) -> &Topics {
        &self.0.topics
    }
    pub fn metrics(&self) -> &PrometheusHandle {
        &self.0.metrics
    }
    pub fn saga_stuck_after(&self) -> Duration {
        self.0.saga_stuck_after
    }
}

/// A bound, not yet serving query-api.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: Router,
    checkpoints: Checkpoints,
    /// The checkpoint listener's own connection (a `LISTEN` connection is never returned).
    checkpoint_pool: PgPool,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        // Every outbound call is bounded: 3 s for a connection, 5 s for a statement (the
        // consistency wait re-checks with one short statement; its own bound is the header's).
        let options = PgConnectOptions::from_str(&settings.database_url)?
            .options([("statement_timeout", "5000")]);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options.clone());
        let checkpoint_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options);
        let checkpoints = Checkpoints::default();
        let state = AppState(Arc::new(Inner {
            pool,
            database: Breaker::new("postgres", settings.circuit_breaker),
            auth: Auth::new(&settings.jwt_secret, settings.rate_limit_per_second),
            token_key: TokenKey::from_secret(&settings.jwt_secret),
            checkpoints: checkpoints.clone(),
            topics: Topics::new(settings.topic_prefix.clone()),
            metrics: platform::telemetry::metrics_handle(),
            saga_stuck_after: settings.saga_stuck_after,
        }));
        let router = Router::new()
            .route("/v1/orders", get(routes::orders::list))
            .route("/v1/orders/{order_id}", get(routes::orders::get))
            .route("/v1/orders/{order_id}/saga", get(routes::sagas::get))
            .route("/v1/customers/{customer_id}", get(routes::customers::get))
            .route("/v1/inventory/{sku}", get(routes::inventory::get))
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                guard_database,
            ))
            .route("/healthz", get(routes::system::healthz))
            .route("/readyz", get(routes::system::readyz))
            .route("/metrics", get(routes::system::metrics))
            .route("/openapi.json", get(routes::system::openapi))
            .layer(middleware::from_fn(platform::http::record_request))
            .with_state(state);
        let listener =
            TcpListener::bind(settings.addr)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: settings.addr,
                    source,
                })?;
        Ok(Self {
            listener,
            router,
            checkpoints,
            checkpoint_pool,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `signal`; in-flight requests finish first. The checkpoint listener runs
    /// alongside and stops after the last request.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        info!(addr = ?self.local_addr(), "query-api serving");
        let stop_listening = CancellationToken::new();
        let listening = tokio::spawn(
            self.checkpoints
                .listen(self.checkpoint_pool.clone(), stop_listening.clone()),
        );
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(signal)
            .await
            .map_err(StartupError::Serve);
        stop_listening.cancel();
        if let Err(error) = listening.await {
            warn!(%error, "the checkpoint listener did not stop cleanly");
        }
        self.checkpoint_pool.close().await;
        served?;
        info!("query-api stopped");
        Ok(())
    }
}

/// The circuit breaker around the read views: refuses at once (503) while Postgres is known to
/// be down, and learns from each response whether the database answered.
async fn guard_database(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let breaker = app.database_breaker();
    if !breaker.permits() {
        return ApiError::Unavailable.into_response();
    }
    let response = next.run(request).await;
    if response.extensions().get::<DatabaseDown>().is_some() {
        breaker.failed();
    } else {
        breaker.succeeded();
    }
    response
}
