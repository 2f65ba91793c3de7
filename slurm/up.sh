#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on this machine: munge, MariaDB, slurmdbd, slurmctld, slurmd.
#
#   slurm/install.sh                 # once: the Debian packages
#   source <(slurm/up.sh --env)      # start (or reuse) the cluster and export SLURM_CONF
#   slurm/down.sh                    # stop every daemon by the PID in its pid file
#
# Every file lives under one state folder, $AAREN_SLURM_DIR (default /tmp/aaren-slurm):
# munge key and socket, database, slurm.conf, slurmdbd.conf, spool, logs, pid files.
# Clients find the cluster with SLURM_CONF=$AAREN_SLURM_DIR/slurm.conf (also written to
# $AAREN_SLURM_DIR/env.sh). Runs as root (the daemons run as root, the database as mysql).
# Running it again while the cluster is up changes nothing.
# Knobs: AAREN_SLURM_DIR, AAREN_SLURM_DB_PORT (3307), AAREN_SLURM_PORT (6817: 6817-6819 used),
#        AAREN_SLURM_CPUS (nproc), AAREN_SLURM_MEM_MB (90% of RAM), AAREN_SLURM_CLUSTER (aaren).
set -euo pipefail

EMIT_ENV=0
[ "${1:-}" = "--env" ] && EMIT_ENV=1
say() { echo "up.sh: $*" >&2; }
die() { echo "up.sh: error: $*" >&2; exit 1; }

D="${AAREN_SLURM_DIR:-/tmp/aaren-slurm}"
DB_PORT="${AAREN_SLURM_DB_PORT:-3307}"
CTL_PORT="${AAREN_SLURM_PORT:-6817}"
CLUSTER="${AAREN_SLURM_CLUSTER:-aaren}"
CPUS="${AAREN_SLURM_CPUS:-$(nproc)}"
MEM_MB="${AAREN_SLURM_MEM_MB:-$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)}"
export SLURM_CONF="$D/slurm.conf"

[ "$(id -u)" -eq 0 ] || die "run as root: the daemons of this local cluster run as root"
for b in munged mungekey mariadbd mariadb-install-db mariadb slurmdbd slurmctld slurmd sacctmgr sinfo; do
  command -v "$b" >/dev/null || die "$b not found: run slurm/install.sh first"
done

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for <seconds> <what> <command...>
  local t="$1" what="$2"; shift 2
  for _ in $(seq 1 $((t * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what did not come up within ${t}s; see the logs in $D/log"
}
emit_env() { [ "$EMIT_ENV" -eq 1 ] && echo "export SLURM_CONF=$SLURM_CONF"; return 0; }

mkdir -p "$D"/{munge,db,run,log,spool/ctld,spool/d}
chmod 755 "$D" "$D/munge" "$D/run"     # munged refuses a socket folder that is not 755

if alive "$D/run/munged.pid" && alive "$D/run/mariadbd.pid" && alive "$D/run/slurmdbd.pid" \
   && alive "$D/run/slurmctld.pid" && alive "$D/run/slurmd.pid"; then
  say "already up ($D)"; emit_env; exit 0
fi

# --- munge ------------------------------------------------------------------------------
MUNGE_SOCK="$D/munge/munge.socket"
if ! alive "$D/run/munged.pid"; then
  [ -s "$D/munge/munge.key" ] || mungekey --create --keyfile="$D/munge/munge.key" >/dev/null
  chmod 600 "$D/munge/munge.key"
  munged --key-file="$D/munge/munge.key" --socket="$MUNGE_SOCK" --pid-file="$D/run/munged.pid" \
    --log-file="$D/log/munged.log" --seed-file="$D/munge/munge.seed" --force
  wait_for 10 munged test -S "$MUNGE_SOCK"
fi

# --- MariaDB (accounting: submitit polls job states with sacct) ------------------------------
DB_SOCK="$D/run/mariadb.sock"
if [ ! -d "$D/db/mysql" ]; then
  chown mysql:mysql "$D/db"
  mariadb-install-db --no-defaults --user=mysql --datadir="$D/db" --auth-root-authentication-method=normal \
    --skip-test-db >"$D/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $D/log/mariadb-install.log"
fi
if ! alive "$D/run/mariadbd.pid"; then
  chown mysql:mysql "$D/run"
  mariadbd --no-defaults --user=mysql --datadir="$D/db" --socket="$DB_SOCK" --pid-file="$D/run/mariadbd.pid" \
    --bind-address=127.0.0.1 --port="$DB_PORT" --log-error="$D/log/mariadb.log" \
    --innodb-buffer-pool-size=64M --skip-name-resolve >/dev/null 2>&1 &
  wait_for 30 MariaDB mariadb --no-defaults --socket="$DB_SOCK" -uroot -e "select 1"
fi
mariadb --no-defaults --socket="$DB_SOCK" -uroot <<'SQL'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'aaren-local';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'aaren-local';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

# --- configs ------------------------------------------------------------------------------
cat >"$D/slurmdbd.conf" <<EOF
# written by slurm/up.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdPort=$((CTL_PORT + 2))
SlurmUser=root
PidFile=$D/run/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=aaren-local
StorageLoc=slurm_acct_db
EOF
chmod 600 "$D/slurmdbd.conf"

cat >"$D/slurm.conf" <<EOF
# written by slurm/up.sh: a one-node cluster, all state under $D
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmctldPort=$CTL_PORT
SlurmdPort=$((CTL_PORT + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$D/spool/ctld
SlurmdSpoolDir=$D/spool/d
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((CTL_PORT + 2))
# the controller's connection to slurmdbd ignores AuthInfo: give it the munge socket here
AccountingStoragePass=$MUNGE_SOCK
# a short kill wait makes scancel/preemption tests quick; Lightning's SIGTERM handler runs in it
KillWait=10
MinJobAge=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# --- slurmdbd, slurmctld, slurmd -------------------------------------------------------------
if ! alive "$D/run/slurmdbd.pid"; then
  SLURM_CONF="$D/slurm.conf" slurmdbd
  wait_for 30 slurmdbd sacctmgr -n show cluster
fi
sacctmgr -n show cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
if ! alive "$D/run/slurmctld.pid"; then
  slurmctld -f "$SLURM_CONF"
  wait_for 30 slurmctld scontrol ping
fi
if ! alive "$D/run/slurmd.pid"; then
  slurmd -f "$SLURM_CONF" -N localhost
fi
node_up() { sinfo -h -N -o %t | grep -Eq '^(idle|mix|alloc)'; }
wait_for 30 "the node (slurmd)" node_up
echo "export SLURM_CONF=$SLURM_CONF" >"$D/env.sh"
say "up: $(sinfo -h -o '%P %D %t %c CPUs %m MB') ($D; export SLURM_CONF=$SLURM_CONF)"
emit_env
