#!/usr/bin/env bash
# The docker-compose topology as local processes, for machines without a Docker engine:
# PostgreSQL and Redis from this machine, migrations, the REST API, WS_NODES WebSocket nodes
# (two by default), the dashboard, and nginx in front (deploy/nginx.conf.template).
#
#   scripts/cluster.sh [start]   start everything, wait until ready, print the URLs
#   scripts/cluster.sh stop      stop what `start` started (by the pids it recorded)
#   scripts/cluster.sh status    which recorded processes are alive
#
# Environment (defaults):
#   DATABASE_URL   postgresql://postgres@127.0.0.1:5432/context_manager  (created if missing)
#   REDIS_URL      redis://127.0.0.1:6379/0
#   BROKER         redis            (postgres: no Redis at all)
#   BROKER_PREFIX  cm               (one per cluster sharing a Redis)
#   WS_NODES       2
#   REDIS_SHARDS_LOCAL  0           N > 0: start N redis-servers of its own (BASE_PORT+51…,
#                                   nothing on disk) and shard channels over them (REDIS_URL
#                                   becomes their list; docs/scaling.md)
#   BASE_PORT      4700             nodes listen on BASE_PORT+1…; loopback only
#   LB_WS_PORT / LB_API_PORT / LB_DASHBOARD_PORT   8849 / 8847 / 8848  (the balancer)
#   CLUSTER_DIR    .cluster         pids, logs, the rendered nginx.conf
#   SECRET_KEY     (unset: AUTH_MODE=open, fine on loopback; set it for token mode)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CLUSTER_DIR="${CLUSTER_DIR:-$ROOT/.cluster}"
DATABASE_URL="${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/context_manager}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
BROKER="${BROKER:-redis}"
BROKER_PREFIX="${BROKER_PREFIX:-cm}"
WS_NODES="${WS_NODES:-2}"
REDIS_SHARDS_LOCAL="${REDIS_SHARDS_LOCAL:-0}"
BASE_PORT="${BASE_PORT:-4700}"
LB_WS_PORT="${LB_WS_PORT:-8849}"
LB_API_PORT="${LB_API_PORT:-8847}"
LB_DASHBOARD_PORT="${LB_DASHBOARD_PORT:-8848}"
HOST=127.0.0.1

if [ -x "$ROOT/.venv/bin/context-manager" ]; then
  CM="$ROOT/.venv/bin/context-manager"
  PYTHON="$ROOT/.venv/bin/python"
else
  CM="$(command -v context-manager || true)"
  PYTHON="$(command -v python3)"
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

die() { echo "cluster.sh: $*" >&2; exit 1; }

# --- stop / status ------------------------------------------------------------------------------

stop() {
  [ -d "$CLUSTER_DIR" ] || { echo "nothing to stop"; return 0; }
  local pidfile pid name
  # The balancer first (no new traffic), then every node at once: SIGTERM (each closes its
  # clients with 1012 and exits), up to 20 s, then SIGKILL.
  for group in lb node redis; do
    for pidfile in "$CLUSTER_DIR"/$group*.pid; do
      [ -f "$pidfile" ] || continue
      kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    done
    for pidfile in "$CLUSTER_DIR"/$group*.pid; do
      [ -f "$pidfile" ] || continue
      pid="$(cat "$pidfile")"
      name="$(basename "$pidfile" .pid)"
      for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then
        echo "$name did not stop in 20 s: killing"
        kill -KILL "$pid" 2>/dev/null || true
      fi
      echo "stopped $name ($pid)"
      rm -f "$pidfile"
    done
  done
}

status() {
  local pidfile pid
  for pidfile in "$CLUSTER_DIR"/*.pid; do
    [ -f "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then echo "up   $(basename "$pidfile" .pid) ($pid)"
    else echo "down $(basename "$pidfile" .pid) ($pid)"; fi
  done
}

# --- start --------------------------------------------------------------------------------------

wait_ready() {  # name port
  for _ in $(seq 1 300); do
    if curl -fsS "http://$HOST:$2/readyz" >/dev/null 2>&1; then return 0; fi
    kill -0 "$(cat "$CLUSTER_DIR/node-$1.pid")" 2>/dev/null \
      || die "$1 exited; see $CLUSTER_DIR/$1.log"
    sleep 0.1
  done
  die "$1 not ready after 30 s; see $CLUSTER_DIR/$1.log"
}

start_node() {  # name command port-variable port [VAR=value…]
  local name="$1" command="$2"
  shift 2
  env NODE_ID="$name" HOST="$HOST" DATABASE_URL="$DATABASE_URL" REDIS_URL="$REDIS_URL" \
    BROKER="$BROKER" BROKER_PREFIX="$BROKER_PREFIX" LOG_FORMAT=json "$@" \
    nohup "$CM" "$command" >"$CLUSTER_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$CLUSTER_DIR/node-$name.pid"
}

ensure_database() {
  # Create the database named in DATABASE_URL when the server does not have it yet.
  "$PYTHON" - "$DATABASE_URL" <<'PY'
import asyncio, sys
from urllib.parse import urlsplit, urlunsplit
import asyncpg
url = sys.argv[1].replace("postgresql+asyncpg://", "postgresql://")
parts = urlsplit(url)
name = parts.path.lstrip("/")
async def main() -> None:
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")
    finally:
        await admin.close()
asyncio.run(main())
PY
}

start_shards() {  # REDIS_SHARDS_LOCAL redis-servers of the cluster's own; REDIS_URL lists them
  local i port urls=""
  for i in $(seq 1 "$REDIS_SHARDS_LOCAL"); do
    port=$((BASE_PORT + 50 + i))
    nohup redis-server --port "$port" --bind "$HOST" --save "" --appendonly no \
      --logfile "$CLUSTER_DIR/redis$i.log" --daemonize no >/dev/null 2>&1 </dev/null &
    echo $! >"$CLUSTER_DIR/redis$i.pid"
    urls="$urls${urls:+,}redis://$HOST:$port/0"
  done
  for i in $(seq 1 50); do
    local up=0
    for url in ${urls//,/ }; do redis-cli -u "$url" ping >/dev/null 2>&1 && up=$((up + 1)); done
    [ "$up" -eq "$REDIS_SHARDS_LOCAL" ] && break
    sleep 0.1
  done
  REDIS_URL="$urls"
  echo "redis shards: $REDIS_URL"
}

start() {
  [ -n "$CM" ] || die "context-manager is not installed (make run, or pip install -e .)"
  [ -x "$NGINX" ] || die "nginx is not installed (apt-get install nginx)"
  mkdir -p "$CLUSTER_DIR"
  if ls "$CLUSTER_DIR"/*.pid >/dev/null 2>&1; then
    die "already started (scripts/cluster.sh stop first)"
  fi
  case "$DATABASE_URL" in postgres*) ;; *) die "DATABASE_URL must be PostgreSQL for many nodes" ;; esac
  if [ "$BROKER" = redis ] && [ "$REDIS_SHARDS_LOCAL" -gt 0 ]; then
    start_shards
  fi
  if [ "$BROKER" = redis ]; then
    local url
    for url in ${REDIS_URL//,/ }; do
      redis-cli -u "$url" ping >/dev/null 2>&1 || die "Redis does not answer at $url"
    done
  fi

  ensure_database
  "$CM" migrate --database-url "$DATABASE_URL"

  local api_port=$((BASE_PORT + 1)) dashboard_port=$((BASE_PORT + 2)) i port ws_servers=""
  start_node api api API_PORT="$api_port"
  for i in $(seq 1 "$WS_NODES"); do
    port=$((BASE_PORT + 10 + i))
    start_node "ws$i" ws WS_PORT="$port"
    ws_servers="$ws_servers server $HOST:$port;"
  done
  start_node dashboard dashboard DASHBOARD_PORT="$dashboard_port" WS_PORT="$LB_WS_PORT" \
    DASHBOARD_WS_URL="ws://$HOST:$LB_WS_PORT/ws"

  wait_ready api "$api_port"
  for i in $(seq 1 "$WS_NODES"); do wait_ready "ws$i" $((BASE_PORT + 10 + i)); done
  wait_ready dashboard "$dashboard_port"

  # The same template docker-compose.yml hands to the nginx image, rendered the same way.
  mkdir -p "$CLUSTER_DIR/nginx"
  LB_RUN_DIR="$CLUSTER_DIR/nginx" LB_LISTEN_WS="$HOST:$LB_WS_PORT" LB_LISTEN_API="$HOST:$LB_API_PORT" \
    LB_LISTEN_DASHBOARD="$HOST:$LB_DASHBOARD_PORT" LB_WS_SERVERS="$ws_servers" \
    LB_API_SERVERS="server $HOST:$api_port;" LB_DASHBOARD_SERVERS="server $HOST:$dashboard_port;" \
    envsubst '${LB_RUN_DIR} ${LB_LISTEN_WS} ${LB_LISTEN_API} ${LB_LISTEN_DASHBOARD} ${LB_WS_SERVERS} ${LB_API_SERVERS} ${LB_DASHBOARD_SERVERS}' \
    <"$ROOT/deploy/nginx.conf.template" >"$CLUSTER_DIR/nginx/nginx.conf"
  "$NGINX" -p "$CLUSTER_DIR/nginx" -c "$CLUSTER_DIR/nginx/nginx.conf" \
    -e "$CLUSTER_DIR/nginx/error.log" -g 'daemon off;' >"$CLUSTER_DIR/lb.log" 2>&1 </dev/null &
  echo $! >"$CLUSTER_DIR/lb.pid"
  for _ in $(seq 1 100); do
    curl -fsS "http://$HOST:$LB_WS_PORT/readyz" >/dev/null 2>&1 && break
    kill -0 "$(cat "$CLUSTER_DIR/lb.pid")" 2>/dev/null || die "nginx exited; see $CLUSTER_DIR/nginx/error.log"
    sleep 0.1
  done

  cat <<EOF
context-manager cluster: 1 API node, $WS_NODES WebSocket nodes, 1 dashboard, nginx (broker: $BROKER)
  WebSocket   ws://$HOST:$LB_WS_PORT/ws        (balanced over ws1..ws$WS_NODES)
  REST API    http://$HOST:$LB_API_PORT/api     (docs: /docs)
  dashboard   http://$HOST:$LB_DASHBOARD_PORT/dashboard
  probes      /livez /readyz /metrics on every port; nodes on $HOST:$((BASE_PORT + 1))..$((BASE_PORT + 10 + WS_NODES))
  logs        $CLUSTER_DIR/*.log
  stop        scripts/cluster.sh stop
EOF
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: scripts/cluster.sh [start|stop|status]" ;;
esac
