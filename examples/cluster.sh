#!/usr/bin/env bash
# A wirepipe cluster on this machine: one Redis, two gateways, two workers.
#
#   examples/cluster.sh            (from the repository's root; Ctrl-C stops everything)
#
# Redis (a private one on port 6390, data in a temporary folder) is the only
# shared state.  The gateways (ports 8771 and 8772) run no agent: a client's
# hello.start is queued in Redis and one of the two workers runs it.  Connect
# to either gateway, kill any one process, and watch the run go on
# (docs/scaling.md says what survives what).  Everything binds 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --redis >&2

REDIS_PORT="${REDIS_PORT:-6390}"
SECRET="${WIREPIPE_SECRET:-cluster-example-secret}"
APP="demo=gateway.integrations.demo:app"
work="$(mktemp -d)"
pids=()

stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap stop INT TERM EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$work" --save '' \
  --appendonly yes --appendfsync always --logfile "$work/redis.log" --daemonize no &
pids+=($!)
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$work/redis.log" >&2; exit 1; }
  sleep 0.1
done
url="redis://127.0.0.1:$REDIS_PORT/0"

for i in 1 2; do
  .venv/bin/wirepipe worker --redis "$url" --app "$APP" --concurrency 4 >"$work/worker$i.log" 2>&1 &
  pids+=($!)
done
for port in 8771 8772; do
  .venv/bin/wirepipe serve --port "$port" --redis "$url" --secret "$SECRET" >"$work/gateway$port.log" 2>&1 &
  pids+=($!)
done
for port in 8771 8772; do  # until each gateway answers its health check
  until curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do sleep 0.1; done
done

cat <<EOF
wirepipe cluster up: Redis 127.0.0.1:$REDIS_PORT, gateways 8771 and 8772, two workers (logs in $work).
  start a run on gateway 1:  open http://127.0.0.1:8771/?app=demo
  or in a terminal:          .venv/bin/wirepipe watch ws://127.0.0.1:8771/ --sid job-1 --start demo
  watch it on gateway 2:     .venv/bin/wirepipe watch ws://127.0.0.1:8772/ --sid job-1
Answer the run's question from either one.  Ctrl-C stops everything.
EOF
echo "pids: redis ${pids[0]}, workers ${pids[1]} ${pids[2]}, gateways ${pids[3]} ${pids[4]}"
echo "kill -9 any one of them but Redis: the runs go on through the others."
wait  # until Ctrl-C (or SIGTERM): then everything stops
