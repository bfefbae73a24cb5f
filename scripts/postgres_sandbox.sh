#!/usr/bin/env bash
# A throwaway PostgreSQL server for trying gaze's PostgreSQL store by hand or for benchmarks.
# Nothing in it is meant to last: trust authentication and one folder for the whole server
# (data, socket, log). Durability settings stay at PostgreSQL's defaults, so benchmarks measure
# a server as deployed.
#
# Usage:
#   scripts/postgres_sandbox.sh start DIR [PORT]
#       Creates DIR if needed, initializes a cluster in DIR/data the first time (superuser
#       `gaze`, trust authentication, listening on 127.0.0.1 only), starts it on PORT (default
#       55432), creates database `gaze` if missing, and prints its URL:
#       postgres://gaze@127.0.0.1:PORT/gaze
#       When the server in DIR already runs, only prints its URL.
#   scripts/postgres_sandbox.sh stop DIR
#       Stops the server started in DIR (fast shutdown). Remove DIR afterwards to discard it.
# Environment:
#   GAZE_PG_BIN  the folder holding initdb, pg_ctl and postgres. Default: `pg_config --bindir`
#                where that folder holds initdb, else the newest /usr/lib/postgresql/*/bin.
# PostgreSQL refuses to run as root: as root, the server runs as `nobody`, so DIR and every
# folder above it must be reachable by `nobody` (a folder under /tmp is; one under /root is not).
# The server's log is DIR/postgres.log.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
    exit 2
}

die() {
    echo "postgres_sandbox: $*" >&2
    exit 1
}

find_bin_dir() {
    if [[ -n ${GAZE_PG_BIN:-} ]]; then
        [[ -x $GAZE_PG_BIN/initdb ]] || die "GAZE_PG_BIN=$GAZE_PG_BIN holds no initdb"
        echo "$GAZE_PG_BIN"
        return
    fi
    local dir
    if dir=$(pg_config --bindir 2>/dev/null) && [[ -x $dir/initdb ]]; then
        echo "$dir"
        return
    fi
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | while read -r d; do
        [[ -x $d/initdb ]] && echo "$d"
    done | tail -n 1)
    [[ -n $dir ]] || die "no PostgreSQL found (no initdb in \$GAZE_PG_BIN, \`pg_config --bindir\` or /usr/lib/postgresql/*/bin)"
    echo "$dir"
}

# Runs a command as the server's owner: `nobody` when we are root, else ourselves.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u nobody -- "$@"
    else
        "$@"
    fi
}

start() {
    local dir=$1 port=${2:-55432}
    [[ $port =~ ^[0-9]+$ ]] && ((port > 0 && port < 65536)) || die "not a port: $port"
    local bin
    bin=$(find_bin_dir)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [[ $(id -u) -eq 0 ]]; then
        chown nobody: "$dir"
        chmod 700 "$dir"
        runuser -u nobody -- test -w "$dir" ||
            die "$dir is not reachable by nobody (is a folder above it closed to others?)"
    fi
    if [[ ! -f $dir/data/PG_VERSION ]]; then
        (cd "$dir" && as_owner "$bin/initdb" -D "$dir/data" -U gaze --auth=trust \
            --encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1) ||
            die "initdb failed; see $dir/initdb.log"
    fi
    if as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        local running
        running=$(cat "$dir/port" 2>/dev/null) || die "a server runs in $dir but $dir/port is missing"
        [[ -z ${2:-} || $2 == "$running" ]] || die "the server in $dir already runs on port $running"
        echo "postgres://gaze@127.0.0.1:$running/gaze"
        return
    fi
    # The socket goes into DIR too, away from the system's /var/run/postgresql.
    (cd "$dir" && as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -s \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start) ||
        die "the server did not start; see $dir/postgres.log"
    echo "$port" >"$dir/port"
    local exists
    exists=$("$bin/psql" -X -q -t -A -h 127.0.0.1 -p "$port" -U gaze -d postgres \
        -c "SELECT 1 FROM pg_database WHERE datname = 'gaze'")
    if [[ $exists != 1 ]]; then
        "$bin/psql" -X -q -h 127.0.0.1 -p "$port" -U gaze -d postgres \
            -c "CREATE DATABASE gaze" >/dev/null
    fi
    echo "postgres://gaze@127.0.0.1:$port/gaze"
}

stop() {
    local dir=$1
    [[ -f $dir/data/PG_VERSION ]] || die "no sandbox server in $dir"
    dir=$(cd "$dir" && pwd)
    local bin
    bin=$(find_bin_dir)
    (cd "$dir" && as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -s stop)
}

case ${1:-} in
start)
    [[ $# -ge 2 && $# -le 3 ]] || usage
    start "$2" "${3:-}"
    ;;
stop)
    [[ $# -eq 2 ]] || usage
    stop "$2"
    ;;
*) usage ;;
esac
