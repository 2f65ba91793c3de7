#!/usr/bin/env bash
# Stop the local one-node SLURM cluster started by slurm/up.sh, by the PIDs in its pid files
# (never by process name). Stops slurmd, slurmctld, slurmdbd, MariaDB, munged, in that order.
#   slurm/down.sh           # stop the daemons; state stays in $AAREN_SLURM_DIR
#   slurm/down.sh --purge   # also delete $AAREN_SLURM_DIR (job records, database, logs)
set -euo pipefail

D="${AAREN_SLURM_DIR:-/tmp/aaren-slurm}"
say() { echo "down.sh: $*" >&2; }

stop() {  # stop <name>: SIGTERM the pid in $D/run/<name>.pid, wait up to 20 s, then SIGKILL
  local pf="$D/run/$1.pid" pid
  [ -s "$pf" ] || return 0
  pid="$(cat "$pf")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then say "$1 ($pid) ignored SIGTERM: SIGKILL"; kill -KILL "$pid"; fi
    say "stopped $1 ($pid)"
  fi
  rm -f "$pf"
}

[ -d "$D" ] || { say "nothing to stop ($D does not exist)"; exit 0; }
for name in slurmd slurmctld slurmdbd mariadbd munged; do stop "$name"; done
if [ "${1:-}" = "--purge" ]; then
  case "$D" in /|/tmp|/root|/home|"") say "refusing to delete $D"; exit 1 ;; esac
  rm -rf "$D"; say "deleted $D"
fi
