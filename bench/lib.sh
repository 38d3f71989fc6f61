# Shared helpers for the benchmark scripts in bench/ (sourced, not run).
# Everything runs on 127.0.0.1 only; clusters run as the `postgres` OS user; a trap stops what was started.
# shellcheck shell=bash

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
SEG=$((16 * 1024 * 1024))
S3_KEY=${S3_KEY:-benchkey}
S3_SECRET=${S3_SECRET:-benchsecret}
S3_SERVER=${S3_SERVER:-moto}          # moto | s3s (bench/s3server: s3s-fs + TCP_NODELAY + atomic create) | s3s-fs
PGBR_COMPRESS_LEVEL=${PGBR_COMPRESS_LEVEL:-}   # empty: pgBackRest's default for zst (3)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
as_pg() { runuser -u postgres -- "$@"; }

# ---------------------------------------------------------------------------------------------------------------
# prerequisites (idempotent)
ensure_prereqs() {
    local need=()
    command -v pgbackrest >/dev/null || need+=(pgbackrest)
    command -v hyperfine >/dev/null || need+=(hyperfine)
    command -v stunnel4 >/dev/null || need+=(stunnel4)
    [ -x /usr/bin/time ] || need+=(time)
    command -v openssl >/dev/null || need+=(openssl)
    command -v curl >/dev/null || need+=(curl)
    command -v zstd >/dev/null || need+=(zstd)
    if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then need+=(postgresql postgresql-contrib); fi
    if [ ${#need[@]} -gt 0 ]; then
        log "installing: ${need[*]}"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
        PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    fi
    if ! python3 - <<'EOF' 2>/dev/null
import importlib.metadata as m, sys
v = tuple(int(x) for x in m.version("moto").split(".")[:3])
import flask, boto3  # moto[server] extras
sys.exit(0 if v >= (5, 2, 5) else 1)
EOF
    then
        log "installing moto[server] from PyPI"
        pip install -q 'moto[server]>=5.2.5' >/dev/null
    fi
    if [ "$S3_SERVER" = s3s-fs ] && ! command -v s3s-fs >/dev/null; then
        log "installing s3s-fs 0.14.1 (takes a few minutes)"
        cargo install s3s-fs@0.14.1 --features binary --locked -q
    fi
    if [ "$S3_SERVER" = s3s ]; then
        build_s3server
    fi
}

# build_s3server: build bench/s3server (its own Cargo.lock and target dir; not part of the backupctl build) and set
# S3SERVER_BIN. The first build takes about 5 minutes on 2 cores; later ones are no-ops.
build_s3server() {
    log "building bench/s3server (cargo build --release)"
    cargo build --release -q --locked --manifest-path "$BENCH_DIR/s3server/Cargo.toml" || die "bench/s3server did not build"
    S3SERVER_BIN=$BENCH_DIR/s3server/target/release/bench-s3server
}

# Build the binaries (waits for the cargo lock if another build runs) and copy them into $WORK/bin so a
# concurrent rebuild cannot swap them mid-run.
build_bins() {
    log "building backupctl (cargo build --release --bins)"
    (cd "$ROOT" && cargo build --release --bins -q) || die "cargo build failed"
    mkdir -p "$WORK/bin"
    cp "$ROOT/target/release/wal-push" "$ROOT/target/release/wal-fetch" "$WORK/bin/"
    WAL_PUSH=$WORK/bin/wal-push
    WAL_FETCH=$WORK/bin/wal-fetch
    # base-backup / pitr-restore / backupctl (pitr-restore writes a restore_command with the wal-fetch beside it)
    local b
    for b in base-backup pitr-restore backupctl; do
        [ -x "$ROOT/target/release/$b" ] && cp "$ROOT/target/release/$b" "$WORK/bin/"
    done
    BASE_BACKUP=$WORK/bin/base-backup
    PITR_RESTORE=$WORK/bin/pitr-restore
    BACKUPCTL=$WORK/bin/backupctl
    local rev dirty
    rev=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
    BIN_REV="git $rev, +$(cd "$ROOT" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l) modified"
    dirty=$(cd "$ROOT" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l)
    log "binaries: git $rev (+$dirty modified files in src/Cargo), wal-push sha256 $(sha256sum "$WAL_PUSH" | cut -c1-12)"
}

# ---------------------------------------------------------------------------------------------------------------
# work dir, cleanup
CLUSTERS=()
BG_PIDS=()
new_workdir() {
    WORK=$(mktemp -d "/tmp/backupctl-bench-$1.XXXXXX")
    chmod 755 "$WORK"
    chown postgres:postgres "$WORK"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    cg_init
}
cleanup() {
    local rc=$?
    set +e
    for d in "${CLUSTERS[@]}"; do
        [ -f "$d/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1
    done
    for p in "${BG_PIDS[@]}"; do
        kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    cg_remove
    if [ -n "${KEEP:-}" ] || [ "$rc" -ne 0 ]; then
        log "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}

# CPU accounting: when the cgroup-v1 cpuacct hierarchy is writable, clusters start inside a child cgroup of
# their own, so every process they spawn (archive_command / restore_command, pgBackRest's detached async
# processes, wal-fetch's prefetch worker) is counted: CPU seconds per segment, robust to a busy machine.
CG=
cg_init() {
    local base=/sys/fs/cgroup/cpuacct
    [ -w "$base" ] && [ -f "$base/cpuacct.usage" ] || return 0
    CG=$base/backupctl-bench-$$
    mkdir -p "$CG" 2>/dev/null || CG=
}
cg_usage() { if [ -n "$CG" ]; then cat "$CG/cpuacct.usage"; else echo 0; fi; }   # nanoseconds
# cg_run CMD...: run CMD (and all it starts) inside the accounting cgroup
cg_run() {
    if [ -n "$CG" ]; then
        (echo "$BASHPID" > "$CG/tasks" && "$@")
    else
        "$@"
    fi
}
cg_remove() {
    [ -n "$CG" ] && [ -d "$CG" ] || return 0
    local i
    for i in $(seq 1 50); do
        [ -s "$CG/tasks" ] || break
        sleep 0.1
    done
    rmdir "$CG" 2>/dev/null || log "cgroup $CG still has tasks: $(tr '\n' ' ' < "$CG/tasks")"
}

# free_port: a TCP port that no socket on this machine uses, in any state, and below the kernel's ephemeral range
# (net.ipv4.ip_local_port_range, 32768-60999 here). A port inside that range can be taken, between the time it is
# picked and the time a server binds it, by any outgoing connection (the S3 client's, stunnel's, pgBackRest's):
# its ESTABLISHED or TIME_WAIT socket then makes the server's bind fail with "Address already in use" even with
# SO_REUSEADDR, and PostgreSQL stops with "could not create any TCP/IP sockets". That is what failed the S3
# restore legs of base_backup.sh (their restores leave many client ports in TIME_WAIT just before the check).
free_port() {
    local lo p
    lo=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    [ "$lo" -gt 12000 ] || lo=32768
    while :; do
        p=$((10000 + RANDOM % (lo - 10000)))
        ss -Htan "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
    done
}

# ---------------------------------------------------------------------------------------------------------------
# PostgreSQL
# pg_new DIR PORT [extra settings...]: initdb a throwaway cluster (archive_mode on, archive_command empty so
# segments stay .ready).
pg_new() {
    local dir=$1 port=$2
    shift 2
    as_pg "$PG_BIN/initdb" -D "$dir" -A trust -U postgres --no-sync >/dev/null
    cat >> "$dir/postgresql.conf" <<EOF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = replica
archive_mode = on
archive_command = ''
fsync = off
max_wal_size = '2GB'
shared_buffers = '256MB'
log_line_prefix = '%m [%p] '
EOF
    local s
    for s in "$@"; do echo "$s" >> "$dir/postgresql.conf"; done
    CLUSTERS+=("$dir")
}
pg_start() { cg_run as_pg "$PG_BIN/pg_ctl" -D "$1" -l "$1.log" -w -t 600 start >/dev/null || { tail -20 "$1.log" >&2; die "start $1"; }; }
# start_restored DEST: start a restored data directory on a port free now (RPORT) with archiving off, and wait
# (up to $TIMEOUT s) for the end of recovery (promotion). Sets RPORT, and V_SECS (seconds from start to promotion,
# or "failed" when the server stopped or the time ran out, with the reason logged). Leaves the server running.
start_restored() {
    local dest=$1 st t0
    V_SECS=failed
    # A port free right now, outside the ephemeral range (free_port): one picked at the start of the run could
    # meanwhile be held by a client connection of the restore itself.
    RPORT=$(free_port)
    printf 'port = %s\narchive_mode = off\n' "$RPORT" >> "$dest/postgresql.auto.conf"
    chown postgres:postgres "$dest/postgresql.auto.conf"
    rm -f "$dest.log"
    t0=$(date +%s.%N)
    as_pg "$PG_BIN/pg_ctl" -D "$dest" -l "$dest.log" start >/dev/null || true
    while :; do
        sleep 0.2
        st=$(psql -X -A -t -q -h "$WORK" -p "$RPORT" -U postgres -d postgres -c 'select pg_is_in_recovery()' 2>/dev/null || true)
        if [ "$st" = f ]; then
            V_SECS=$(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $t0}")
            return 0
        fi
        if ! [ -f "$dest/postmaster.pid" ] && ! pgrep -f "$dest\$" >/dev/null; then
            log "  the restored server stopped: $(grep -E 'FATAL|PANIC' "$dest.log" | tail -2)"
            return 0
        fi
        if awk "BEGIN {exit !($(date +%s.%N) - $t0 > $TIMEOUT)}"; then
            log "  TIMEOUT after $TIMEOUT s waiting for the end of recovery"
            return 0
        fi
    done
}
pg_stop() { as_pg "$PG_BIN/pg_ctl" -D "$1" -m "${2:-fast}" -w -t 600 stop >/dev/null 2>&1 || true; }
# sql PORT QUERY: one value, unaligned
sql() { psql -X -A -t -q -h "$WORK" -p "$1" -U postgres -d postgres -c "$2"; }

# gen_wal PORT N: write at least N full segments of WAL, then switch, so that every written segment is complete
# (and .ready while archive_command is empty). The mix: pgbench -i -s 10 once (COPY WAL, ~35x compressible),
# then cycles of CHECKPOINT + 3 s of pgbench -c 2 (full-page images and updates, ~3-7x) and an INSERT of
# 900k rows of md5 text (~2.5x): about 3x with zstd -1 overall, like a busy real cluster rather than a bulk load.
gen_wal() {
    local port=$1 n=$2 start now target
    if [ "$(sql "$port" "select count(*) from pg_class where relname = 'pgbench_accounts'")" = 0 ]; then
        as_pg "$PG_BIN/pgbench" -h "$WORK" -p "$port" -U postgres -i -s 10 -q postgres >/dev/null 2>&1 \
            || die "pgbench -i failed"
        sql "$port" "create table filler(id int, t text)" >/dev/null
    fi
    start=$(sql "$port" "select pg_current_wal_lsn() - '0/0'")
    target=$((start + n * SEG))
    while :; do
        now=$(sql "$port" "select pg_current_wal_lsn() - '0/0'")
        log "  generated $(((now - start) / SEG)) / $n segments"
        [ "$now" -ge "$target" ] && break
        sql "$port" "checkpoint" >/dev/null
        as_pg "$PG_BIN/pgbench" -h "$WORK" -p "$port" -U postgres -c 2 -j 2 -T 3 postgres >/dev/null 2>&1 \
            || die "pgbench failed"
        sql "$port" "truncate filler; insert into filler select g, md5(random()::text) || md5(g::text)
                     from generate_series(1, 900000) g" >/dev/null
    done
    sql "$port" "select pg_switch_wal()" >/dev/null
}

# ready_count DATADIR
ready_count() { find "$1/pg_wal/archive_status" -name '*.ready' 2>/dev/null | wc -l; }

# Archiving of the source cluster $SRC on $PORT (it has a table bench_tick(t timestamptz) to write to).
# switch_and_wait: write a record, switch, wait until the archiver has archived that segment and nothing is .ready
switch_and_wait() {
    local seg done_ failed0 i
    failed0=$(sql "$PORT" "select failed_count from pg_stat_archiver")
    sql "$PORT" "insert into bench_tick values (now())" >/dev/null
    seg=$(sql "$PORT" "select pg_walfile_name(pg_current_wal_lsn())")
    sql "$PORT" "select pg_switch_wal()" >/dev/null
    for i in $(seq 1 3000); do
        done_=$(sql "$PORT" "select coalesce(last_archived_wal, '') from pg_stat_archiver")
        [[ "$done_" > "$seg" || "$done_" == "$seg" ]] && [ "$(ready_count "$SRC")" -eq 0 ] && return 0
        if [ "$(sql "$PORT" "select failed_count from pg_stat_archiver")" -gt "$((failed0 + 5))" ]; then
            tail -5 "$SRC.log" >&2
            die "archive_command keeps failing"
        fi
        sleep 0.2
    done
    die "archiving did not reach $seg"
}
# set_archive CMD: make CMD the archive_command and drain the backlog with it (twice: the archiver may have taken
# the first switched segment before it saw the reload)
set_archive() {
    sql "$PORT" "alter system set archive_command = '$1'" >/dev/null
    sql "$PORT" "select pg_reload_conf()" >/dev/null
    switch_and_wait
    switch_and_wait
}

# ---------------------------------------------------------------------------------------------------------------
# S3 server on loopback (+ stunnel for pgBackRest, which speaks HTTPS only)
export AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET AWS_EC2_METADATA_DISABLED=true AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN
S3_PID=
# s3_start: start a fresh S3 server (in memory for moto; a fresh directory for s3s-fs) on $S3_PORT
s3_start() {
    S3_PORT=${S3_PORT:-$(free_port)}
    case "$S3_SERVER" in
        moto)
            python3 -m moto.server -H 127.0.0.1 -p "$S3_PORT" >"$WORK/s3.log" 2>&1 &
            ;;
        s3s | s3s-fs)
            rm -rf "$WORK/s3root"
            mkdir -p "$WORK/s3root"
            local bin=s3s-fs
            [ "$S3_SERVER" = s3s ] && bin=${S3SERVER_BIN:-$BENCH_DIR/s3server/target/release/bench-s3server}
            # S3SERVER_FLAGS: extra flags for bench-s3server (--plain: behave like the s3s-fs 0.14.1 binary)
            # shellcheck disable=SC2086
            "$bin" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_KEY" --secret-key "$S3_SECRET" \
                ${S3SERVER_FLAGS:-} "$WORK/s3root" >"$WORK/s3.log" 2>&1 &
            ;;
        *) die "S3_SERVER must be moto, s3s or s3s-fs" ;;
    esac
    S3_PID=$!
    BG_PIDS+=("$S3_PID")
    local i
    for i in $(seq 1 100); do
        curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" && return 0
        sleep 0.1
    done
    die "S3 server ($S3_SERVER) did not start: $(tail -5 "$WORK/s3.log")"
}
s3_stop() {
    [ -n "$S3_PID" ] || return 0
    kill "$S3_PID" 2>/dev/null
    # s3s-fs dies of the signal (status 143): not a failure of the script (set -e)
    wait "$S3_PID" 2>/dev/null || true
    S3_PID=
}
# s3_bucket NAME
s3_bucket() {
    if [ "$S3_SERVER" = s3s ] || [ "$S3_SERVER" = s3s-fs ]; then
        mkdir -p "$WORK/s3root/$1"
    else
        python3 - "$S3_PORT" "$1" <<'EOF'
import sys, boto3
c = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1")
c.create_bucket(Bucket=sys.argv[2])
EOF
    fi
}
# s3_usage BUCKET: "objects bytes"
s3_usage() {
    python3 - "$S3_PORT" "$1" <<'EOF'
import sys, boto3
c = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1")
n = b = 0
for page in c.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[2]):
    for o in page.get("Contents", []):
        n += 1; b += o["Size"]
print(n, b)
EOF
}

# s3_stats: the request counts of bench/s3server (S3_SERVER=s3s) so far, as JSON on stdout (GET /_bench/stats;
# shape in bench/s3server/src/stats.rs); s3_stats_diff BEFORE AFTER [BUCKET]: "op requests bytes_in bytes_out
# errors" lines for what happened between two saved readings (of one bucket, or all), then a "total" line
s3_stats() { curl -sSf "http://127.0.0.1:$S3_PORT/_bench/stats"; }
s3_stats_diff() {
    python3 - "$@" <<'EOF'
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
if len(sys.argv) > 3:
    a, b = (x["buckets"].get(sys.argv[3], {"ops": {}}) for x in (a, b))
zero = {"requests": 0, "bytes_in": 0, "bytes_out": 0, "errors": 0}
total = dict(zero)
for op in sorted(b["ops"]):
    d = {k: b["ops"][op][k] - a["ops"].get(op, zero)[k] for k in zero}
    if d["requests"]:
        print(op.replace(" ", "_"), d["requests"], d["bytes_in"], d["bytes_out"], d["errors"])
        for k in zero: total[k] += d[k]
print("total", total["requests"], total["bytes_in"], total["bytes_out"], total["errors"])
EOF
}

STUNNEL_PID=
# stunnel_start: TLS on $TLS_PORT -> plain HTTP on $S3_PORT (self-signed certificate)
stunnel_start() {
    TLS_PORT=${TLS_PORT:-$(free_port)}
    if [ ! -f "$WORK/stunnel.pem" ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
            -keyout "$WORK/stunnel.key" -out "$WORK/stunnel.crt" >/dev/null 2>&1
        cat "$WORK/stunnel.key" "$WORK/stunnel.crt" > "$WORK/stunnel.pem"
        chmod 600 "$WORK/stunnel.pem"
    fi
    cat > "$WORK/stunnel.conf" <<EOF
foreground = yes
pid =
debug = 3
output = $WORK/stunnel.log
[s3]
accept = 127.0.0.1:$TLS_PORT
connect = 127.0.0.1:$S3_PORT
cert = $WORK/stunnel.pem
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
EOF
    stunnel4 "$WORK/stunnel.conf" >/dev/null 2>&1 &
    STUNNEL_PID=$!
    BG_PIDS+=("$STUNNEL_PID")
    local i
    for i in $(seq 1 50); do
        ss -Hltn "sport = :$TLS_PORT" | grep -q . && return 0
        sleep 0.1
    done
    die "stunnel did not start: $(tail -5 "$WORK/stunnel.log")"
}
stunnel_stop() {
    [ -n "$STUNNEL_PID" ] || return 0
    kill "$STUNNEL_PID" 2>/dev/null
    wait "$STUNNEL_PID" 2>/dev/null
    STUNNEL_PID=
}

# ---------------------------------------------------------------------------------------------------------------
# configuration files
# walpush_conf FILE URL SPOOL [key=value lines for [archive]]
walpush_conf() {
    local file=$1 url=$2 spool=$3
    shift 3
    {
        echo "[repository]"
        echo "url = \"$url\""
        echo "compression_level = ${WALPUSH_LEVEL:-1}"
        echo "format = ${REPO_FORMAT:-2}"
        if [[ $url == s3://* ]]; then
            echo "[repository.s3]"
            echo "region = \"us-east-1\""
            echo "endpoint = \"http://127.0.0.1:$S3_PORT\""
            echo "force_path_style = true"
            echo "allow_http = true"
        fi
        echo "[spool]"
        echo "path = \"$spool\""
        echo "[archive]"
        local kv
        for kv in "$@"; do echo "$kv"; done
    } > "$file"
    mkdir -p "$spool"
    chown postgres:postgres "$file" "$spool"
}

# pgbr_conf FILE KIND(posix|s3) REPO_PATH DATADIR PORT [extra global lines...]
pgbr_conf() {
    local file=$1 kind=$2 repo=$3 data=$4 port=$5
    shift 5
    local base
    base=$(dirname "$file")
    mkdir -p "$base/pgbr-log" "$base/pgbr-lock" "$base/pgbr-spool"
    {
        echo "[global]"
        if [ "$kind" = s3 ]; then
            echo "repo1-type=s3"
            echo "repo1-path=$repo"
            echo "repo1-s3-bucket=pgbr"
            echo "repo1-s3-endpoint=127.0.0.1"
            echo "repo1-storage-port=$TLS_PORT"
            echo "repo1-s3-region=us-east-1"
            echo "repo1-s3-key=$S3_KEY"
            echo "repo1-s3-key-secret=$S3_SECRET"
            echo "repo1-s3-uri-style=path"
            echo "repo1-storage-verify-tls=n"
        else
            echo "repo1-path=$repo"
        fi
        echo "repo1-retention-full=1"
        echo "compress-type=zst"
        [ -n "$PGBR_COMPRESS_LEVEL" ] && echo "compress-level=$PGBR_COMPRESS_LEVEL"
        echo "log-path=$base/pgbr-log"
        echo "lock-path=$base/pgbr-lock"
        echo "spool-path=$base/pgbr-spool"
        echo "log-level-console=warn"
        echo "log-level-stderr=warn"
        echo "log-level-file=info"
        local kv
        for kv in "$@"; do echo "$kv"; done
        echo "[bench]"
        echo "pg1-path=$data"
        echo "pg1-port=$port"
        echo "pg1-socket-path=$WORK"
        echo "pg1-user=postgres"
    } > "$file"
    chown -R postgres:postgres "$file" "$base/pgbr-log" "$base/pgbr-lock" "$base/pgbr-spool"
}

# ---------------------------------------------------------------------------------------------------------------
# timing a command; repository usage
# timed TAG CMD...: run CMD as postgres under /usr/bin/time -v after a sync; stdout/stderr to $WORK/out/TAG.*;
# sets T_SECS (wall), T_CPU (user + sys, children included), T_RSS (MiB, largest process), T_SRV (CPU seconds
# the S3 server used meanwhile, "-" without one); returns CMD's status
srv_cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$S3_PID/stat"; }
timed() {
    local tag=$1 rc=0 t0 t1 s0=
    shift
    sync
    [ -n "$S3_PID" ] && s0=$(srv_cpu)
    t0=$(date +%s.%N)
    /usr/bin/time -v -o "$WORK/out/$tag.time" runuser -u postgres -- "$@" \
        >"$WORK/out/$tag.out" 2>"$WORK/out/$tag.err" || rc=$?
    t1=$(date +%s.%N)
    T_SECS=$(awk "BEGIN {printf \"%.2f\", $t1 - $t0}")
    T_CPU=$(awk -F': ' '/User time/ {u = $2} /System time/ {s = $2} END {printf "%.1f", u + s}' "$WORK/out/$tag.time")
    T_RSS=$(awk -F': ' '/Maximum resident/ {printf "%.0f", $2 / 1024}' "$WORK/out/$tag.time")
    T_SRV=-
    [ -n "$s0" ] && T_SRV=$(awk "BEGIN {printf \"%.1f\", $(srv_cpu) - $s0}")
    if [ "$rc" != 0 ]; then
        log "  FAILED (exit $rc): $*"
        sed 's/^/    /' "$WORK/out/$tag.err" | tail -15 >&2
    fi
    return "$rc"
}
# in_order RUN A B: "A B" on odd runs, "B A" on even runs (neither tool always goes first)
in_order() { if [ $(($1 % 2)) = 1 ]; then echo "$2 $3"; else echo "$3 $2"; fi; }
# s3_prefix_usage BUCKET PREFIX EXCLUDE: "objects bytes" of the objects under PREFIX whose key does not start
# with EXCLUDE; files_usage PATH...: "files bytes" under the paths
s3_prefix_usage() {
    python3 - "$S3_PORT" "$1" "$2" "$3" <<'EOF'
import sys, boto3
port, bucket, prefix, exclude = sys.argv[1:]
c = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
n = b = 0
for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
    for o in page.get("Contents", []):
        if not o["Key"].startswith(exclude):
            n += 1; b += o["Size"]
print(n, b)
EOF
}
files_usage() { { find "$@" -type f -printf '%s\n' 2>/dev/null || true; } | awk '{n++; b += $1} END {print n + 0, b + 0}'; }

# ---------------------------------------------------------------------------------------------------------------
# statistics
# median of the numbers on stdin (one per line)
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "nan"; exit} if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
minimum() { sort -g | head -1; }
maximum() { sort -g | tail -1; }

# Common start of every benchmark: prerequisites, a work directory named after the benchmark, fresh binaries,
# and the start time T0 (global).
bench_start() {
    ensure_prereqs
    new_workdir "$1"
    build_bins
    T0=$(date +%s)
}

# pgbench_source DIR PORT SCALE: a source cluster in DIR on PORT that archives nowhere (archive_command /bin/true:
# the load's WAL is part of no repository and no measurement), loaded with pgbench -i -s SCALE and checkpointed
pgbench_source() {
    local dir=$1 port=$2 scale=$3
    log "source cluster (port $port): pgbench -i -s $scale"
    pg_new "$dir" "$port" "archive_command = '/bin/true'" "autovacuum = off" "checkpoint_timeout = '30min'"
    pg_start "$dir"
    as_pg "$PG_BIN/pgbench" -h "$WORK" -p "$port" -U postgres -i -s "$scale" -q postgres >"$WORK/pgbench-init.log" 2>&1 \
        || { tail -5 "$WORK/pgbench-init.log"; die "pgbench -i failed"; }
    sql "$port" "checkpoint" >/dev/null
}

# s3_with_peer_buckets: the S3 server, stunnel in front of it for pgBackRest, and the buckets bbs3 (backupctl) and
# pgbr (pgBackRest) that base_backup.sh and verify.sh use
s3_with_peer_buckets() {
    s3_start
    stunnel_start
    s3_bucket bbs3
    s3_bucket pgbr
}
