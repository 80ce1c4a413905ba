#!/bin/sh
# Creates every topic orderstream uses, with the same partition count for each aggregate's
# commands and events topics (writers map partition p to p), and puts each topic's retention
# on it, as the services do when they create a missing topic (platform/src/topics.rs):
#   events and dead letters  kept forever      retention.ms=-1
#   commands                 kept for 7 days   retention.ms=604800000
#   command replies          kept for 1 day    retention.ms=86400000
#   writers' snapshots       compacted         cleanup.policy=compact, segment.ms=600000,
#                                              min.cleanable.dirty.ratio=0.1
# always with retention.bytes=-1 and, but for snapshots, cleanup.policy=delete (never compact:
# an aggregate's whole event chain is the source of truth), and message.timestamp.type=CreateTime
# (the log-order rule's clock reads the writers' timestamps). Every topic gets
# KAFKA_REPLICATION_FACTOR replicas and min.insync.replicas=KAFKA_MIN_INSYNC_REPLICAS (both
# default to 1: one local broker).
#
# Safe to run again: a topic that exists is left as it is (partitions, replicas) except for its
# retention configs, which are set again, so a rerun repairs an events topic that would delete
# data (the services refuse to start on one).
# Used by docker-compose.yml (topics service) and the Kubernetes topic Job.
set -eu
: "${KAFKA_BROKERS:?}" "${KAFKA_TOPIC_PREFIX:=orderstream}" "${KAFKA_PARTITIONS:=6}"
: "${KAFKA_REPLICATION_FACTOR:=1}" "${KAFKA_MIN_INSYNC_REPLICAS:=1}"
KAFKA_BIN="${KAFKA_BIN:-/opt/kafka/bin}"

# The configs of each kind of topic (platform::topics::Retention::topic_configs).
KEPT="cleanup.policy=delete,retention.ms=-1,retention.bytes=-1,message.timestamp.type=CreateTime"
# 7 days: platform::topics::COMMANDS_RETENTION
COMMANDS="cleanup.policy=delete,retention.ms=604800000,retention.bytes=-1,message.timestamp.type=CreateTime"
# 1 day: platform::topics::REPLIES_RETENTION
REPLIES="cleanup.policy=delete,retention.ms=86400000,retention.bytes=-1,message.timestamp.type=CreateTime"
SNAPSHOTS="cleanup.policy=compact,retention.ms=-1,retention.bytes=-1,message.timestamp.type=CreateTime,segment.ms=600000,min.cleanable.dirty.ratio=0.1"

positive() {
  case "$2" in
    '' | *[!0-9]* | 0*)
      echo "create-topics.sh: $1 must be a positive whole number, not '$2'" >&2
      exit 1
      ;;
  esac
}
positive KAFKA_PARTITIONS "$KAFKA_PARTITIONS"
positive KAFKA_REPLICATION_FACTOR "$KAFKA_REPLICATION_FACTOR"
positive KAFKA_MIN_INSYNC_REPLICAS "$KAFKA_MIN_INSYNC_REPLICAS"
if [ "$KAFKA_MIN_INSYNC_REPLICAS" -gt "$KAFKA_REPLICATION_FACTOR" ]; then
  echo "create-topics.sh: KAFKA_MIN_INSYNC_REPLICAS ($KAFKA_MIN_INSYNC_REPLICAS) exceeds" \
    "KAFKA_REPLICATION_FACTOR ($KAFKA_REPLICATION_FACTOR): no acks=all write could succeed" >&2
  exit 1
fi

# create TOPIC CONFIGS: creates TOPIC unless it exists, with CONFIGS (comma-separated key=value,
# no spaces), then sets CONFIGS again (on a new topic that changes nothing; on an old one it puts
# back what the code expects). min.insync.replicas is only set at creation: raising it on an
# existing topic with fewer replicas would stop every write to it.
create() {
  # One --config per key=value: the list is split on commas, and holds no spaces.
  # shellcheck disable=SC2046
  "$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$KAFKA_BROKERS" --create --if-not-exists \
    --topic "$1" --partitions "$KAFKA_PARTITIONS" \
    --replication-factor "$KAFKA_REPLICATION_FACTOR" \
    $(printf '%s\n' "$2" | tr ',' '\n' | sed 's/^/--config /') \
    --config "min.insync.replicas=$KAFKA_MIN_INSYNC_REPLICAS"
  "$KAFKA_BIN/kafka-configs.sh" --bootstrap-server "$KAFKA_BROKERS" --alter \
    --entity-type topics --entity-name "$1" \
    --add-config "$2"
}

for aggregate in customers inventory orders order-sagas idempotency-keys; do
  create "$KAFKA_TOPIC_PREFIX.$aggregate.events" "$KEPT"
  create "$KAFKA_TOPIC_PREFIX.$aggregate.commands" "$COMMANDS"
  create "$KAFKA_TOPIC_PREFIX.$aggregate.events.dlq" "$KEPT"
  create "$KAFKA_TOPIC_PREFIX.$aggregate.snapshots" "$SNAPSHOTS"
done
create "$KAFKA_TOPIC_PREFIX.command-replies" "$REPLIES"
