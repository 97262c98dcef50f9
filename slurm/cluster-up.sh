#!/usr/bin/env bash
# cluster-up.sh - start a real, single-node Slurm cluster on the loopback interface,
# for the `slurm`-marked tests and for trying `rlhf sweep` on one machine.
#
#   sudo bash slurm/cluster-up.sh          # or as root: bash slurm/cluster-up.sh
#
# What it does (every step is skipped when already done, so running it twice is cheap):
#   1. installs the Debian packages (slurmctld slurmd slurm-client munge, and for job
#      accounting slurmdbd + mariadb-server) with apt-get when they are missing;
#   2. creates a munge key and starts munged;
#   3. writes /etc/slurm/slurm.conf: one node "localhost" (127.0.0.1) in partition "debug";
#   4. with accounting on: starts a private MariaDB on 127.0.0.1:$DB_PORT and slurmdbd;
#   5. starts slurmctld and slurmd, waits for the node, and runs `srun true` to prove it.
# Daemons are started directly (no systemd needed), state lives under $RLHF_SLURM_DIR.
#
# Environment:
#   RLHF_SLURM_DIR         state, spool and logs               (default /tmp/rlhf-slurm)
#   RLHF_SLURM_CPUS        CPUs the node advertises; may be more than the real cores,
#                          so that several 1-CPU array tasks run at once   (default 8)
#   RLHF_SLURM_ACCOUNTING  1 = slurmdbd + MariaDB, so `sacct` works (default 1). Keep it on:
#                          without sacct, submitit cannot tell that a job was killed from
#                          outside and job.result() waits forever.
#   RLHF_SLURM_WAIT        seconds to wait for each daemon     (default 60)
# Must run as root (it installs packages, writes /etc/slurm and runs slurmd).
set -euo pipefail

DIR=${RLHF_SLURM_DIR:-/tmp/rlhf-slurm}
NCPUS=${RLHF_SLURM_CPUS:-8}
WITH_DB=${RLHF_SLURM_ACCOUNTING:-1}
WAIT_S=${RLHF_SLURM_WAIT:-60}
SLURM_CONF_FILE=/etc/slurm/slurm.conf
DBD_CONF_FILE=/etc/slurm/slurmdbd.conf
DB_PORT=3308                # private MariaDB, loopback only, away from the usual 3306
DB_PASSWORD=rlhf-sweeps     # only reachable on 127.0.0.1 by the slurm user below

say() { echo "[cluster-up $(date +%T)] $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "run me as root (sudo bash $0)"

# running NAME PIDFILE: true if PIDFILE names a live (non-zombie) process called NAME
running() {
    local name=$1 pidfile=$2 pid
    [ -s "$pidfile" ] || return 1
    pid=$(<"$pidfile") || return 1
    [ -d "/proc/$pid" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
    ! grep -qE '^State:\s+Z' "/proc/$pid/status" 2>/dev/null
}
# halt NAME PIDFILE: TERM, wait up to 15 s, then KILL
halt() {
    local name=$1 pidfile=$2 pid n
    running "$name" "$pidfile" || return 0
    pid=$(<"$pidfile")
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for n in $(seq 150); do running "$name" "$pidfile" || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}
# until_ok WHAT COMMAND...: retry COMMAND every 0.25 s for up to $WAIT_S seconds
until_ok() {
    local what=$1 deadline=$((SECONDS + WAIT_S)); shift
    while ! "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "gave up waiting for $what (logs: $DIR/log)"
        sleep 0.25
    done
}

# --- 1. packages ------------------------------------------------------------------------
want=(slurmctld slurmd slurm-client munge)
[ "$WITH_DB" = 1 ] && want+=(slurmdbd mariadb-server)
need=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    say "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # the packages' postinst scripts cannot start services without systemd; we start them below
    apt-get install -y -qq --no-install-recommends "${need[@]}" >"/tmp/cluster-up-apt.log" 2>&1 \
        || fail "apt-get install failed, see /tmp/cluster-up-apt.log"
fi
mkdir -p "$DIR/ctld" "$DIR/spool" "$DIR/log"
chmod 755 "$DIR"

# --- 2. munge ---------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    say "new munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
fi
chown -R munge:munge /etc/munge
chmod 700 /etc/munge
chmod 600 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge
munge_ok() { munge -n | unmunge; }
if ! munge_ok >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
    until_ok munged munge_ok
fi

# --- 3. slurm.conf ----------------------------------------------------------------------
# Bind the daemons to loopback only when the host name resolves there (NoInAddrAny makes
# them bind to the address of `hostname`).
if [ "$(getent ahostsv4 "$(hostname)" | awk 'NR == 1 {print $1}')" = 127.0.0.1 ]; then
    bind_line="CommunicationParameters=NoCtldInAddrAny,NoInAddrAny"
else
    bind_line="# $(hostname) is not 127.0.0.1: daemons listen on all addresses"
fi
if [ "$WITH_DB" = 1 ]; then
    accounting_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
else
    accounting_lines="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
mem_mb=$(awk '$1 == "MemTotal:" {print int($2 / 1024 * 0.9)}' /proc/meminfo)
conf="# written by rlhf-harness slurm/cluster-up.sh: one node on loopback
ClusterName=rlhflocal
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
$bind_line
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$accounting_lines
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# look at the queue every 2 s, so requeued jobs start again quickly
SchedulerParameters=sched_interval=2,bf_interval=2
# a requeued job may only start once its credential expired: 10 s instead of 120 s
AuthInfo=cred_expire=10
KillWait=5
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# let the node advertise more CPUs than it has
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$NCPUS RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP"
conf_changed=0
if [ "$(cat "$SLURM_CONF_FILE" 2>/dev/null)" != "$conf" ]; then
    say "writing $SLURM_CONF_FILE ($NCPUS CPUs)"
    mkdir -p /etc/slurm
    printf '%s\n' "$conf" >"$SLURM_CONF_FILE"
    chmod 644 "$SLURM_CONF_FILE"
    conf_changed=1
fi
rm -f /etc/slurm/cgroup.conf
if [ "$conf_changed" = 1 ]; then   # daemons started with an older config must restart
    halt slurmd "$DIR/slurmd.pid"
    halt slurmctld "$DIR/slurmctld.pid"
fi

# --- 4. accounting: MariaDB + slurmdbd --------------------------------------------------
if [ "$WITH_DB" = 1 ]; then
    dbdata=$DIR/mariadb; dbrun=$DIR/mariadb-run
    install -d -o mysql -g mysql "$dbdata" "$dbrun"
    if [ ! -d "$dbdata/mysql" ]; then
        say "creating the MariaDB data directory"
        mariadb-install-db --user=mysql --datadir="$dbdata" --skip-test-db \
            --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 \
            || fail "mariadb-install-db failed, see $DIR/log/mariadb-install.log"
    fi
    if ! running mariadbd "$dbrun/mariadbd.pid"; then
        say "starting MariaDB on 127.0.0.1:$DB_PORT"
        setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$dbdata" \
            --socket="$dbrun/mariadbd.sock" --pid-file="$dbrun/mariadbd.pid" \
            --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
            --log-error="$DIR/log/mariadbd.log" --innodb-lock-wait-timeout=900 \
            </dev/null >/dev/null 2>&1 &
        until_ok MariaDB mariadb-admin --socket="$dbrun/mariadbd.sock" ping
    fi
    mariadb --socket="$dbrun/mariadbd.sock" -uroot <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
    if [[ $bind_line == CommunicationParameters=* ]]; then dbd_bind="CommunicationParameters=NoInAddrAny"
    else dbd_bind="$bind_line"; fi
    dbd="AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
$dbd_bind
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db"
    if [ "$(cat "$DBD_CONF_FILE" 2>/dev/null)" != "$dbd" ]; then
        printf '%s\n' "$dbd" >"$DBD_CONF_FILE"
        halt slurmdbd "$DIR/slurmdbd.pid"
    fi
    chmod 600 "$DBD_CONF_FILE"   # slurmdbd refuses to read a conf others can read
    if ! running slurmdbd "$DIR/slurmdbd.pid"; then
        say "starting slurmdbd"
        /usr/sbin/slurmdbd
    fi
    until_ok "slurmdbd" sacctmgr -n -P list cluster
fi

# --- 5. slurmctld + slurmd --------------------------------------------------------------
if ! running slurmctld "$DIR/slurmctld.pid"; then
    say "starting slurmctld"
    /usr/sbin/slurmctld
fi
ctld_up() { scontrol ping | grep -q 'is UP'; }
until_ok slurmctld ctld_up
if ! running slurmd "$DIR/slurmd.pid"; then
    say "starting slurmd"
    /usr/sbin/slurmd -N localhost     # the node is called localhost, whatever `hostname` says
fi

deadline=$((SECONDS + WAIT_S)); resumed=no
while true; do
    state=$(sinfo -h -n localhost -o %T 2>/dev/null | head -n 1)
    case "$state" in
        idle | mixed | allocated | completing) break ;;
        *drain* | down* | *fail*)
            if [ "$resumed" = no ]; then
                say "node is '$state': resuming it"
                scontrol update nodename=localhost state=resume || true
                resumed=yes
            fi ;;
    esac
    [ "$SECONDS" -lt "$deadline" ] || fail "node still '$state' after ${WAIT_S}s (logs: $DIR/log)"
    sleep 0.25
done
# An idle node is not proof enough (a slurmd on the wrong address is idle too): run a step.
timeout 30 srun --quiet --time=1 true || fail "'srun true' did not work (logs: $DIR/log)"
say "up: $(sinfo -h -o '%P %a %D %T %c' | head -n 1) cpus; slurm $(sinfo -V | cut -d' ' -f2); accounting=$WITH_DB"
