#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on localhost (Debian's slurmctld, slurmd, munge).
# Idempotent: starts only what is not running. Needs root; no systemd needed.
#   SLURM_PREFIX   state, spool, logs and pid files (default: .slurm in the repository)
#   SLURM_NODE_CPUS, SLURM_NODE_MEM_MB   the node's size (default: nproc, 85 % of RAM)
# The config goes to /etc/slurm/slurm.conf: the SLURM jobstep plugin strips SLURM_CONF
# before its inner srun, so only the compiled-in default location works.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=$(realpath -m "${SLURM_PREFIX:-.slurm}")
CONF=/etc/slurm/slurm.conf
say() { echo "[slurm-up] $*"; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_pid() { for _ in $(seq 100); do alive "$1" && return 0; sleep 0.1; done; return 1; }

missing=""
for p in slurmctld slurmd slurm-client munge; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  say "installing$missing"
  apt-cache policy slurmctld | grep -q 'Candidate: [0-9]' || apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
fi

if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --force >/dev/null 2>&1 || dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  say "munged started"
fi

CPUS=${SLURM_NODE_CPUS:-$(nproc)}
MEM=${SLURM_NODE_MEM_MB:-$(awk '/MemTotal/{printf "%d", $2/1024*0.85}' /proc/meminfo)}
mkdir -p "$PREFIX"/{state,spool,log,run} /etc/slurm
NEW=$(cat <<CONF
# written by ntclass scripts/slurm-up.sh
ClusterName=ntclass-local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$PREFIX/state
SlurmdSpoolDir=$PREFIX/spool
SlurmctldPidFile=$PREFIX/run/slurmctld.pid
SlurmdPidFile=$PREFIX/run/slurmd.pid
SlurmctldLogFile=$PREFIX/log/slurmctld.log
SlurmdLogFile=$PREFIX/log/slurmd.log
# no cgroups in a container
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# every finished job is appended here: the record the tests read
JobCompType=jobcomp/filetxt
JobCompLoc=$PREFIX/log/jobcomp.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without it one job claims the whole node
DefMemPerCPU=1000
ReturnToService=2
# finished jobs stay visible to squeue, which snakemake polls without accounting
MinJobAge=300
KillWait=5
# one GPU as a generic resource (no device: the tests check requests, not CUDA), so that
# jobs asking for --gpus=1 are scheduled as on a GPU cluster
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
# a second partition on the same node: a lab profile's own partition, kept
PartitionName=lab Nodes=localhost MaxTime=INFINITE State=UP
CONF
)
GRES="NodeName=localhost Name=gpu File=/dev/null"
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEW" ] \
    || [ "$(cat /etc/slurm/gres.conf 2>/dev/null)" != "$GRES" ]; then
  printf '%s\n' "$NEW" > "$CONF"; printf '%s\n' "$GRES" > /etc/slurm/gres.conf
  say "wrote $CONF and gres.conf"
  # daemons started with the old config (perhaps another checkout's) hold the ports
  for d in slurmd slurmctld; do
    if pkill -x "$d"; then
      for _ in $(seq 100); do pgrep -x "$d" >/dev/null || break; sleep 0.1; done
      say "stopped the running $d"
    fi
  done
fi
alive "$PREFIX/run/slurmctld.pid" || { slurmctld -i; wait_pid "$PREFIX/run/slurmctld.pid"; say "slurmctld started"; }
alive "$PREFIX/run/slurmd.pid" || { slurmd -N localhost; wait_pid "$PREFIX/run/slurmd.pid"; say "slurmd started"; }

state=""
for _ in $(seq 120); do
  state=$(sinfo -h -N -n localhost -o %t 2>/dev/null | head -1 || true)
  case "$state" in
    idle|mix|alloc) say "ready (node localhost: $state, $CPUS CPUs, $MEM MB)"; exit 0 ;;
    drain*|down*) scontrol update nodename=localhost state=resume 2>/dev/null || true ;;
  esac
  sleep 0.25
done
say "the node did not become ready (state '$state'); see $PREFIX/log/"
exit 1
