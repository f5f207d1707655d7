#!/usr/bin/env bash
# A throw-away single-node SLURM on localhost for `make test-slurm`: munged, slurmctld and slurmd from
# Debian's packages (slurm-wlm, munge), their config, state, logs and sockets under one directory.
#
#   tests/slurm/cluster.sh start DIR   # writes DIR/slurm.conf, starts the daemons, waits for the node
#   tests/slurm/cluster.sh stop DIR    # stops what `start` started (by the pids it recorded)
#
# Clients find the cluster through SLURM_CONF=DIR/slurm.conf, and through /etc/slurm/slurm.conf, a link
# made only when that path is free and removed by `stop` (see start). Runs as root (SlurmUser=root); no cgroups
# (proctrack/linuxproc, task/none), no accounting daemon (the executor plugin falls back to squeue, and
# MinJobAge keeps finished jobs visible to it). Partitions `cpu` and `gpu` mirror the profile's names; the
# node has no GPUs, so the test asks for none.
set -euo pipefail
cmd=${1:?usage: cluster.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: cluster.sh start|stop DIR}")
port=${SLURM_TEST_PORT:-16817}

need() {
  for bin in munged slurmctld slurmd sbatch squeue; do
    command -v "$bin" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "$bin" >/dev/null 2>&1 || {
      echo "cluster.sh: '$bin' not found: install Debian's SLURM with 'apt-get install -y slurm-wlm'" \
           "(it brings munge), or run 'make test-slurm SLURM_INSTALL=1'" >&2; exit 3; }
  done
}

start() {
  need
  export PATH=$PATH:/usr/sbin
  mkdir -p "$dir"/{state,spool,munge,log}
  chmod 700 "$dir/munge"
  # A fresh munge key and socket of our own: no system munged is touched.
  dd if=/dev/urandom bs=1 count=1024 of="$dir/munge/munge.key" status=none
  chmod 400 "$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
         --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed"
  mem=$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)
  cat > "$dir/slurm.conf" <<CONF
ClusterName=rltest
SlurmctldHost=localhost
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
MinJobAge=3600
NodeName=localhost CPUs=2 RealMemory=$mem State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
CONF
  # The executor plugin's job step drops every SLURM_* variable (SLURM_CONF too) before its nested srun,
  # so srun inside a job finds the config only at the default path: link it there for the test's life.
  if [[ -e /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) != "$dir/slurm.conf" ]]; then
    echo "cluster.sh: /etc/slurm/slurm.conf exists and is not this test cluster's; not touching it" >&2
    stop; exit 1
  fi
  mkdir -p /etc/slurm && ln -sfn "$dir/slurm.conf" /etc/slurm/slurm.conf
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -f "$dir/slurm.conf"
  slurmd -f "$dir/slurm.conf" -N localhost
  for _ in $(seq 60); do
    if sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "cluster.sh: SLURM up (SLURM_CONF=$dir/slurm.conf)"; sinfo; exit 0
    fi
    sleep 1
  done
  echo "cluster.sh: the node did not come up; logs in $dir/log:" >&2
  tail -n 20 "$dir"/log/*.log >&2
  stop; exit 1
}

stop() {
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    if [[ -s $pidfile ]]; then
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      rm -f "$pidfile"
    fi
  done
  if [[ $(readlink /etc/slurm/slurm.conf 2>/dev/null) == "$dir/slurm.conf" ]]; then
    rm -f /etc/slurm/slurm.conf
  fi
}

case $cmd in
  start) start ;;
  stop) stop ;;
  *) echo "usage: cluster.sh start|stop DIR" >&2; exit 2 ;;
esac
