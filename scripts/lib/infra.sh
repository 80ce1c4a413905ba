# shellcheck shell=bash
# Shared by scripts/test, scripts/up and scripts/bench: install what is missing, then start and
# stop the real local infrastructure (PostgreSQL from Debian, the Nisshi Kafka-protocol broker).
# Everything listens on 127.0.0.1 only. Sourced, not run.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCAL_DIR="$REPO_ROOT/.local"                      # ignored by git: data, logs, pid files
CACHE_DIR="${ORDERSTREAM_CACHE:-$HOME/.cache/orderstream}"  # survives clones: the broker build
NISSHI_VERSION="0.8.1"
NISSHI_ROOT="$CACHE_DIR/nisshi-$NISSHI_VERSION"
NISSHI_BIN="$NISSHI_ROOT/bin/nisshi"
# The offline Kubernetes schema validator the deployment tests use, pinned (schemas included).
KUBERNETES_VALIDATE_VERSION="1.34.0"
TOOLS_VENV="$CACHE_DIR/tools-venv-kv$KUBERNETES_VALIDATE_VERSION"
KUBERNETES_VALIDATE="$TOOLS_VENV/bin/kubernetes-validate"

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

# kubernetes-validate from PyPI into a virtualenv in the cache (Debian forbids pip installs into
# the system Python). Safe to run twice.
ensure_kubernetes_validate() {
  if "$KUBERNETES_VALIDATE" --version >/dev/null 2>&1; then return 0; fi
  log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $TOOLS_VENV"
  rm -rf "$TOOLS_VENV"
  python3 -m venv "$TOOLS_VENV"
  "$TOOLS_VENV/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    || die "could not install kubernetes-validate"
}

pg_bin_dir() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  done
  return 1
}

# The broker is built from crates.io once (about 18 minutes on 2 cores) into a cache outside the
# repository, so fresh clones on the same machine reuse it. A lock keeps two runs from both building.
ensure_nisshi() {
  if nisshi_installed; then return 0; fi
  mkdir -p "$CACHE_DIR"
  (
    flock 9
    if nisshi_installed; then exit 0; fi
    log "building Nisshi $NISSHI_VERSION from crates.io into $NISSHI_ROOT (first time only; ~18 min on 2 cores)"
    cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
      --no-default-features --features dynostore,postgres \
      --root "$NISSHI_ROOT" >"$CACHE_DIR/nisshi-install.log" 2>&1 \
      || { tail -30 "$CACHE_DIR/nisshi-install.log" >&2; exit 1; }
  ) 9>"$CACHE_DIR/nisshi.lock" || die "Nisshi build failed (log: $CACHE_DIR/nisshi-install.log)"
}

nisshi_installed() { [ -x "$NISSHI_BIN" ] && "$NISSHI_BIN" --version 2>/dev/null | grep -q "$NISSHI_VERSION"; }

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

# start_nisshi NAME PORT STORAGE_URL [REBALANCE_DELAY]: one broker process, its log and pid
# under .local/NAME. The delay is how long an empty group's first rebalance waits for more
# members (Kafka's group.initial.rebalance.delay.ms); tests want it short.
start_nisshi() {
  local name="$1" port="$2" storage="$3" delay="${4:-3s}" dir="$LOCAL_DIR/$1"
  mkdir -p "$dir"
  if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null && port_open 127.0.0.1 "$port"; then
    log "broker '$name' already running on 127.0.0.1:$port"
    return 0
  fi
  port_open 127.0.0.1 "$port" && die "port $port is taken by another process; set KAFKA_PORT"
  # Run from its own directory with a clean environment: Nisshi reads a .env in its working
  # directory and STORAGE_ENGINE/LISTENER_URL-style variables from the environment.
  (cd "$dir" && exec env -i PATH="$PATH" HOME="$HOME" RUST_LOG="${NISSHI_LOG:-warn}" \
    "$NISSHI_BIN" broker \
    --kafka-listener-url "tcp://127.0.0.1:$port" \
    --kafka-advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "$storage" \
    --group-initial-rebalance-delay "$delay" >"$dir/broker.log" 2>&1) &
  echo $! >"$dir/pid"
  wait_for_port 127.0.0.1 "$port" 30 || { tail -20 "$dir/broker.log" >&2; die "broker '$name' did not start"; }
  log "broker '$name' (Nisshi $NISSHI_VERSION, $storage) listening on 127.0.0.1:$port"
}

stop_nisshi() {
  local dir="$LOCAL_DIR/$1" pid
  [ -f "$dir/pid" ] || return 0
  pid="$(cat "$dir/pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/pid"
}

# psql against a local cluster as the postgres superuser.
pg_exec() { # port sql
  psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2"
}
