//! Wakes consistency-token waits when a projection's checkpoint moves, instead of having every
//! waiting request poll the database.
//!
//! The projectors announce each committed move of a projection's offsets on the Postgres
//! channel [`CHECKPOINT_CHANNEL`] (payload: the projection's name). One task per query-api
//! process, [`Checkpoints::listen`], holds a `LISTEN` connection of its own and turns each
//! notification into a bump of that projection's `watch` channel; waiting requests subscribe to
//! the channels of their token's projections. Notifications sent while the listener is not
//! connected are lost, so every (re)connection bumps every channel, and waits also re-check on a
//! slow timer of their own ([`crate::consistency::RECHECK`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use domain::AggregateKind;
use read_models::CHECKPOINT_CHANNEL;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::consistency::projection;

/// First pause before reconnecting the listener; doubled per failure up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// One `watch` channel per projection a token can name; the value counts the moves seen.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    moved: Arc<BTreeMap<&'static str, watch::Sender<u64>>>,
}

impl Default for Checkpoints {
    fn default() -> Self {
        let moved = AggregateKind::ALL
            .into_iter()
            .filter_map(projection)
            .map(|name| (name, watch::Sender::new(0)))
            .collect();
        Self {
            moved: Arc::new(moved),
        }
    }
}

impl Checkpoints {
    /// A receiver that sees every later move of `projection`'s checkpoint (`None` for a
    /// projection no token names).
    pub fn subscribe(&self, projection: &str) -> Option<watch::Receiver<u64>> {
        self.moved.get(projection).map(watch::Sender::subscribe)
    }

    /// `projection`'s checkpoint moved; unknown names (the saga projection) are ignored.
    fn moved(&self, projection: &str) {
        if let Some(sender) = self.moved.get(projection) {
            sender.send_modify(|seen| *seen = seen.wrapping_add(1));
        }
    }

    /// Some move may have been missed: every waiter re-checks.
    fn all_moved(&self) {
        for sender in self.moved.values() {
            sender.send_modify(|seen| *seen = seen.wrapping_add(1));
        }
    }

    /// Listens until `shutdown`, reconnecting with backoff whenever the connection fails.
    /// `pool` is the listener's own (one connection), so it never takes one from the views.
    pub async fn listen(self, pool: PgPool, shutdown: CancellationToken) {
        let mut backoff = RETRY_MIN;
        loop {
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return,
                connected = connect(&pool) => connected,
            };
            match connected {
                Ok(mut listener) => {
                    info!(
                        channel = CHECKPOINT_CHANNEL,
                        "listening for projection checkpoints"
                    );
                    backoff = RETRY_MIN;
                    self.all_moved();
                    let error = loop {
                        let received = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            received = listener.try_recv() => received,
                        };
                        match received {
                            Ok(Some(notification)) => self.moved(notification.payload()),
                            // The connection dropped and was re-established (and re-listened):
                            // what was announced in between is gone.
                            Ok(None) => {
                                metrics::counter!("checkpoint_listener_reconnects_total")
                                    .increment(1);
                                self.all_moved();
                            }
                            Err(error) => break error,
                        }
                    };
                    warn!(%error, "checkpoint listener lost its connection; waits re-check on their timer until it is back");
                }
                Err(error) => {
                    warn!(%error, "checkpoint listener cannot connect; waits re-check on their timer until it can");
                }
            }
            metrics::counter!("checkpoint_listener_reconnects_total").increment(1);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }
}

async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHECKPOINT_CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_wakes_only_the_waiters_of_that_projection() {
        let checkpoints = Checkpoints::default();
        let orders = checkpoints.subscribe("orders").unwrap();
        let customers = checkpoints.subscribe("customers").unwrap();
        assert!(checkpoints.subscribe("order_sagas").is_none());
        checkpoints.moved("orders");
        checkpoints.moved("order_sagas");
        assert!(orders.has_changed().unwrap());
        assert!(!customers.has_changed().unwrap());
        checkpoints.all_moved();
        assert!(customers.has_changed().unwrap());
    }
}
