#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (for testing scripts/slurm/train.sbatch), as root.
#
#   scripts/slurm/local_cluster.sh start DIR   # writes DIR/slurm.conf, starts munged, slurmctld, slurmd
#   scripts/slurm/local_cluster.sh stop DIR
#   export SLURM_CONF=DIR/slurm.conf           # then sbatch, squeue, sinfo use it
#
# Needs Debian's slurm-wlm and munge packages (apt-get install slurm-wlm munge).
set -euo pipefail
cmd=${1:?start or stop}
dir=$(mkdir -p "${2:?a directory for the cluster state}" && cd "$2" && pwd)
export SLURM_CONF=$dir/slurm.conf

if [ "$cmd" = stop ]; then
    for d in slurmd slurmctld; do [ -f "$dir/$d.pid" ] && kill "$(cat "$dir/$d.pid")" 2>/dev/null || true; done
    exit 0
fi

host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
cat > "$SLURM_CONF" <<CONF
ClusterName=fltest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

if ! pgrep -x munged > /dev/null; then
    [ -s /etc/munge/munge.key ] || (mungekey --create 2>/dev/null || create-munge-key -f)
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    (su -s /bin/sh munge -c munged 2>/dev/null || munged --force)
fi
slurmctld
slurmd
for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^idle'; then echo "SLURM up: SLURM_CONF=$SLURM_CONF"; exit 0; fi
    sleep 1
done
echo "SLURM did not come up; see $dir/log" >&2
exit 1
