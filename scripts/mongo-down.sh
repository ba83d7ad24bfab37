#!/usr/bin/env bash
# Stop the server mongo-up.sh started, by its pid file. MONGO_PURGE=1 also deletes its data.
cd "$(dirname "$0")/.."
DIR=$(realpath -m "${MONGO_DIR:-.mongo}")
PF=$DIR/server.pid
if [ -s "$PF" ] && kill -0 "$(cat "$PF")" 2>/dev/null; then
  pid=$(cat "$PF"); kill "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  echo "[mongo-down] stopped (pid $pid)"
fi
rm -f "$PF"
[ "${MONGO_PURGE:-0}" = 1 ] && rm -rf "$DIR/data"
exit 0
