#!/usr/bin/env bash
# Base backup and restore: wall time, CPU, peak RSS and repository bytes of base-backup / pitr-restore next to
# pgBackRest, on a pgbench database (scale SCALE). Every run uses fresh repositories, in this order:
#   full      base-backup --type full --fast into file://  vs  pgbackrest backup --type=full --start-fast (posix)
#             vs  pg_basebackup -Ft --compress=client-zstd -X none -c fast -D <empty dir> (PGBB_COMPRESS; archive_command
#             /bin/true meanwhile: it stores no WAL, and waits only for the server to archive its stop segment)
#   full2     the same again at once: what a full right after a full adds
#   incr      after `update pgbench_accounts ... where aid <= CHANGE_PCT % of the rows` + CHECKPOINT (a clustered
#             change): base-backup --type incremental  vs  pgbackrest backup --type=incr; bytes added to the repo
#   rand      after updating the first row of RANDOM_PCT % of pgbench_accounts' pages chosen at random + CHECKPOINT:
#             base-backup --type incremental  vs  pgbackrest backup --type=incr
#   restore   the newest incremental into an empty directory: pitr-restore ([restore] parallel 4 and 2)  vs
#             pgbackrest restore --process-max=2; then the restored cluster is started (untimed) and
#             count(*), sum(abalance) of pgbench_accounts must equal the source's
#   floor     (FLOOR=1) what any restore must at least do, with nothing to fetch, decode or verify: write the restored
#             data directory's bytes (same files, same sizes) from memory and fsync them, 2 writers, through the page
#             cache (floor-buffered) and with O_DIRECT (floor-direct: the disk's own rate); bench/write_floor.py
#   S3 (S3=1) full backup + restore the same way into / from S3 on loopback (moto; pgBackRest through stunnel)
# The source cluster archives with the tool under test only (archive_command is switched, and the backlog drained,
# before each leg, untimed): each backup waits for its own stop segment, pushed by its own archiver.
#
# Usage: bash bench/base_backup.sh     (as root)
# Env:   SCALE=100  RUNS=3  S3=1  CHANGE_PCT=3  RANDOM_PCT=5  BB_PARALLEL=2  CHUNK_KIB=1024  PGBR_PROCESS_MAX=2
#        REPO_FORMAT=2 (base-backup's repository format, docs/design/format2.md; 1 = one object per chunk)
#        RESTORE_PARALLEL="4 2"  BB_LEVEL=1 (repository compression_level)  PGBR_COMPRESS_LEVEL (default 3)
#        S3_SERVER=moto|s3s|s3s-fs  TIMEOUT=900 (s per recovery check)  KEEP=1
#        PRIME=1 (before each timed restore, write and remove as many bytes as it writes: see prime_memory)
#        FLOOR=1 (the floor cases; 0 skips them)
#        PGBB=1 (the pg_basebackup case; 0 skips it)  PGBB_COMPRESS=client-zstd (pg_basebackup --compress)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SCALE=${SCALE:-100}
RUNS=${RUNS:-3}
S3=${S3:-1}
CHANGE_PCT=${CHANGE_PCT:-3}
RANDOM_PCT=${RANDOM_PCT:-5}
export REPO_FORMAT=${REPO_FORMAT:-2}
BB_PARALLEL=${BB_PARALLEL:-2}
CHUNK_KIB=${CHUNK_KIB:-1024}
PGBR_PROCESS_MAX=${PGBR_PROCESS_MAX:-2}
RESTORE_PARALLEL=${RESTORE_PARALLEL:-"4 2"}
BB_LEVEL=${BB_LEVEL:-1}
TIMEOUT=${TIMEOUT:-900}
PGBB=${PGBB:-1}
FLOOR=${FLOOR:-1}
PGBB_COMPRESS=${PGBB_COMPRESS:-client-zstd}

bench_start base_backup
[ -x "$BASE_BACKUP" ] && [ -x "$PITR_RESTORE" ] || die "base-backup / pitr-restore were not built"
cp "$BENCH_DIR/write_floor.py" "$WORK/bin/"

PORT=$(free_port)
RPORT=   # chosen for each restored cluster, just before it starts (verify_restore)
SRC=$WORK/src
DEST=$WORK/restore
RESULTS=$WORK/results.tsv
: > "$RESULTS"
mkdir -p "$WORK/spools" "$WORK/out"
[ "$S3" = 1 ] && s3_with_peer_buckets
chown -R postgres:postgres "$WORK"

# ---------------------------------------------------------------------------------------------------------------
# source cluster: pgbench -i, archiving nowhere
pgbench_source "$SRC" "$PORT" "$SCALE"
ROWS=$((SCALE * 100000))
CHANGED=$((ROWS * CHANGE_PCT / 100))
DBSIZE=$(sql "$PORT" "select pg_database_size('postgres')")
DATADIR_BYTES=$(du -sb "$SRC" | cut -f1)
log "database: $((DBSIZE / 1048576)) MiB (data directory $((DATADIR_BYTES / 1048576)) MiB)"

# one small value to write so that pg_switch_wal always has something to switch
sql "$PORT" "create table bench_tick(t timestamptz)" >/dev/null

# record CASE RUN SECS CPU RSS BYTES OBJECTS DATA_OK RECOVERY_S S3_SERVER_CPU
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RESULTS"; }

# usage KIND WHERE: "objects bytes" of the backup part of a repository (WAL excluded)
usage() {
    case "$1" in
        bb-file) files_usage "$2/data" "$2/packs" "$2/maps" "$2/index" "$2/backups" ;;
        pgbr-posix) files_usage "$2/backup" ;;
        bb-s3) s3_prefix_usage bbs3 "$2/" "$2/wal/" ;;
        pgbr-s3) s3_prefix_usage pgbr "$2/" "$2/archive/" ;;
        pgbb-file) files_usage "$2" ;;
    esac
}

# verify_restore CASE: start the restored cluster (start_restored), wait for the end of recovery (promotion), compare
# pgbench_accounts with $EXPECTED; sets V_OK and V_SECS; stops it and removes $DEST
verify_restore() {
    local tag=$1 got
    V_OK="NO (did not start)"
    start_restored "$DEST"
    if [ "$V_SECS" != failed ]; then
        got=$(psql -X -A -t -q -h "$WORK" -p "$RPORT" -U postgres -d postgres \
            -c "select count(*) || ' accounts, sum ' || sum(abalance) from pgbench_accounts" 2>&1 || true)
        if [ "$got" = "$EXPECTED" ]; then V_OK=yes; else V_OK="NO ($got)"; fi
    fi
    cp "$DEST.log" "$WORK/out/$tag.pglog" 2>/dev/null || true
    pg_stop "$DEST" immediate
    # wal-fetch's prefetch worker ends by itself after a short idle time
    for _ in $(seq 1 100); do pgrep -f "$WORK/restore-conf" >/dev/null || break; sleep 0.2; done
    rm -rf "$DEST"
}

new_dest() {
    rm -rf "$DEST"
    mkdir -m 700 "$DEST"
    chown postgres:postgres "$DEST"
}

# ---------------------------------------------------------------------------------------------------------------
# legs
BB_CONF=
PGBR_CONF=
# setup_bb KIND(file|s3) RUN: fresh repository + config; archive_command = wal-push into it
setup_bb() {
    local kind=$1 run=$2 url
    if [ "$kind" = file ]; then url="file://$WORK/bb-repo-$run"; else url="s3://bbs3/run$run"; fi
    BB_CONF=$WORK/bb-$kind-$run.toml
    WALPUSH_LEVEL=$BB_LEVEL walpush_conf "$BB_CONF" "$url" "$WORK/spools/bb-$kind-$run" push_concurrency=2 \
        "[postgres]" "host = \"$WORK\"" "port = $PORT" 'user = "postgres"' \
        "[backup]" "parallel = $BB_PARALLEL" "chunk_size_kib = $CHUNK_KIB" "archive_timeout_seconds = 600"
    local p
    for p in $RESTORE_PARALLEL; do
        mkdir -p "$WORK/restore-conf"
        WALPUSH_LEVEL=$BB_LEVEL walpush_conf "$WORK/restore-conf/bb-$kind-$run-p$p.toml" "$url" \
            "$WORK/spools/restore-bb-$kind-$run-p$p" push_concurrency=2 "[restore]" "parallel = $p"
    done
    chown -R postgres:postgres "$WORK/restore-conf"
    set_archive "$WAL_PUSH --config $BB_CONF %p"
}
# setup_pgbr KIND(posix|s3) RUN: fresh repository (stanza-create, check); archive_command = pgbackrest archive-push
setup_pgbr() {
    local kind=$1 run=$2 dir=$WORK/pgbr-$1-$2 repo
    mkdir -p "$dir"
    if [ "$kind" = posix ]; then repo=$WORK/pgbr-repo-$run; else repo=/run$run; fi
    PGBR_CONF=$dir/pgbackrest.conf
    pgbr_conf "$PGBR_CONF" "$kind" "$repo" "$SRC" "$PORT" "process-max=$PGBR_PROCESS_MAX" "archive-timeout=600"
    chown -R postgres:postgres "$dir"
    as_pg pgbackrest --config="$PGBR_CONF" --stanza=bench stanza-create >"$dir/stanza.log" 2>&1 \
        || { cat "$dir/stanza.log"; die "pgbackrest stanza-create failed"; }
    set_archive "pgbackrest --config=$PGBR_CONF --stanza=bench archive-push %p"
    as_pg pgbackrest --config="$PGBR_CONF" --stanza=bench check >"$dir/check.log" 2>&1 \
        || { cat "$dir/check.log"; die "pgbackrest check failed"; }
}
declare -A BB_CONF_OF PGBR_CONF_OF BB_ID_OF
# backup TOOL KIND TYPE RUN: one timed backup; for incr, the bytes added since the previous backup
backup() {
    local tool=$1 kind=$2 type=$3 run=$4 case where before after objs bytes
    case=$type-$tool-$kind
    # full2 and rand are a full and an incremental taken in the same repository as the ones before them
    local arg=$type
    case "$type" in full2) arg=full ;; rand) arg=incr ;; esac
    if [ "$tool" = bb ]; then
        if [ "$type" = full ]; then setup_bb "$kind" "$run"; BB_CONF_OF[$kind]=$BB_CONF; fi
        BB_CONF=${BB_CONF_OF[$kind]}
        set_archive "$WAL_PUSH --config $BB_CONF %p"
        if [ "$kind" = file ]; then where=$WORK/bb-repo-$run; else where=run$run; fi
    else
        if [ "$type" = full ]; then setup_pgbr "$kind" "$run"; PGBR_CONF_OF[$kind]=$PGBR_CONF; fi
        PGBR_CONF=${PGBR_CONF_OF[$kind]}
        set_archive "pgbackrest --config=$PGBR_CONF --stanza=bench archive-push %p"
        if [ "$kind" = posix ]; then where=$WORK/pgbr-repo-$run; else where=run$run; fi
    fi
    before=$(usage "$tool-$kind" "$where")
    log "run $run: $case"
    local ok=0
    if [ "$tool" = bb ]; then
        local t=$type
        t=$arg
        [ "$t" = incr ] && t=incremental
        timed "$case-$run" "$BASE_BACKUP" --config "$BB_CONF" --type "$t" --fast --json && ok=1
        [ "$ok" = 1 ] && BB_ID_OF[$kind]=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' \
            < "$WORK/out/$case-$run.out")
    else
        timed "$case-$run" pgbackrest --config="$PGBR_CONF" --stanza=bench --type="$arg" --start-fast backup && ok=1
    fi
    if [ "$ok" != 1 ]; then
        record "$case" "$run" failed "$T_CPU" "$T_RSS" - - - - -
        return 0
    fi
    after=$(usage "$tool-$kind" "$where")
    objs=$((${after% *} - ${before% *}))
    bytes=$((${after#* } - ${before#* }))
    record "$case" "$run" "$T_SECS" "$T_CPU" "$T_RSS" "$bytes" "$objs" - - "$(srv_of "$kind")"
    local extra=
    [ "$tool" = bb ] && extra=$(python3 - "$WORK/out/$case-$run.out" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
m = lambda k: d[k] >> 20
print(f"base-backup says: {d['duration_ms']} ms, {m('bytes')} MiB read, written {m('bytes_written')} MiB,"
      f" added {d.get('bytes_new', 0) / 1048576:.2f} MiB (rewritten {m('bytes_rewritten') if 'bytes_rewritten' in d else '?'} MiB),"
      f" reused {m('bytes_reused')} MiB, {d['objects_written']} objects")
EOF
)
    log "  $T_SECS s, CPU $T_CPU s, RSS $T_RSS MiB, +$((bytes / 1048576)) MiB in $objs objects, S3 server CPU $(srv_of "$kind") s. $extra"
}
# prime_memory: write and remove as many bytes as a restore writes (untimed), so that every timed restore finds the
# same free memory. On this VM, memory the kernel freed a while ago goes back to the host (virtio-balloon free page
# reporting) and the next writer to touch it pays for host page faults: without this, whichever restore came first
# in a run was ~0.8 s slower (2026-12-01: base-backup 2.11/1.21/2.13 s and pgBackRest 2.01/2.45/1.91 s, the fast
# one always second).
prime_memory() {
    dd if=/dev/zero of="$WORK/prime" bs=1M count=$((DATADIR_BYTES / 1048576)) conv=fsync status=none
    rm -f "$WORK/prime"
}
# restore TOOL KIND PARALLEL RUN: one timed restore of the newest backup into an empty directory, then the check
restore() {
    local tool=$1 kind=$2 p=$3 run=$4 case=restore-$1-$2-p$3 ok=0 bytes
    new_dest
    [ "${PRIME:-1}" = 1 ] && prime_memory
    log "run $run: $case"
    if [ "$tool" = bb ]; then
        timed "$case-$run" "$PITR_RESTORE" --config "$WORK/restore-conf/bb-$kind-$run-p$p.toml" \
            --destination "$DEST" --backup-id "${BB_ID_OF[$kind]}" --archive-mode off --json && ok=1
    else
        timed "$case-$run" pgbackrest --config="${PGBR_CONF_OF[$kind]}" --stanza=bench --pg1-path="$DEST" \
            --process-max="$p" --archive-mode=off restore && ok=1
    fi
    if [ "$ok" != 1 ]; then
        record "$case" "$run" failed "$T_CPU" "$T_RSS" - - "NO (restore failed)" - -
        rm -rf "$DEST"
        return 0
    fi
    bytes=$(du -sb "$DEST" | cut -f1)
    # the floor cases write the same files (regular files only: the restored directory, before it is started)
    [ -s "$WORK/floor-sizes" ] || (cd "$DEST" && find . -type f -printf '%s %P\n') > "$WORK/floor-sizes"
    verify_restore "$case-$run"
    record "$case" "$run" "$T_SECS" "$T_CPU" "$T_RSS" "$bytes" - "$V_OK" "$V_SECS" "$(srv_of "$kind")"
    log "  $T_SECS s, CPU $T_CPU s, RSS $T_RSS MiB, $((bytes / 1048576)) MiB written, S3 server CPU $(srv_of "$kind") s;" \
        "restored cluster promoted after $V_SECS s, data matches: $V_OK"
}
# floor MODE(buffered|direct) RUN: one timed write of the restored files' bytes from memory (bench/write_floor.py)
floor() {
    local mode=$1 run=$2 case=floor-$1-p2
    [ -s "$WORK/floor-sizes" ] || return 0
    new_dest
    [ "${PRIME:-1}" = 1 ] && prime_memory
    log "run $run: $case"
    if timed "$case-$run" /usr/bin/python3 "$WORK/bin/write_floor.py" "$WORK/floor-sizes" "$DEST" 2 "$mode"; then
        record "$case" "$run" "$T_SECS" "$T_CPU" "$T_RSS" "$(du -sb "$DEST" | cut -f1)" - - - -
        log "  $T_SECS s, CPU $T_CPU s: $(cat "$WORK/out/$case-$run.out")"
    else
        record "$case" "$run" failed "$T_CPU" "$T_RSS" - - - - -
    fi
    rm -rf "$DEST"
}
srv_of() { if [ "$1" = s3 ]; then echo "$T_SRV"; else echo -; fi; }
# pgbb_full RUN: pg_basebackup -Ft --compress=$PGBB_COMPRESS -X none -c fast into an empty directory (a tar of the
# data directory, compressed on the client, and backup_manifest); no WAL: archive_command is /bin/true meanwhile
pgbb_full() {
    local run=$1 case=full-pgbb-file dir=$WORK/pgbb-$1 after c0 server cpu
    set_archive /bin/true
    rm -rf "$dir"
    log "run $run: $case"
    c0=$(cg_usage)
    if ! timed "$case-$run" "$PG_BIN/pg_basebackup" -h "$WORK" -p "$PORT" -U postgres -Ft --compress="$PGBB_COMPRESS" \
        -X none -c fast -D "$dir"; then
        record "$case" "$run" failed "$T_CPU" "$T_RSS" - - - - -
        return 0
    fi
    # the server's share (the walsender reading and sending the files, the fast checkpoint): the source cluster's
    # cpuacct cgroup (lib.sh cg_init; 0 without one), added to the client's CPU
    server=$(awk -v a="$c0" -v b="$(cg_usage)" 'BEGIN {printf "%.1f", (b - a) / 1e9}')
    cpu=$(awk -v a="$T_CPU" -v b="$server" 'BEGIN {printf "%.1f", a + b}')
    after=$(usage pgbb-file "$dir")
    record "$case" "$run" "$T_SECS" "$cpu" "$T_RSS" "${after#* }" "${after% *}" - - -
    log "  $T_SECS s, CPU $cpu s ($T_CPU s client + $server s server), RSS $T_RSS MiB," \
        "$((${after#* } / 1048576)) MiB in ${after% *} files"
    rm -rf "$dir"
}

for run in $(seq 1 "$RUNS"); do
    declare -A BB_CONF_OF=() PGBR_CONF_OF=() BB_ID_OF=()
    for t in $(in_order "$run" bb pgbr); do
        if [ "$t" = bb ]; then backup bb file full "$run"; else backup pgbr posix full "$run"; fi
    done
    [ "$PGBB" = 1 ] && pgbb_full "$run"
    for t in $(in_order "$run" bb pgbr); do
        if [ "$t" = bb ]; then backup bb file full2 "$run"; else backup pgbr posix full2 "$run"; fi
    done
    log "run $run: update $CHANGED rows (aid <= $CHANGED), checkpoint"
    sql "$PORT" "update pgbench_accounts set abalance = abalance + 1 where aid <= $CHANGED" >/dev/null
    sql "$PORT" "checkpoint" >/dev/null
    EXPECTED=$(sql "$PORT" "select count(*) || ' accounts, sum ' || sum(abalance) from pgbench_accounts")
    for t in $(in_order "$run" bb pgbr); do
        if [ "$t" = bb ]; then backup bb file incr "$run"; else backup pgbr posix incr "$run"; fi
    done
    log "run $run: update the first row of $RANDOM_PCT % of pgbench_accounts' pages chosen at random, checkpoint"
    sql "$PORT" "update pgbench_accounts set abalance = abalance + 1 where ctid = any(array(select ('(' || p || ',1)')::tid
        from (select p from generate_series(0, (pg_relation_size('pgbench_accounts') / 8192)::int - 1) p
        order by random() limit (pg_relation_size('pgbench_accounts') / 8192 * $RANDOM_PCT / 100)::int) s))" >/dev/null
    sql "$PORT" "checkpoint" >/dev/null
    EXPECTED=$(sql "$PORT" "select count(*) || ' accounts, sum ' || sum(abalance) from pgbench_accounts")
    for t in $(in_order "$run" bb pgbr); do
        if [ "$t" = bb ]; then backup bb file rand "$run"; else backup pgbr posix rand "$run"; fi
    done
    for t in $(in_order "$run" bb pgbr); do
        if [ "$t" = bb ]; then
            for p in $RESTORE_PARALLEL; do
                if [ -n "${BB_ID_OF[file]:-}" ]; then restore bb file "$p" "$run"; fi
            done
        else
            restore pgbr posix "$PGBR_PROCESS_MAX" "$run"
        fi
    done
    if [ "$FLOOR" = 1 ]; then
        for m in $(in_order "$run" buffered direct); do floor "$m" "$run"; done
    fi
    if [ "$S3" = 1 ]; then
        for t in $(in_order "$run" bb pgbr); do
            if [ "$t" = bb ]; then backup bb s3 full "$run"; else backup pgbr s3 full "$run"; fi
        done
        for t in $(in_order "$run" bb pgbr); do
            if [ "$t" = bb ]; then
                for p in $RESTORE_PARALLEL; do
                    if [ -n "${BB_ID_OF[s3]:-}" ]; then restore bb s3 "$p" "$run"; fi
                done
            else
                restore pgbr s3 "$PGBR_PROCESS_MAX" "$run"
            fi
        done
    fi
    # the next run's repositories are fresh: free the disk; VACUUM so the table does not grow from run to run
    rm -rf "$WORK/bb-repo-$run" "$WORK/pgbr-repo-$run"
    sql "$PORT" "vacuum pgbench_accounts" >/dev/null
done
s3_stop

# ---------------------------------------------------------------------------------------------------------------
CASES="full-bb-file full-pgbr-posix"
[ "$PGBB" = 1 ] && CASES="$CASES full-pgbb-file"
CASES="$CASES full2-bb-file full2-pgbr-posix incr-bb-file incr-pgbr-posix rand-bb-file rand-pgbr-posix"
for p in $RESTORE_PARALLEL; do CASES="$CASES restore-bb-file-p$p"; done
CASES="$CASES restore-pgbr-posix-p$PGBR_PROCESS_MAX"
[ "$FLOOR" = 1 ] && CASES="$CASES floor-buffered-p2 floor-direct-p2"
if [ "$S3" = 1 ]; then
    CASES="$CASES full-bb-s3 full-pgbr-s3"
    for p in $RESTORE_PARALLEL; do CASES="$CASES restore-bb-s3-p$p"; done
    CASES="$CASES restore-pgbr-s3-p$PGBR_PROCESS_MAX"
fi
name_of() {
    local c=$1 what tool where
    what=${c%%-*}
    case "$c" in
        *-bb-*) [ "$what" = restore ] && tool="pitr-restore" || tool="base-backup" ;;
        *-pgbb-*) tool="pg_basebackup" ;;
        floor-*) tool="write only" ;;
        *) tool="pgbackrest" ;;
    esac
    case "$c" in
        *-pgbb-*) where="-Ft" ;;
        floor-*) where=$(cut -d- -f2 <<<"$c") ;;
        *-file*) where="file://" ;;
        *-posix*) where="posix" ;;
        *) where="S3" ;;
    esac
    case "$c" in *-p[0-9]*) where="$where, ${c##*-}" ;; esac
    printf '%-8s %s %s' "$what" "$tool" "$where"
}
{
    echo
    echo "### base_backup: $(date -u +%FT%TZ), $(nproc) cores, pgbench scale $SCALE" \
        "(database $((DBSIZE / 1048576)) MiB, data directory $((DATADIR_BYTES / 1048576)) MiB), $RUNS run(s)," \
        "binaries from $ROOT ($BIN_REV)"
    echo "base-backup: [backup] parallel $BB_PARALLEL, chunk_size_kib $CHUNK_KIB, zstd level $BB_LEVEL, --fast;" \
        "pgBackRest $(pgbackrest version | awk '{print $2}'): process-max $PGBR_PROCESS_MAX, zst level" \
        "${PGBR_COMPRESS_LEVEL:-default 3}, --start-fast; S3: $([ "$S3" = 1 ] && echo "$S3_SERVER on loopback" || echo skipped)"
    [ "$PGBB" = 1 ] && echo "pg_basebackup $("$PG_BIN/pg_basebackup" --version | awk '{print $3}'): -Ft --compress=$PGBB_COMPRESS -X none -c fast" \
        "(CPU s: the client's plus $([ -n "$CG" ] && echo "the source cluster's during the command (walsender, checkpoint)" \
        || echo "nothing: no cpuacct cgroup, the server's walsender is not counted"))"
    echo "incremental change: update pgbench_accounts set abalance = abalance + 1 where aid <= $CHANGED" \
        "($CHANGE_PCT % of $ROWS rows, clustered), then CHECKPOINT; rand: then the first row of $RANDOM_PCT % of" \
        "pgbench_accounts' pages chosen at random, then CHECKPOINT; base-backup repository format $REPO_FORMAT"
    printf '\n%-34s %9s %22s %7s %8s %9s %8s %9s %9s %8s\n' case "median s" "runs s" "CPU s" "RSS MiB" "MiB" objects \
        "data ok" "recov. s" "S3 CPU"
    printf -- '-%.0s' $(seq 1 134); echo
    for c in $CASES; do
        col() { awk -F'\t' -v t="$c" -v k="$1" '$1 == t && $3 != "failed" && $k != "-" {print $k}' "$RESULTS"; }
        s=$(col 3 | median)
        runs=$(awk -F'\t' -v t="$c" '$1 == t {print $3}' "$RESULTS" | paste -sd/)
        cpu=$(col 4 | median)
        rss=$(col 5 | median)
        mib=$(col 6 | median | awk '{if ($1 == "nan") print "-"; else printf "%.1f", $1 / 1048576}')
        objs=$(col 7 | median)
        srv=$(col 10 | median)
        ok=$(awk -F'\t' -v t="$c" '$1 == t && $8 != "-" {n++; if ($8 == "yes") y++} END {print (n ? y + 0 "/" n : "-")}' "$RESULTS")
        rec=$(col 9 | median)
        fmt() { awk -v f="$1" '{if ($1 == "nan") print "-"; else printf f "\n", $1}'; }
        s=$(fmt %.2f <<<"$s")
        cpu=$(fmt %.1f <<<"$cpu")
        rss=$(fmt %.0f <<<"$rss")
        objs=$(fmt %.0f <<<"$objs")
        rec=$(fmt %.1f <<<"$rec")
        srv=$(fmt %.1f <<<"$srv")
        printf '%-34s %9s %22s %7s %8s %9s %8s %9s %9s %8s\n' "$(name_of "$c")" "$s" "$runs" "$cpu" "$rss" "$mib" \
            "$objs" "$ok" "$rec" "$srv"
    done
    echo
    echo "stored by each backup, as a share of the full's (median bytes added to the repository, WAL excluded):"
    for tool in bb-file pgbr-posix; do
        mib() { awk -F'\t' -v t="$1-$tool" '$1 == t && $3 != "failed" && $6 != "-" {print $6}' "$RESULTS" | median; }
        f=$(mib full)
        awk -v tool="$tool" -v f="$f" -v f2="$(mib full2)" -v i="$(mib incr)" -v r="$(mib rand)" 'BEGIN {
            if (f == "nan" || f == 0) { print "  " tool ": no full backup"; exit }
            printf "  %-11s full %.1f MiB; full right after it %.2f%%; incr (clustered) %.2f%%; rand (random pages) %.2f%%\n",
                tool, f / 1048576, 100 * f2 / f, 100 * i / f, 100 * r / f }'
    done
    if [ "$PGBB" = 1 ]; then
        awk -F'\t' '$1 == "full-pgbb-file" && $3 != "failed" {print $6}' "$RESULTS" | median \
            | awk '{if ($1 != "nan") printf "  pg_basebackup full (-Ft, %s, no WAL): %.1f MiB\n", "'"$PGBB_COMPRESS"'", $1 / 1048576}'
    fi
    echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "(median s: wall time of the command (full/incr include the CHECKPOINT and waiting for the stop segment in"
    echo " the tool's own archive); CPU s: user + sys of the command and its children (/usr/bin/time -v; pgBackRest's"
    echo " local processes included, the archiver's wal-push / archive-push not); RSS MiB: peak RSS of its largest"
    echo " process; MiB / objects: for backups the repository bytes and files added (WAL excluded), for restores the"
    echo " bytes of the restored data directory; data ok: the restored cluster, started, promoted and has the source's"
    echo " count(*) and sum(abalance) of pgbench_accounts; recov. s: from pg_ctl start to promotion, untimed check;"
    echo " S3 CPU: CPU seconds the S3 server ($S3_SERVER) used during the command, near the wall time = it was the"
    echo " bottleneck; runs s: every run, 'failed' when the command failed (its stderr is quoted below))"
    echo "total time: $(($(date +%s) - T0)) s"
} | tee "$WORK/report.txt"
# what base-backup / pitr-restore said about themselves, and any failure
{
    for f in "$WORK"/out/*-bb-*.err; do
        [ -s "$f" ] || continue
        echo "--- $(basename "$f" .err): $(grep -E 'complete|restored backup|error|hint' "$f" | tail -2 | tr '\n' ' ')"
    done
    for f in "$WORK"/out/*-pgbb-*.err; do
        [ -s "$f" ] && echo "--- $(basename "$f" .err) stderr: $(tail -3 "$f" | tr '\n' ' ')"
    done
    for f in "$WORK"/out/*-pgbr-*.err; do
        [ -s "$f" ] && echo "--- $(basename "$f" .err) stderr: $(tail -3 "$f" | tr '\n' ' ')"
    done
    for f in "$WORK"/out/*.pglog; do
        if grep -qiE 'error|fatal|panic' "$f"; then
            echo "--- $(basename "$f" .pglog): server-log lines matching error|fatal|panic"
            grep -iE 'error|fatal|panic' "$f" | sed -E 's/^[0-9-]+ [0-9:.]+ [A-Z]+ \[[0-9]+\] //; s/[0-9A-F]{24}/<SEG>/g' \
                | sort | uniq -c | sort -rn | head -5
        fi
    done
    true
} | tee -a "$WORK/report.txt"
mkdir -p "$BENCH_DIR/results" && cp "$WORK/report.txt" "$BENCH_DIR/results/base_backup-$(date +%Y%m%d-%H%M%S).txt"
