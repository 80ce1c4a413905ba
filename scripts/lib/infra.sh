# shellcheck shell=bash
# Shared by scripts/test, scripts/up and scripts/bench: install what is missing, then start and
# stop the real local infrastructure (PostgreSQL from Debian, Apache Kafka from Maven Central).
# Everything listens on 127.0.0.1 only. Sourced, not run (scripts/lib/kafka-node sources it too).

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCAL_DIR="$REPO_ROOT/.local"                      # ignored by git: data, logs, pid files
CACHE_DIR="${ORDERSTREAM_CACHE:-$HOME/.cache/orderstream}"  # survives clones: Kafka's jars
# Apache Kafka, pinned (docs/decisions/0001-apache-kafka.md): the broker's runtime jars from
# Maven Central, plus the SLF4J binding at the log4j-core version Kafka brings (without it the
# broker logs nothing). docker-compose.yml and k8s/ use the same version.
KAFKA_VERSION="4.4.0"
LOG4J_VERSION="2.25.5"
# Ours alone (never a user's KAFKA_HOME): an incomplete install here is removed and redone.
KAFKA_HOME="$CACHE_DIR/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"
MAVEN_DEPENDENCY_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
# The offline Kubernetes schema validator the deployment tests use, pinned (schemas included).
KUBERNETES_VALIDATE_VERSION="1.34.0"
TOOLS_VENV="$CACHE_DIR/tools-venv-kv$KUBERNETES_VALIDATE_VERSION"
KUBERNETES_VALIDATE="$TOOLS_VENV/bin/kubernetes-validate"
# The schema-driven API fuzzer scripts/lib/fuzz/run uses, pinned.
SCHEMATHESIS_VERSION="4.32.5"
FUZZ_VENV="$CACHE_DIR/fuzz-venv-st$SCHEMATHESIS_VERSION"
SCHEMATHESIS="$FUZZ_VENV/bin/schemathesis"

log() { printf '\033[1m[%s]\033[0m %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: PostgreSQL server, and what rdkafka's bundled librdkafka build needs.
ensure_system_packages() {
  local missing=()
  pg_bin_dir >/dev/null 2>&1 || missing+=(postgresql)
  command -v psql >/dev/null || missing+=(postgresql-client)
  command -v cc >/dev/null || missing+=(gcc)
  command -v c++ >/dev/null || missing+=(g++)
  command -v make >/dev/null || missing+=(make)
  command -v perl >/dev/null || missing+=(perl)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  command -v curl >/dev/null || missing+=(curl)
  command -v flock >/dev/null || missing+=(util-linux)
  command -v python3 >/dev/null || missing+=(python3)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  id postgres >/dev/null 2>&1 || die "the 'postgres' system user is missing (apt-get install postgresql creates it)"
}

# A pinned tool from PyPI in a virtualenv of its own in the cache (Debian forbids pip installs
# into the system Python). Safe to run twice: nothing happens once `binary --version` answers.
ensure_venv_tool() { # venv binary requirement
  local venv="$1" binary="$2" requirement="$3"
  if "$binary" --version >/dev/null 2>&1; then return 0; fi
  log "installing $requirement into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "$requirement" || die "could not install $requirement"
}

ensure_kubernetes_validate() {
  ensure_venv_tool "$TOOLS_VENV" "$KUBERNETES_VALIDATE" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
}

ensure_schemathesis() {
  ensure_venv_tool "$FUZZ_VENV" "$SCHEMATHESIS" "schemathesis==$SCHEMATHESIS_VERSION"
}

pg_bin_dir() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  done
  return 1
}

# A JDK 17 or newer (Kafka 4.x brokers need 17): the default `java` when it is new enough, else
# any under /usr/lib/jvm, else Debian's openjdk-17-jre-headless. Sets and exports KAFKA_JAVA.
ensure_java() {
  local candidate
  for candidate in "${KAFKA_JAVA:-}" "$(command -v java 2>/dev/null)" /usr/lib/jvm/*/bin/java; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    if [ "$(java_major "$candidate")" -ge 17 ] 2>/dev/null; then
      export KAFKA_JAVA="$candidate"
      return 0
    fi
  done
  log "no JDK 17+ found: installing openjdk-17-jre-headless from Debian's packages"
  apt_install openjdk-17-jre-headless \
    || die "could not install a JDK; install Java 17 or newer (e.g. apt-get install openjdk-17-jre-headless) or set KAFKA_JAVA"
  export KAFKA_JAVA=/usr/lib/jvm/java-17-openjdk-amd64/bin/java
  [ -x "$KAFKA_JAVA" ] || KAFKA_JAVA="$(command -v java)"
  [ "$(java_major "$KAFKA_JAVA")" -ge 17 ] 2>/dev/null || die "Java 17 or newer is needed to run Kafka; set KAFKA_JAVA"
}

java_major() { # java binary -> major version (17, 21, 25 ...)
  "$1" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p' | head -1
}

apt_install() {
  as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# Apache Kafka's broker jars, resolved from Maven Central by Maven into $KAFKA_HOME once (about
# 30 s on a fresh machine). Installed into a temporary directory and moved into place, under a
# lock, so an interrupted or concurrent run never leaves half a classpath. Safe to run twice.
ensure_kafka() {
  ensure_java
  if kafka_installed; then return 0; fi
  command -v mvn >/dev/null || {
    log "installing Maven from Debian's packages"
    apt_install maven || die "could not install Maven (apt-get install maven)"
  }
  mkdir -p "$CACHE_DIR"
  (
    flock 9
    if kafka_installed; then exit 0; fi
    local work
    work="$(mktemp -d "$CACHE_DIR/kafka-install.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    log "installing Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_HOME (first time only)"
    cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.orderstream</groupId>
  <artifactId>kafka-broker-runtime</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
    # Bounded: an unreachable repository fails within minutes instead of hanging.
    if ! timeout 900 mvn -B -q -f "$work/pom.xml" \
        -Daether.connector.connectTimeout=20000 -Daether.connector.requestTimeout=60000 \
        -Dmaven.wagon.http.retryHandler.count=2 \
        "$MAVEN_DEPENDENCY_PLUGIN:copy-dependencies" -DincludeScope=runtime \
        -DoutputDirectory="$work/libs" >"$work/maven.log" 2>&1; then
      tail -20 "$work/maven.log" >&2
      cp "$work/maven.log" "$CACHE_DIR/kafka-install.log" 2>/dev/null || true
      exit 1
    fi
    ls "$work/libs"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 || exit 1
    echo "$KAFKA_VERSION" >"$work/VERSION"
    rm -rf "$KAFKA_HOME"
    mv "$work" "$KAFKA_HOME"
    rm -f "$KAFKA_HOME/pom.xml"
    trap - EXIT
  ) 9>"$CACHE_DIR/kafka.lock" || die "could not install Apache Kafka $KAFKA_VERSION from Maven Central \
(is the Maven repository reachable? see the lines above and $CACHE_DIR/kafka-install.log)"
}

kafka_installed() { [ "$(cat "$KAFKA_HOME/VERSION" 2>/dev/null)" = "$KAFKA_VERSION" ] && [ -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]; }

# start_kafka NAME PORT: a single-node KRaft broker+controller under .local/NAME (data, logs,
# pid) via scripts/lib/kafka-node, waiting until its client port answers (it opens only once
# the broker is unfenced). Extra settings come from the environment kafka-node reads
# (KAFKA_HEAP, KAFKA_REBALANCE_DELAY_MS). A broker that does not start prints its log's tail.
start_kafka() {
  local name="$1" port="$2" dir="$LOCAL_DIR/$1"
  mkdir -p "$dir"
  if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null && port_open 127.0.0.1 "$port"; then
    log "Kafka '$name' already running on 127.0.0.1:$port"
    return 0
  fi
  port_open 127.0.0.1 "$port" && die "port $port is taken by another process; choose another port"
  "$REPO_ROOT/scripts/lib/kafka-node" "$dir" "$port" >"$dir/stdout.log" 2>&1 &
  echo $! >"$dir/pid"
  local i
  for ((i = 0; i < 1200; i++)); do
    port_open 127.0.0.1 "$port" && break
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then i=1200; break; fi
    sleep 0.1
  done
  if ! port_open 127.0.0.1 "$port"; then
    log "Kafka '$name' did not start; last lines of its logs:"
    tail -25 "$dir/stdout.log" >&2 || true
    tail -25 "$dir/logs/server.log" >&2 2>/dev/null || true
    stop_kafka "$name"
    die "Kafka '$name' did not start (logs: $dir)"
  fi
  log "Kafka $KAFKA_VERSION '$name' listening on 127.0.0.1:$port (logs: $dir/logs/server.log)"
}

# stop_kafka NAME: SIGTERM (the broker's shutdown hook flushes and closes its logs cleanly), a
# SIGKILL after 30 s. Only a process that is this node's broker (a stale pid file may name
# an unrelated process by now).
stop_kafka() {
  local dir="$LOCAL_DIR/$1" pid
  [ -f "$dir/pid" ] || return 0
  pid="$(cat "$dir/pid")"
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/pid"
}

wait_for_port() { # host port seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# start_postgres NAME PORT [fast]: a cluster under .local/NAME owned by the postgres user, trust
# auth on loopback only. "fast" turns off fsync for throwaway test clusters; "bench" keeps the
# durable settings and loads pg_stat_statements.
start_postgres() {
  local name="$1" port="$2" mode="${3:-durable}" bin
  bin="$(pg_bin_dir)" || die "PostgreSQL server binaries not found"
  local dir
  dir="$(postgres_dir "$name")"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  fi
  if as_postgres "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    log "postgres '$name' already running on 127.0.0.1:$port"
    return 0
  fi
  local opts="-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=400 -c shared_buffers=256MB"
  if [ "$mode" = fast ]; then opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"; fi
  # Benchmarks keep the durable settings and record every statement's cost (pg_stat_statements).
  if [ "$mode" = bench ]; then opts="$opts -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"; fi
  as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "$opts" -w -t 60 start >/dev/null \
    || { tail -20 "$dir/postgres.log" >&2; die "postgres '$name' did not start"; }
  log "postgres '$name' listening on 127.0.0.1:$port"
}

stop_postgres() {
  local name="$1" bin
  bin="$(pg_bin_dir)" || return 0
  [ -f "$LOCAL_DIR/$name/data/PG_VERSION" ] || return 0
  as_postgres "$bin/pg_ctl" -D "$LOCAL_DIR/$name/data" -m fast -w stop >/dev/null 2>&1 || true
}

# The cluster directory .local/NAME, owned by the postgres user. Postgres refuses to run as root,
# so the postgres user must reach the directory; where the checkout's parents do not let it
# (a clone under a private home), the data lives under /var/tmp and .local/NAME links to it.
postgres_dir() {
  local name="$1" dir="$LOCAL_DIR/$1"
  mkdir -p "$LOCAL_DIR"
  if [ ! -e "$dir" ]; then
    mkdir -p "$dir"
    chown postgres: "$dir" 2>/dev/null || true
    if ! as_postgres test -w "$dir" 2>/dev/null; then
      rmdir "$dir"
      local outside
      outside="/var/tmp/orderstream-$(printf '%s' "$REPO_ROOT" | md5sum | cut -c1-12)/$name"
      mkdir -p "$outside"
      chown postgres: "$outside" "$(dirname "$outside")"
      ln -s "$outside" "$dir"
    fi
  fi
  chown postgres: "$dir/" 2>/dev/null || true
  echo "$dir"
}

as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; elif [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}

# psql against a local cluster as the postgres superuser.
pg_exec() { # port sql
  psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2"
}
