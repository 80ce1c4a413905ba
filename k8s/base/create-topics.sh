#!/bin/sh
# Creates every topic orderstream uses, with the same partition count for each aggregate's
# commands and events topics (writers map partition p to p). Safe to run again.
# Used by docker-compose.yml (topics service) and the Kubernetes topic Job.
set -eu
: "${KAFKA_BROKERS:?}" "${KAFKA_TOPIC_PREFIX:=orderstream}" "${KAFKA_PARTITIONS:=6}"
KAFKA_BIN="${KAFKA_BIN:-/opt/kafka/bin}"
create() {
  "$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$KAFKA_BROKERS" --create --if-not-exists \
    --topic "$1" --partitions "$KAFKA_PARTITIONS" --replication-factor "${KAFKA_REPLICATION:-1}"
}
for aggregate in customers inventory orders order-sagas; do
  create "$KAFKA_TOPIC_PREFIX.$aggregate.events"
  create "$KAFKA_TOPIC_PREFIX.$aggregate.commands"
  create "$KAFKA_TOPIC_PREFIX.$aggregate.events.dlq"
done
create "$KAFKA_TOPIC_PREFIX.command-replies"
