//! Sending through the command path: participant commands (one attempt, bounded by the step
//! timeout; the deadline takes over after that) and saga inputs (until the saga's writer
//! answers, since an answer that is never recorded would leave the saga waiting).

use std::time::Duration;

use command_bus::{BusError, CommandBus};
use domain::saga::{ParticipantCommand, SagaCommand, SagaMessage};
use domain::AggregateKind;
use platform::auth::ROLE_SYSTEM;
use platform::envelope::{Actor, CommandEnvelope, Trace};
use schemas::{CommandReply, ReplyOutcome, WireRecord};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Who the orchestrator is to the writers.
pub const ACTOR_SUBJECT: &str = "saga-orchestrator";

/// How long one attempt at recording a saga input waits for the saga's writer.
const RECORD_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub(crate) struct Sender {
    bus: CommandBus,
    step_timeout: Duration,
}

impl Sender {
    pub(crate) fn new(bus: CommandBus, step_timeout: Duration) -> Self {
        Self { bus, step_timeout }
    }

    fn envelope(
        &self,
        command_id: String,
        command_type: &str,
        aggregate_id: String,
        trace: Trace,
    ) -> CommandEnvelope {
        let actor = Actor {
            subject: ACTOR_SUBJECT.into(),
            role: ROLE_SYSTEM.into(),
        };
        self.bus
            .envelope(command_id, command_type, aggregate_id, actor, trace)
    }

    /// Sends a participant command and waits up to the step timeout for its reply. `None`: no
    /// reply in time, or `stop` fired; the step's deadline decides what happens next.
    pub(crate) async fn perform(
        &self,
        command_id: String,
        command: &SagaCommand,
        trace: Trace,
        stop: &CancellationToken,
    ) -> Option<CommandReply> {
        let wait = self.step_timeout;
        match &command.command {
            ParticipantCommand::Inventory(c) => {
                let envelope =
                    self.envelope(command_id, c.event_type(), c.sku().to_string(), trace);
                self.until_handed_over(AggregateKind::InventoryItem, &envelope, c, wait, stop)
                    .await
            }
            ParticipantCommand::Customer(c) => {
                let envelope = self.envelope(
                    command_id,
                    c.event_type(),
                    c.customer_id().to_string(),
                    trace,
                );
                self.until_handed_over(AggregateKind::Customer, &envelope, c, wait, stop)
                    .await
            }
            ParticipantCommand::Order(c) => {
                let envelope =
                    self.envelope(command_id, c.event_type(), c.order_id().to_string(), trace);
                self.until_handed_over(AggregateKind::Order, &envelope, c, wait, stop)
                    .await
            }
        }
    }

    /// Records a saga input; retries (same id) until the saga's writer answers or `stop` fires.
    pub(crate) async fn record(
        &self,
        command_id: String,
        message: &SagaMessage,
        trace: Trace,
        stop: &CancellationToken,
    ) -> Option<CommandReply> {
        let envelope = self.envelope(
            command_id,
            message.event_type(),
            message.saga_id.to_string(),
            trace,
        );
        let mut delays = platform::resilience::backoff();
        loop {
            let reply = self
                .until_handed_over(
                    AggregateKind::OrderSaga,
                    &envelope,
                    message,
                    RECORD_WAIT,
                    stop,
                )
                .await;
            match reply {
                Some(reply) if reply.outcome != ReplyOutcome::Unavailable => return Some(reply),
                _ if stop.is_cancelled() => return None,
                other => {
                    warn!(command_id = %envelope.command_id, saga_id = %envelope.aggregate_id, unavailable = other.is_some(), "saga input not recorded yet; sending it again");
                    if !pause(&mut delays, stop).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Hands a command to the bus, retrying while the broker refuses it; then waits `wait`.
    async fn until_handed_over<C: WireRecord>(
        &self,
        kind: AggregateKind,
        envelope: &CommandEnvelope,
        command: &C,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Option<CommandReply> {
        let mut delays = platform::resilience::backoff();
        loop {
            let sent = tokio::select! {
                _ = stop.cancelled() => return None,
                sent = self.bus.send(kind, envelope, command, wait) => sent,
            };
            match sent {
                Ok(reply) => return reply,
                Err(BusError::Encode(error)) => {
                    warn!(%error, command_id = %envelope.command_id, "saga command cannot be encoded");
                    return None;
                }
                // Saga commands carry deterministic ids: resending one whose outcome is unknown
                // is safe (the writer answers a repeated id with its first outcome).
                Err(
                    error @ (BusError::NotSent(_)
                    | BusError::OutcomeUnknown(_)
                    | BusError::CircuitOpen),
                ) => {
                    warn!(%error, command_id = %envelope.command_id, "broker refused a saga command; retrying");
                    if !pause(&mut delays, stop).await {
                        return None;
                    }
                }
            }
        }
    }
}

/// Sleeps the next backoff delay (exponential with jitter); false when `stop` fired first.
async fn pause(delays: &mut impl Iterator<Item = Duration>, stop: &CancellationToken) -> bool {
    let delay = delays.next().unwrap_or(Duration::from_secs(5));
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}
