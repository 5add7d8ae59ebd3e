#!/usr/bin/env bash
# A one-node SLURM cluster on this machine for the tests (tests/test_slurm.py) and CI (.ci/run):
# munged, slurmctld and slurmd for this host, one `debug` partition, no accounting database.
# Idempotent: returns at once when the cluster already answers. Needs root (or password-less
# sudo); with --install it first installs Debian's slurm-wlm and munge with apt-get.
# Exit status 0: the cluster runs; 1: it could not start (the reason on stderr).
set -euo pipefail

conf=/etc/slurm/slurm.conf
marker="# labjax test cluster (tests/slurm/start_cluster.sh)"

running() {
  timeout 10 sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'
}

if command -v sinfo >/dev/null && [ -f "$conf" ] && running; then
  exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then
  if sudo -n true 2>/dev/null; then sudo="sudo -n"; else
    echo "start_cluster.sh: starting SLURM needs root or password-less sudo" >&2
    exit 1
  fi
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  if [ "${1:-}" != "--install" ] || ! command -v apt-get >/dev/null; then
    echo "start_cluster.sh: slurmctld, slurmd or munged is missing (apt-get install slurm-wlm munge, or run with --install)" >&2
    exit 1
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 ||
    { $sudo apt-get update -q >/dev/null 2>&1 &&
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null 2>&1; } ||
    { echo "start_cluster.sh: apt-get install slurm-wlm munge failed" >&2; exit 1; }
fi

if [ -f "$conf" ] && ! grep -qF "$marker" "$conf"; then
  echo "start_cluster.sh: $conf is not this script's; not touching a real cluster's configuration" >&2
  exit 1
fi

host=$(hostname -s)
memory=$(awk '/^MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
$sudo mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
$sudo tee "$conf" >/dev/null <<CONF
$marker
ClusterName=labjax
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=30
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$host CPUs=2 RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

if [ ! -s /etc/munge/munge.key ]; then
  $sudo dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
$sudo chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
$sudo chmod 600 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  $sudo runuser -u munge -- munged 2>/dev/null || $sudo munged --force
fi
pgrep -x slurmctld >/dev/null || $sudo slurmctld
pgrep -x slurmd >/dev/null || $sudo slurmd
for _ in $(seq 60); do
  if running; then
    $sudo scontrol update nodename="$host" state=resume 2>/dev/null || true
    exit 0
  fi
  state=$(timeout 10 sinfo -h -o %T 2>/dev/null || true)
  case "$state" in down*|drain*) $sudo scontrol update nodename="$host" state=resume 2>/dev/null || true ;; esac
  sleep 1
done
echo "start_cluster.sh: SLURM did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
exit 1
