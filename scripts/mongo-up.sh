#!/usr/bin/env bash
# Start a MongoDB-protocol server on 127.0.0.1 for tests and trials: SecantusDB (PyPI,
# GPL-2.0) in its own virtual environment, never imported by ntclass. Idempotent.
#   MONGO_PORT (27117), MONGO_DIR (.mongo in the repository)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${MONGO_PORT:-27117}
DIR=$(realpath -m "${MONGO_DIR:-.mongo}")
VENV=$DIR/venv
mkdir -p "$DIR"
if [ ! -x "$VENV/bin/secantusd-py" ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'SecantusDB==0.7.0b3' 'pymongo==4.20.1'
  echo "[mongo-up] installed SecantusDB into $VENV"
fi
ping() {
  "$VENV/bin/python" -c "import pymongo; pymongo.MongoClient('mongodb://127.0.0.1:$PORT', serverSelectionTimeoutMS=300, directConnection=True).admin.command('ping')" 2>/dev/null
}
if [ -s "$DIR/server.pid" ] && kill -0 "$(cat "$DIR/server.pid")" 2>/dev/null && ping; then
  echo "[mongo-up] already running: mongodb://127.0.0.1:$PORT"; exit 0
fi
# a test server of another checkout (or a lost pid file) on our port: stop it
if pkill -f "secantusd-py --host 127.0.0.1 --port $PORT "; then
  for _ in $(seq 50); do ping || break; sleep 0.1; done
  echo "[mongo-up] stopped a stray SecantusDB on port $PORT"
fi
if ping; then
  echo "[mongo-up] port $PORT is taken by another MongoDB server; set MONGO_PORT"; exit 1
fi
setsid "$VENV/bin/secantusd-py" --host 127.0.0.1 --port "$PORT" --storage-path "$DIR/data" \
  </dev/null >"$DIR/server.log" 2>&1 &
echo $! > "$DIR/server.pid"
for _ in $(seq 300); do ping && break; sleep 0.1; done
ping || { echo "[mongo-up] the server did not come up; see $DIR/server.log"; exit 1; }
echo "[mongo-up] ready: mongodb://127.0.0.1:$PORT (pid $(cat "$DIR/server.pid"))"
