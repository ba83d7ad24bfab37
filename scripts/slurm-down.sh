#!/usr/bin/env bash
# Stop what slurm-up.sh started, by pid file. STOP_MUNGE=0 keeps munged running.
set -uo pipefail
cd "$(dirname "$0")/.."
PREFIX=$(realpath -m "${SLURM_PREFIX:-.slurm}")
stop() {
  local pid
  [ -s "$2" ] || return 0
  pid=$(cat "$2")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "[slurm-down] stopped $1 (pid $pid)"
  fi
  rm -f "$2"
}
stop slurmd "$PREFIX/run/slurmd.pid"
stop slurmctld "$PREFIX/run/slurmctld.pid"
[ "${STOP_MUNGE:-1}" = 1 ] && stop munged /run/munge/munged.pid
exit 0
