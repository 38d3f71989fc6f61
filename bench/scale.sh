#!/usr/bin/env bash
# Scale: peak memory and per-backup metadata of base-backup / pitr-restore on large clusters (issue 10, "Bounded
# memory and metadata"). Repository format 2, file:// (and S3 on loopback with S3=1). Two cases:
#   large   pgbench -i -s LARGE_SCALE plus one table grown sparsely, with the server stopped, to LARGE_GIB GiB
#           (segment files of exactly 1 GiB, `truncate -s`; all-zero pages are valid new pages to PostgreSQL)
#   small   SMALL_TABLES tables with a primary key and one row each: two files each under base/ (>= 100,000 files
#           with the default 50,000 tables)
# Each case: a full backup; then a tiny change (a few rows) + CHECKPOINT; then an incremental; then pitr-restore of
# the incremental into an empty directory, the restored cluster started until it promotes, and a count/sum that
# must equal the source's. Per step: wall s, CPU s, peak RSS (/usr/bin/time -v), objects and bytes the repository
# grew by (WAL excluded), split into metadata (backups/ manifests + maps/ block-map nodes + index/ pack indexes)
# and packs/. The incremental's metadata is the "barely changed" figure.
#
# Usage: bash bench/scale.sh     (as root)
# Env:   CASES="large small"  LARGE_GIB=20  LARGE_SCALE=20  SMALL_TABLES=50000  S3=0  S3_SERVER=s3s|moto
#        BINS=DIR (base-backup, pitr-restore, wal-fetch from DIR)  BB_PARALLEL=2  RESTORE_PARALLEL=2  TIMEOUT=900 (s per recovery check)  KEEP=1  WRAP (a profiler command)
#        RESTORE_CASES="$CASES" (the cases whose incremental is restored; a restore writes the data directory's
#        whole size unless pitr-restore leaves all-zero blocks as holes: mind the disk)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

CASES=${CASES:-"large small"}
LARGE_GIB=${LARGE_GIB:-20}
LARGE_SCALE=${LARGE_SCALE:-20}
SMALL_TABLES=${SMALL_TABLES:-50000}
S3=${S3:-0}
export REPO_FORMAT=2
BB_PARALLEL=${BB_PARALLEL:-2}
RESTORE_PARALLEL=${RESTORE_PARALLEL:-2}
TIMEOUT=${TIMEOUT:-900}
WRAP=${WRAP:-}   # e.g. "heaptrack -o /tmp/hp": a profiler in front of base-backup and pitr-restore (RSS then includes it)
RESTORE_CASES=${RESTORE_CASES:-$CASES}

bench_start scale
# BINS=DIR: time the base-backup / pitr-restore / wal-fetch in DIR instead of the worktree's (e.g. a build from
# before a change); wal-push stays the worktree's
if [ -n "${BINS:-}" ]; then
    mkdir -p "$WORK/bin-alt"
    cp "$BINS/base-backup" "$BINS/pitr-restore" "$BINS/wal-fetch" "$WORK/bin-alt/"
    BASE_BACKUP=$WORK/bin-alt/base-backup
    PITR_RESTORE=$WORK/bin-alt/pitr-restore
    BIN_REV="binaries from $BINS"
fi
[ -x "$BASE_BACKUP" ] && [ -x "$PITR_RESTORE" ] || die "base-backup / pitr-restore were not built"
RESULTS=$WORK/results.tsv
: > "$RESULTS"
mkdir -p "$WORK/spools" "$WORK/out" "$WORK/conf"
KINDS="file"
if [ "$S3" = 1 ]; then
    KINDS="file s3"
    s3_start
    s3_bucket bbs3
fi
chown -R postgres:postgres "$WORK"

# record CASE STEP KIND SECS CPU RSS OBJS BYTES META_BYTES MANIFEST_BYTES NODES NODE_BYTES INDEXES INDEX_BYTES PACKS
#        PACK_BYTES [CHECK]
record() { local IFS=$'\t'; echo "$*" >> "$RESULTS"; }

# usage KIND WHERE DIR: "objects bytes" under DIR/ (backups, maps, index or packs) of the repository
usage() {
    if [ "$1" = file ]; then files_usage "$2/$3"; else s3_prefix_usage bbs3 "$2/$3/" "$2/wal/"; fi
}
# usage_all KIND WHERE: "objects bytes" for backups maps index packs, on one line
usage_all() {
    local d
    for d in backups maps index packs; do printf '%s ' "$(usage "$1" "$2" "$d")"; done
}

# check_query CASE: what must be equal in the source and the restored cluster
check_query() {
    case "$1" in
        large) echo "select (select count(*) || ' accounts, sum ' || sum(abalance) from pgbench_accounts)
                    || '; sparse rows ' || (select count(*) || ' sum ' || sum(id) from sparse_big)
                    || ', ' || pg_relation_size('sparse_big') || ' bytes'" ;;
        small) echo "small" ;;
    esac
}
# run_check CASE PORT: the check's result on the cluster at PORT
run_check() {
    local q n=0 s=0 b r
    q=$(check_query "$1")
    if [ "$q" != small ]; then
        psql -X -A -t -q -h "$WORK" -p "$2" -U postgres -d postgres -c "$q" 2>&1
        return
    fi
    for ((b = 0; b < SMALL_TABLES; b += 1000)); do
        r=$(psql -X -A -t -q -h "$WORK" -p "$2" -U postgres -d postgres -c "select scale_check($b, $((b + 999)))" 2>&1) \
            || { echo "$r"; return; }
        n=$((n + ${r% *}))
        s=$((s + ${r#* }))
    done
    echo "$n tables, sum $s"
}

# verify_restore CASE DEST: start the restored cluster, wait for promotion, compare the check with $EXPECTED;
# sets V_OK, V_SECS; stops the cluster
verify_restore() {
    local c=$1 dest=$2 got
    V_OK="NO (did not start)"
    start_restored "$dest"
    if [ "$V_SECS" != failed ]; then
        got=$(run_check "$c" "$RPORT" || true)
        if [ "$got" = "$EXPECTED" ]; then V_OK=yes; else V_OK="NO ($got)"; fi
    fi
    cp "$dest.log" "$WORK/out/restore-$c.pglog" 2>/dev/null || true
    pg_stop "$dest" immediate
}

# ---------------------------------------------------------------------------------------------------------------
# the source clusters
make_large() {
    local src=$1 port=$2 rel seg last i
    pgbench_source "$src" "$port" "$LARGE_SCALE"
    sql "$port" "create table sparse_big(id int); insert into sparse_big select generate_series(1, 100); checkpoint" >/dev/null
    rel=$src/$(sql "$port" "select pg_relation_filepath('sparse_big')")
    log "large: growing $rel sparsely to $LARGE_GIB GiB (server stopped)"
    pg_stop "$src"
    # Segments 0 .. N-2 exactly 1 GiB (RELSEG_SIZE blocks), the last one 1 GiB less 8 KiB: all-zero pages are new
    # pages to PostgreSQL (PageIsNew), which scans accept. So that no two block-map nodes (128 MiB each) are equal,
    # as in a real table, every 128 MiB of every segment gets a copy of the table's first page (100 rows) at a
    # position that depends on the segment.
    last=$((LARGE_GIB - 1))
    local n
    for i in $(seq 0 "$last"); do
        seg=$rel
        [ "$i" -gt 0 ] && seg=$rel.$i
        if [ "$i" -lt "$last" ]; then truncate -s 1G "$seg"; else truncate -s $((1073741824 - 8192)) "$seg"; fi
        for n in 0 1 2 3 4 5 6 7; do
            dd if="$rel" of="$seg" bs=8192 count=1 seek=$((n * 16384 + i + 1)) conv=notrunc status=none
        done
        chown postgres:postgres "$seg"
    done
    pg_start "$src"
}

make_small() {
    local src=$1 port=$2 b
    log "small: source cluster (port $port), $SMALL_TABLES tables with a primary key and one row each"
    pg_new "$src" "$port" "archive_command = '/bin/true'" "autovacuum = off" "checkpoint_timeout = '30min'" \
        "max_locks_per_transaction = 512"
    pg_start "$src"
    # one DO block (one transaction) per 1000 tables
    for ((b = 0; b < SMALL_TABLES; b += 1000)); do
        sql "$port" "do \$\$ begin for i in $b .. least($b + 999, $SMALL_TABLES - 1) loop
            execute format('create table s_%s (id int primary key, v int); insert into s_%s values (1, %s)', i, i, i);
            end loop; end \$\$" >/dev/null
        [ $((b % 10000)) = 0 ] && log "  $b tables"
    done
    # the check reads every table: 1000 per statement (one transaction each holds a lock per table)
    sql "$port" "create function scale_check(lo int, hi int) returns text language plpgsql as \$\$
        declare n bigint := 0; s bigint := 0; v bigint; r record;
        begin
            for r in select relname from pg_class where relkind = 'r' and relname ~ '^s_[0-9]+\$'
                     and substr(relname, 3)::int between lo and hi loop
                execute format('select sum(v) from %I', r.relname) into v;
                n := n + 1; s := s + v;
            end loop;
            return n || ' ' || s;
        end \$\$" >/dev/null
    sql "$port" "checkpoint" >/dev/null
}

# tiny_change CASE PORT: a few rows, then CHECKPOINT
tiny_change() {
    case "$1" in
        large) sql "$2" "update pgbench_accounts set abalance = abalance + 7 where aid in (1, 500000, $((LARGE_SCALE * 100000)));
                         insert into sparse_big values (1000)" >/dev/null ;;
        small) sql "$2" "update s_1 set v = v + 7; update s_$((SMALL_TABLES / 2)) set v = v + 7;
                         update s_$((SMALL_TABLES - 1)) set v = v + 7" >/dev/null ;;
    esac
    sql "$2" "checkpoint" >/dev/null
}

# ---------------------------------------------------------------------------------------------------------------
# step_backup CASE KIND TYPE(full|incremental) WHERE CONF: one timed backup and what the repository grew by
step_backup() {
    local c=$1 kind=$2 type=$3 where=$4 conf=$5 tag=$1-$2-$3 u0 u1 d
    read -r -a u0 <<<"$(usage_all "$kind" "$where")"
    log "$c, $kind: base-backup --type $type"
    # shellcheck disable=SC2086
    if ! timed "$tag" $WRAP "$BASE_BACKUP" --config "$conf" --type "$type" --fast --json; then
        record "$c" "$type" "$kind" failed "$T_CPU" "$T_RSS" - - - - - - - - - -
        return 1
    fi
    LAST_ID=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' < "$WORK/out/$tag.out")
    read -r -a u1 <<<"$(usage_all "$kind" "$where")"
    # growth per directory: manifest objects/bytes, maps, index, packs
    for d in 0 1 2 3 4 5 6 7; do g[d]=$((u1[d] - u0[d])); done
    local objs=$((g[0] + g[2] + g[4] + g[6])) bytes=$((g[1] + g[3] + g[5] + g[7]))
    local meta=$((g[1] + g[3] + g[5]))
    record "$c" "$type" "$kind" "$T_SECS" "$T_CPU" "$T_RSS" "$objs" "$bytes" "$meta" "${g[1]}" "${g[2]}" "${g[3]}" \
        "${g[4]}" "${g[5]}" "${g[6]}" "${g[7]}"
    log "  $T_SECS s, CPU $T_CPU s, RSS $T_RSS MiB; repository +$objs objects, +$bytes bytes: metadata $meta bytes" \
        "(manifest ${g[1]}, ${g[2]} nodes ${g[3]}, ${g[4]} index ${g[5]}), ${g[6]} packs ${g[7]} bytes"
}
declare -a g

# step_restore CASE KIND CONF: timed pitr-restore of $LAST_ID into an empty directory, then the check
step_restore() {
    local c=$1 kind=$2 conf=$3 dest=$WORK/restore-$1-$2 tag=$1-$2-restore apparent real
    rm -rf "$dest"
    mkdir -m 700 "$dest"
    chown postgres:postgres "$dest"
    log "$c, $kind: pitr-restore of $LAST_ID"
    # shellcheck disable=SC2086
    if ! timed "$tag" $WRAP "$PITR_RESTORE" --config "$conf" --destination "$dest" --backup-id "$LAST_ID" \
        --archive-mode off --json; then
        record "$c" restore "$kind" failed "$T_CPU" "$T_RSS" - - - - - - - - - "NO (restore failed)"
        rm -rf "$dest"
        return 1
    fi
    apparent=$(du -sb --apparent-size "$dest" | cut -f1)
    real=$(du -s --block-size=1 "$dest" | cut -f1)
    local secs=$T_SECS cpu=$T_CPU rss=$T_RSS
    verify_restore "$c" "$dest"
    record "$c" restore "$kind" "$secs" "$cpu" "$rss" - "$apparent" - - - - - - - - \
        "$V_OK ($((real / 1048576)) MiB on disk, promoted after $V_SECS s)"
    log "  $secs s, CPU $cpu s, RSS $rss MiB; restored $((apparent / 1048576)) MiB apparent, $((real / 1048576)) MiB" \
        "on disk; promoted after $V_SECS s; check: $V_OK"
    rm -rf "$dest"
}

declare -A LOADS
for c in $CASES; do
    LOADS[$c]="before: $(cut -d' ' -f1-3 /proc/loadavg)"
    log "case $c: uptime $(uptime)"
    PORT=$(free_port)
    SRC=$WORK/src-$c
    case "$c" in
        large) make_large "$SRC" "$PORT" ;;
        small) make_small "$SRC" "$PORT" ;;
        *) die "CASES: large and/or small" ;;
    esac
    sql "$PORT" "create table bench_tick(t timestamptz)" >/dev/null
    # read everything once (hint bits) and checkpoint, so that the check after the tiny change dirties nothing
    run_check "$c" "$PORT" >/dev/null
    sql "$PORT" "checkpoint" >/dev/null
    files=$(find "$SRC/base" -type f | wc -l)
    apparent=$(du -sb --apparent-size "$SRC" | cut -f1)
    real=$(du -s --block-size=1 "$SRC" | cut -f1)
    echo "$c	$files	$apparent	$real" >> "$WORK/sources.tsv"
    log "case $c: $files files under base/, data directory $((apparent / 1048576)) MiB apparent, $((real / 1048576)) MiB on disk"
    for kind in $KINDS; do
        if [ "$kind" = file ]; then url="file://$WORK/repo-$c"; where=$WORK/repo-$c; else url="s3://bbs3/$c"; where=$c; fi
        conf=$WORK/conf/$c-$kind.toml
        walpush_conf "$conf" "$url" "$WORK/spools/$c-$kind" push_concurrency=2 \
            "[postgres]" "host = \"$WORK\"" "port = $PORT" 'user = "postgres"' \
            "[backup]" "parallel = $BB_PARALLEL" "archive_timeout_seconds = 600" \
            "[restore]" "parallel = $RESTORE_PARALLEL"
        set_archive "$WAL_PUSH --config $conf %p"
        step_backup "$c" "$kind" full "$where" "$conf" || continue
        tiny_change "$c" "$PORT"
        EXPECTED=$(run_check "$c" "$PORT")
        log "  source check: $EXPECTED"
        step_backup "$c" "$kind" incremental "$where" "$conf" || continue
        case " $RESTORE_CASES " in *" $c "*) step_restore "$c" "$kind" "$conf" || true ;; esac
        [ "$kind" = file ] && rm -rf "$where"
    done
    pg_stop "$SRC"
    rm -rf "$SRC"
    LOADS[$c]="${LOADS[$c]}, after: $(cut -d' ' -f1-3 /proc/loadavg)"
done
s3_stop

# ---------------------------------------------------------------------------------------------------------------
{
    echo
    echo "### scale: $(date -u +%FT%TZ), $(nproc) cores, binaries from $ROOT ($BIN_REV), repository format 2," \
        "[backup] parallel $BB_PARALLEL, [restore] parallel $RESTORE_PARALLEL$([ "$S3" = 1 ] && echo ", S3: $S3_SERVER")"
    while IFS=$'\t' read -r c files apparent real; do
        case "$c" in
            large) what="pgbench scale $LARGE_SCALE + sparse_big grown to $LARGE_GIB GiB" ;;
            small) what="$SMALL_TABLES tables with a primary key, one row each" ;;
        esac
        echo "$c: $what; $files files under base/; data directory $((apparent / 1048576)) MiB" \
            "($((real / 1048576)) MiB on disk); load average ${LOADS[$c]}"
    done < "$WORK/sources.tsv"
    printf '\n%-6s %-11s %-4s %7s %6s %7s %8s %12s %10s %9s %6s %10s %5s %8s %5s %12s %s\n' case step kind \
        "wall s" "CPU s" "RSS MiB" "+objects" "+bytes" "metadata" manifest nodes "node B" index "index B" packs \
        "pack B" check
    printf -- '-%.0s' $(seq 1 150); echo
    while IFS=$'\t' read -r c step kind secs cpu rss objs bytes meta man nn nb ni ib np pb chk; do
        printf '%-6s %-11s %-4s %7s %6s %7s %8s %12s %10s %9s %6s %10s %5s %8s %5s %12s %s\n' "$c" "$step" "$kind" \
            "$secs" "$cpu" "$rss" "$objs" "$bytes" "$meta" "$man" "$nn" "$nb" "$ni" "$ib" "$np" "$pb" "${chk:-}"
    done < "$RESULTS"
    echo
    echo "(restore rows: +bytes = the restored data directory's apparent size; check: the restored cluster promoted and"
    echo " its count/sum equals the source's)"
    echo "(per TB, extrapolated linearly from the incremental's metadata: see bench/README.md)"
    echo "total time: $(($(date +%s) - T0)) s"
} | tee "$WORK/report.txt"
for f in "$WORK"/out/*.err; do
    [ -s "$f" ] && echo "--- $(basename "$f" .err): $(grep -E 'complete|restored|error|hint' "$f" | tail -2 | tr '\n' ' ')"
    true
done | tee -a "$WORK/report.txt"
mkdir -p "$BENCH_DIR/results" && cp "$WORK/report.txt" "$BENCH_DIR/results/scale-$(date +%Y%m%d-%H%M%S).txt"
