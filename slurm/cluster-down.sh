#!/usr/bin/env bash
# cluster-down.sh - stop the loopback Slurm cluster started by slurm/cluster-up.sh.
#
#   bash slurm/cluster-down.sh            # cancel all jobs, stop every daemon
#   bash slurm/cluster-down.sh --purge    # ... and delete $RLHF_SLURM_DIR (job ids restart at 1)
#
# Jobs are cancelled first, while slurmctld still runs, so that no job step is left behind.
# Daemons are stopped through their pid files only. Safe to run when nothing is up.
set -uo pipefail

DIR=${RLHF_SLURM_DIR:-/tmp/rlhf-slurm}
purge=no
[ "${1:-}" = --purge ] && purge=yes

say() { echo "[cluster-down $(date +%T)] $*" >&2; }
[ "$(id -u)" -eq 0 ] || { say "run me as root"; exit 1; }

running() {
    local name=$1 pidfile=$2 pid
    [ -s "$pidfile" ] || return 1
    pid=$(<"$pidfile") || return 1
    [ -d "/proc/$pid" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
    ! grep -qE '^State:\s+Z' "/proc/$pid/status" 2>/dev/null
}
halt() {
    local name=$1 pidfile=$2 pid n
    if ! running "$name" "$pidfile"; then rm -f "$pidfile"; return 0; fi
    pid=$(<"$pidfile")
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for n in $(seq 150); do
        running "$name" "$pidfile" || { rm -f "$pidfile"; return 0; }
        sleep 0.1
    done
    say "$name still alive after 15 s: KILL"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

if running slurmctld "$DIR/slurmctld.pid"; then
    jobs=$(squeue -h -o %A 2>/dev/null)
    if [ -n "$jobs" ]; then
        say "cancelling jobs: $(echo $jobs)"
        echo "$jobs" | xargs -r scancel 2>/dev/null || true
        for n in $(seq 100); do
            [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
fi

halt slurmd "$DIR/slurmd.pid"
halt slurmctld "$DIR/slurmctld.pid"
halt slurmdbd "$DIR/slurmdbd.pid"
halt mariadbd "$DIR/mariadb-run/mariadbd.pid"
halt munged /run/munge/munged.pid

if [ "$purge" = yes ]; then
    say "deleting $DIR"
    rm -rf "$DIR"
fi
say "down"
