#!/usr/bin/env bash
# One-node SLURM cluster on this machine, for tests and CI (Debian/Ubuntu, as root, no systemd needed).
#   scripts/slurm_local.sh start    install slurm-wlm + munge if missing, write /etc/slurm/slurm.conf,
#                                   start munged/slurmctld/slurmd, wait until the node is idle (idempotent)
#   scripts/slurm_local.sh stop [DAEMON...]   stop slurmd, slurmctld, munged, or only the daemons named
#                                   (fine if they are not running)
#   scripts/slurm_local.sh running  print the daemons of the three that run (e.g. "munged slurmctld slurmd")
#   scripts/slurm_local.sh status   exit 0 when the cluster accepts jobs (node idle/mixed/allocated)
# Whoever starts it stops what it started, not what ran before: tests/test_slurm.py and .ci/run compare
# `running` before `start` with `running` at the end and `stop` the difference.
# Partition `debug` (default, no time limit), one node with all CPUs (CR_Core: one job per core), no
# accounting (sacct does not work), no cgroups. Logs: /var/log/slurm/{slurmctld,slurmd}.log.
# KillWait=10 s; a requeued job may start again ~11 s after it ends (AuthInfo=cred_expire=10, Slurm's
# default is 120 s). SLURM_LOCAL_TIMEOUT (default 60) bounds the wait for the node in seconds.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
LOGDIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}

die() { echo "slurm_local: $*" >&2; exit 1; }
alive() {   # alive <pid>: the process exists and is not a zombie (pid 1 of a container may never reap them)
  local st
  st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && ${st:0:1} != Z ]]
}
running() { [[ -s $1 ]] && alive "$(cat "$1")"; }   # running <pidfile>
node_name() { hostname -s; }
node_state() { sinfo -h -n "$(node_name)" -o %T 2>/dev/null | head -n1; }   # idle, mixed, down*, drained, ...
accepts_jobs() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

stop_pidfile() {   # stop_pidfile <pidfile> <name>: SIGTERM, wait up to 10 s, then SIGKILL
  local pid i
  running "$1" || { rm -f "$1"; return 0; }
  pid=$(cat "$1"); kill "$pid" 2>/dev/null || true
  for i in $(seq 100); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && { echo "slurm_local: $2 ($pid) did not stop, killing it" >&2; kill -9 "$pid" 2>/dev/null || true; }
  rm -f "$1"
}

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null \
    && command -v munged >/dev/null && return 0
  command -v apt-get >/dev/null || die "slurm-wlm/munge are missing and there is no apt-get to install them"
  export DEBIAN_FRONTEND=noninteractive
  local log=/tmp/slurm_local_apt.log
  if ! apt-cache show slurm-wlm munge >/dev/null 2>&1; then
    apt-get update -qq >"$log" 2>&1 || die "apt-get update failed (see $log)"
  fi
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >"$log" 2>&1 \
    || die "apt-get install slurm-wlm munge failed (see $log)"
  rm -f "$log"
}

start_munge() {
  local key=/etc/munge/munge.key
  if [[ ! -s $key ]]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then mungekey --create --keyfile="$key" --force >/dev/null
    else dd if=/dev/urandom of="$key" bs=1024 count=1 status=none; fi
  fi
  chown munge:munge /etc/munge "$key"; chmod 700 /etc/munge; chmod 400 "$key"
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge; chmod 755 /run/munge
  if ! running "$MUNGE_PID"; then
    runuser -u munge -- munged --force >/dev/null 2>&1 || die "munged failed to start (see /var/log/munge/munged.log)"
  fi
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || die "munge does not work (see /var/log/munge/munged.log)"
}

write_conf() {   # prints "changed" when slurm.conf was (re)written
  local node new
  node=$(slurmd -C 2>/dev/null | grep -m1 '^NodeName=') || die "slurmd -C failed"
  node="$node NodeAddr=127.0.0.1 State=UNKNOWN"   # no DNS needed
  new=$(cat <<EOF
# Written by scripts/slurm_local.sh: one-node cluster on $(node_name), for tests and CI.
ClusterName=local
SlurmctldHost=$(node_name)(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=10
InactiveLimit=0
OverTimeLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$node
PartitionName=debug Nodes=$(node_name) Default=YES MaxTime=INFINITE State=UP
EOF
)
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGDIR"
  if [[ ! -f $CONF ]] || [[ $(cat "$CONF") != "$new" ]]; then
    printf '%s\n' "$new" >"$CONF"
    echo changed
  fi
}

start() {
  local t0=$SECONDS changed i state
  [[ $(id -u) -eq 0 ]] || die "must run as root (installs packages and starts daemons)"
  install_packages
  start_munge
  changed=$(write_conf)
  if [[ -n $changed ]]; then   # new configuration: restart whatever runs with the old one
    stop_pidfile "$SLURMD_PID" slurmd; stop_pidfile "$CTLD_PID" slurmctld
  fi
  if ! running "$CTLD_PID"; then
    slurmctld >/dev/null 2>&1 || die "slurmctld failed to start (see $LOGDIR/slurmctld.log)"
  fi
  if ! running "$SLURMD_PID"; then
    slurmd >/dev/null 2>&1 || die "slurmd failed to start (see $LOGDIR/slurmd.log)"
  fi
  for ((i = 0; i < TIMEOUT * 2; i++)); do
    state=$(node_state || true)
    case $state in
      idle | mixed | allocated | completing) break ;;
      down | drain* | fail*) scontrol update nodename="$(node_name)" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  accepts_jobs || die "node $(node_name) is '${state:-unknown}' after ${TIMEOUT}s (see $LOGDIR/slurmctld.log, $LOGDIR/slurmd.log)"
  echo "slurm_local: up in $((SECONDS - t0))s: $(sinfo -V), partition debug, node $(node_name)" \
    "($(sinfo -h -n "$(node_name)" -o '%c CPUs, %m MB'), $(node_state))"
}

stop() {   # stop [DAEMON...]: slurmd before slurmctld before munged, whichever order they are named in
  local want=" ${*:-slurmd slurmctld munged} " d
  for d in "$@"; do [[ $d =~ ^(munged|slurmctld|slurmd)$ ]] || die "stop: unknown daemon '$d'"; done
  if [[ $want == *" slurmd "* ]]; then stop_pidfile "$SLURMD_PID" slurmd; fi
  if [[ $want == *" slurmctld "* ]]; then stop_pidfile "$CTLD_PID" slurmctld; fi
  if [[ $want == *" munged "* ]]; then stop_pidfile "$MUNGE_PID" munged; fi
}

running_daemons() {
  local up=()
  if running "$MUNGE_PID"; then up+=(munged); fi
  if running "$CTLD_PID"; then up+=(slurmctld); fi
  if running "$SLURMD_PID"; then up+=(slurmd); fi
  echo "${up[*]}"
}

case ${1:-} in
  start) start ;;
  stop) shift; stop "$@" ;;
  running) running_daemons ;;
  status) command -v sinfo >/dev/null && running "$CTLD_PID" && running "$SLURMD_PID" && accepts_jobs ;;
  *) echo "usage: $0 {start|stop [munged|slurmctld|slurmd]...|running|status}" >&2; exit 2 ;;
esac
