//! What can go wrong applying a batch, named for what failed: an operator reading "database
//! unavailable" looks at PostgreSQL, so a dead-letter topic the broker refused must not say so.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ApplyError {
    /// PostgreSQL was unreachable or refused a statement.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The broker did not take the batch's dead letters; nothing was committed, so the batch is
    /// retried and nothing moves past a record that is not yet dead-lettered.
    #[error("dead-letter topic unavailable: {0}")]
    DeadLetters(#[source] rdkafka::error::KafkaError),
}

impl ApplyError {
    /// A statement the database refused (a constraint, a type): retrying the same input fails
    /// again, unlike a lost connection or an unreachable dead-letter topic.
    pub fn is_statement_failure(&self) -> bool {
        matches!(self, Self::Database(error) if super::is_statement_failure(error))
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};

    use super::ApplyError;

    #[test]
    fn a_dead_letter_failure_is_named_for_the_broker_and_is_retried() {
        let error = ApplyError::DeadLetters(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut,
        ));
        assert!(error
            .to_string()
            .starts_with("dead-letter topic unavailable"));
        assert!(!error.to_string().contains("database"));
        assert!(!error.is_statement_failure());
    }

    #[test]
    fn a_lost_connection_is_a_database_error_and_is_retried() {
        let error = ApplyError::from(sqlx::Error::PoolTimedOut);
        assert!(error.to_string().starts_with("database error"));
        assert!(!error.is_statement_failure());
    }
}
