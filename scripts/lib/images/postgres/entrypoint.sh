#!/bin/sh
# The official image's contract, as far as the test harness uses it: a fresh cluster on first
# start with the `postgres` superuser, authenticated by POSTGRES_HOST_AUTH_METHOD (trust only:
# test containers), listening on every interface of the container.
set -e
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  initdb -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  echo "host all all all trust" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
fi
if [ "$1" = postgres ]; then
  shift
  exec postgres -D "$PGDATA" "$@"
fi
exec "$@"
