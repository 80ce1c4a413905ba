# shellcheck shell=bash
# Containers for the tests that run through testcontainers (issue #18, decision 0006): Podman
# from Debian's packages serving the Docker Engine API on a socket of our own, and the Kafka and
# PostgreSQL images built here from Debian's archive and Maven Central (no registry needed).
# Sourced after infra.sh.

IMAGES_DIR="$REPO_ROOT/scripts/lib/images"
BASE_IMAGE="localhost/orderstream-debian:bookworm"
LOCAL_KAFKA_IMAGE="localhost/orderstream-kafka:$KAFKA_VERSION"
LOCAL_POSTGRES_IMAGE="localhost/orderstream-postgres:15"
# What the harness labels its containers with (test-harness/src/containers/orphans.rs).
HARNESS_LABEL="org.orderstream.test-harness.owner"

# Podman and what it needs, with the settings it needs here: runc (crun cannot run under this
# kernel's hybrid cgroups), open-files limits the machine's hard limit allows, and netavark
# (Debian's Podman would pick CNI when a CNI config is lying around, without its plugins).
ensure_podman() {
  if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing Podman from Debian's packages"
    apt_install podman runc fuse-overlayfs slirp4netns uidmap debootstrap iptables netavark aardvark-dns \
      || die "could not install Podman (apt-get install podman runc debootstrap ...)"
  fi
  local conf=/etc/containers/containers.conf.d/50-orderstream.conf nofile
  nofile="$(ulimit -Hn)"
  [ "$nofile" = unlimited ] && nofile=1048576
  local want
  want="$(printf '[engine]\nruntime = "runc"\n\n[network]\nnetwork_backend = "netavark"\n\n[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=32768:32768"]\n' "$nofile" "$nofile")"
  if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
    as_root mkdir -p "$(dirname "$conf")"
    printf '%s\n' "$want" | as_root tee "$conf" >/dev/null
  fi
}

# The recipe of an image: a hash of its build files (and of what goes into its context), kept
# as a label, so a changed recipe rebuilds and an unchanged one is reused.
image_recipe() { cat "$@" | sha256sum | cut -c1-16; }
image_has_recipe() { # image recipe
  [ "$(podman image inspect --format '{{ index .Labels "org.orderstream.recipe" }}' "$1" 2>/dev/null)" = "$2" ]
}

# A minimal Debian bookworm root file system, from the mirror apt already uses.
ensure_base_image() {
  podman image exists "$BASE_IMAGE" && return 0
  local mirror work
  mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  work="$(mktemp -d /var/tmp/orderstream-debootstrap.XXXXXX)"
  log "building $BASE_IMAGE with debootstrap from $mirror (first time only)"
  if ! as_root debootstrap --variant=minbase bookworm "$work" "$mirror" >"$work.log" 2>&1; then
    tail -20 "$work.log" >&2
    as_root rm -rf "$work"
    die "debootstrap failed (log: $work.log)"
  fi
  as_root tar -C "$work" -c . | podman import - "$BASE_IMAGE" >/dev/null
  as_root rm -rf "$work" "$work.log"
}

# build_image IMAGE CONTEXT_DIR RECIPE_FILES...: podman build unless the recipe is unchanged.
build_image() {
  local image="$1" context="$2" recipe
  shift 2
  recipe="$(image_recipe "$@")"
  image_has_recipe "$image" "$recipe" && return 0
  log "building $image"
  podman build --pull=never --quiet --label "org.orderstream.recipe=$recipe" -t "$image" "$context" >/dev/null \
    || die "podman build of $image failed"
}

# Both images the harness runs where no registry is reachable.
build_local_images() {
  ensure_podman
  ensure_kafka
  ensure_base_image
  build_image "$LOCAL_POSTGRES_IMAGE" "$IMAGES_DIR/postgres" "$IMAGES_DIR/postgres/Containerfile" "$IMAGES_DIR/postgres/entrypoint.sh"
  local context
  context="$(mktemp -d /var/tmp/orderstream-kafka-image.XXXXXX)"
  cp "$IMAGES_DIR/kafka/Containerfile" "$context/"
  cp -r "$KAFKA_LIBS" "$context/libs"
  # The jar list stands for the jars: the install is pinned by version.
  ls "$KAFKA_LIBS" >"$context/jars.txt"
  build_image "$LOCAL_KAFKA_IMAGE" "$context" "$context/Containerfile" "$context/jars.txt"
  rm -rf "$context"
}

# start_podman_service SOCKET: Podman's Docker Engine API on SOCKET, until stop_podman_service.
# A service a killed run left on SOCKET (its pid kept beside it) is stopped first.
start_podman_service() {
  PODMAN_SOCKET="$1"
  local pidfile="$PODMAN_SOCKET.pid"
  mkdir -p "$(dirname "$PODMAN_SOCKET")"
  if [ -f "$pidfile" ]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  fi
  rm -f "$PODMAN_SOCKET"
  podman system service --time=0 "unix://$PODMAN_SOCKET" >"$LOCAL_DIR/podman-service.log" 2>&1 &
  PODMAN_SERVICE_PID=$!
  echo "$PODMAN_SERVICE_PID" >"$pidfile"
  local i
  for i in $(seq 1 100); do
    [ -S "$PODMAN_SOCKET" ] && return 0
    sleep 0.1
  done
  die "Podman's API service did not open $PODMAN_SOCKET (log: $LOCAL_DIR/podman-service.log)"
}

# Stops the service and removes the containers the harness left whose test process is gone.
stop_podman_service() {
  remove_orphaned_harness_containers
  if [ -n "${PODMAN_SERVICE_PID:-}" ]; then
    kill "$PODMAN_SERVICE_PID" 2>/dev/null || true
    wait "$PODMAN_SERVICE_PID" 2>/dev/null || true
    PODMAN_SERVICE_PID=""
  fi
  rm -f "${PODMAN_SOCKET:-}" "${PODMAN_SOCKET:-}.pid"
}

# The harness's containers whose owner (label host/pid/start-time) is no longer running on this
# host: the same rule as test-harness/src/containers/orphans.rs, so a test process running
# beside this script keeps its containers.
remove_orphaned_harness_containers() {
  command -v podman >/dev/null || return 0
  local id owner host pid start current
  podman ps -a --filter "label=$HARNESS_LABEL" --format "{{.ID}} {{index .Labels \"$HARNESS_LABEL\"}}" 2>/dev/null |
    while read -r id owner; do
      IFS=/ read -r host pid start <<<"$owner"
      [ "$host" = "$(cat /proc/sys/kernel/hostname)" ] && [ "$start" != unknown ] || continue
      current="$(awk '{sub(/.*\) /, ""); print $20}' "/proc/$pid/stat" 2>/dev/null || true)"
      [ "$current" = "$start" ] || podman rm -f -v "$id" >/dev/null 2>&1 || true
    done
}
