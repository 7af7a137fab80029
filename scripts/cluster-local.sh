#!/usr/bin/env bash
# A whole cluster on this one machine, for trying the roles out and for tests:
#   scripts/cluster-local.sh up     PostgreSQL (a unix socket in its own directory), the template
#                                   registry (Debian's docker-registry on loopback, plain HTTP), 3 nodes
#                                   (each its own data directory, address range and port) and 2 API replicas;
#                                   prints one `api=<url>` line per replica and a `key=<api key>` line
#   scripts/cluster-local.sh down   deletes every sandbox of the nodes, stops all of it and removes it
# Everything lives under $CUBEBOX_CLUSTER_DIR (default /var/tmp/cubebox-cluster-local); ports from
# $CUBEBOX_CLUSTER_PORT (default 3100: nodes 3101-3103, the registry 3199, replicas 3201-3202 with the default).
# Needs a build (npm run build) and root, like `cubebox serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
DIR="${CUBEBOX_CLUSTER_DIR:-/var/tmp/cubebox-cluster-local}"
BASE_PORT="${CUBEBOX_CLUSTER_PORT:-3100}"
NODES=3
REPLICAS=2
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
CLI=(node "$ROOT/dist/src/cli/main.js")

pg() { runuser -u postgres -- "$PGBIN/$1" "${@:2}"; }
db_url() { echo "postgresql://postgres@/cubebox?host=$DIR/pg"; }
node_port() { echo $((BASE_PORT + $1)); }
replica_port() { echo $((BASE_PORT + 100 + $1)); }
registry_port() { echo $((BASE_PORT + 99)); }

# Waits until a URL answers /health (nodes answer only with the cluster secret); gives up after 15 min
# (a node's first start on a host builds the base template).
wait_health() {
  local url="$1" pid="$2" log="$3"
  for _ in $(seq 1 900); do
    curl -fsS -m 2 -H "x-cubebox-cluster-secret: $(cat "$DIR/cluster.secret")" "$url/health" >/dev/null 2>&1 && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "it exited; the end of $log:" >&2
      tail -20 "$log" >&2
      return 1
    fi
    sleep 1
  done
  echo "$url did not answer; see $log" >&2
  return 1
}

# Starts `cubebox serve` in the background; its pid goes to $DIR/<name>.pid, its output to <name>.log.
serve() {
  local name="$1"
  shift
  nohup "${CLI[@]}" "$@" >"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

up() {
  if [[ -e "$DIR" ]]; then
    echo "$DIR exists: the local cluster is up (or was not taken down); run: $0 down" >&2
    exit 1
  fi
  [[ -x "$PGBIN/initdb" ]] || { echo "PostgreSQL's server is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
  [[ -f "$ROOT/dist/src/cli/main.js" ]] || { echo "not built: run npm run build" >&2; exit 1; }
  mkdir -p "$DIR/pg"
  chmod 755 "$DIR"
  chown postgres: "$DIR/pg"
  pg initdb -D "$DIR/pg/data" -U postgres -A trust -E UTF8 --locale=C >"$DIR/pg-init.log"
  pg pg_ctl -D "$DIR/pg/data" -w -l "$DIR/pg/server.log" -o "-c listen_addresses='' -k $DIR/pg" start >/dev/null
  pg createdb -h "$DIR/pg" -U postgres cubebox
  # the registry the nodes share teams' templates through (loopback only: plain HTTP, no auth)
  [[ -x /usr/bin/docker-registry ]] || { echo "docker-registry is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
  mkdir -p "$DIR/registry"
  printf 'version: 0.1\nlog: {level: warn}\nstorage: {filesystem: {rootdirectory: %s}, delete: {enabled: true}}\nhttp: {addr: "127.0.0.1:%s", secret: %s}\n' \
    "$DIR/registry/data" "$(registry_port)" "$(openssl rand -hex 16)" >"$DIR/registry/config.yml"
  nohup /usr/bin/docker-registry serve "$DIR/registry/config.yml" >"$DIR/registry.log" 2>&1 &
  echo $! >"$DIR/registry.pid"
  for _ in $(seq 1 100); do curl -fsS -m 2 "http://127.0.0.1:$(registry_port)/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS -m 2 "http://127.0.0.1:$(registry_port)/v2/" >/dev/null || { echo "the registry did not start; see $DIR/registry.log" >&2; exit 1; }
  (umask 077 && openssl rand -hex 32 >"$DIR/cluster.secret")
  # the key that seals secrets, the same in every node's data directory
  head -c 32 /dev/urandom >"$DIR/secrets.key"
  local cluster=(--database "$(db_url)" --cluster-secret-file "$DIR/cluster.secret")
  for i in $(seq 1 $NODES); do
    local data="$DIR/node$i"
    mkdir -p "$data" && chmod 700 "$data"
    install -m 600 "$DIR/secrets.key" "$data/secrets.key"
    # each node its own address range: 10.250.<i*16>.0/20
    CUBEBOX_SUBNET="10.250.$((i * 16)).0/20" CUBEBOX_POOL="${CUBEBOX_POOL-}" \
      serve "node$i" --data-dir "$data" serve --role node --host 127.0.0.1 --port "$(node_port "$i")" "${cluster[@]}" \
      --registry "http://127.0.0.1:$(registry_port)/cubebox"
  done
  for i in $(seq 1 $NODES); do wait_health "http://127.0.0.1:$(node_port "$i")" "$(cat "$DIR/node$i.pid")" "$DIR/node$i.log"; done
  for i in $(seq 1 $REPLICAS); do
    serve "api$i" --data-dir "$DIR/api$i" serve --role api --host 127.0.0.1 --port "$(replica_port "$i")" "${cluster[@]}"
  done
  for i in $(seq 1 $REPLICAS); do wait_health "http://127.0.0.1:$(replica_port "$i")" "$(cat "$DIR/api$i.pid")" "$DIR/api$i.log"; done
  local key
  key="$(CUBEBOX_DATABASE="$(db_url)" "${CLI[@]}" --data-dir "$DIR/node1" keys create --name local --team local | tail -1)"
  echo "$key" >"$DIR/api.key"
  for i in $(seq 1 $REPLICAS); do echo "api=http://127.0.0.1:$(replica_port "$i")"; done
  echo "key=$key"
}

# Stops a process this script started (by the pid it recorded, if it still runs that program) and waits for it.
stop() {
  local pidfile="$DIR/$1.pid" program="${2:-main.js}"
  [[ -f "$pidfile" ]] || return 0
  local pid
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null && grep -q "$program" "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "$pidfile"
}

down() {
  [[ -d "$DIR" ]] || { echo "no local cluster at $DIR"; return 0; }
  for i in $(seq 1 $REPLICAS); do stop "api$i"; done
  local failed=0
  for i in $(seq 1 $NODES); do
    local data="$DIR/node$i"
    stop "node$i"
    [[ -f "$data/instance-id" ]] || continue
    # a stopped node leaves its sandboxes running: delete them through its data directory
    for id in $("${CLI[@]}" --data-dir "$data" sandbox list --json | node -e 'for (const s of JSON.parse(require("fs").readFileSync(0, "utf8"))) console.log(s.id)'); do
      "${CLI[@]}" --data-dir "$data" sandbox rm "$id" >/dev/null || failed=1
    done
    if ! "${CLI[@]}" --data-dir "$data" doctor --leaks --json | node -e 'process.exit(JSON.parse(require("fs").readFileSync(0, "utf8")).length ? 1 : 0)'; then
      echo "node$i left host resources behind:" >&2
      "${CLI[@]}" --data-dir "$data" doctor --leaks >&2 || true
      failed=1
    fi
    rm -rf --one-file-system "/run/cubebox/$(cat "$data/instance-id")"
  done
  if [[ -f "$DIR/pg/data/postmaster.pid" ]]; then pg pg_ctl -D "$DIR/pg/data" -w -m fast stop >/dev/null; fi
  stop registry docker-registry
  if ((failed)); then
    echo "kept $DIR for a look: something was left (above)" >&2
    exit 1
  fi
  rm -rf --one-file-system "$DIR"
  rmdir /run/cubebox 2>/dev/null || true
  echo "the local cluster is down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
