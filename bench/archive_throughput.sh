#!/usr/bin/env bash
# Archive throughput as the drain of a backlog: a cluster (archive_mode on, archive_command '') holds N .ready
# segments of pgbench WAL; we set the tool's archive_command, pg_reload_conf(), and time until
# pg_stat_archiver.archived_count has grown by N and no .ready file remains. The same N segments are reused
# for every tool and run (between runs the cluster is stopped and their .done files are renamed back to .ready;
# wal_keep_size keeps the segments), each tool gets a fresh repository, spool and S3 server.
#
# Usage: bash bench/archive_throughput.sh        (as root)
# Env:   N=256 (segments)  RUNS=3  TOOLS="walpush-file walpush-s3 pgbr-posix-async pgbr-s3-async"
#        (also available: walpush-file-noahead walpush-s3-noahead pgbr-posix-sync pgbr-s3-sync, and for the
#        compression-bound ceiling zstd-2 (zstd at WALPUSH_LEVEL, 2 streams) and pg-true (archive_command /bin/true))
#        PUSH_CONCURRENCY=2 PUSH_AHEAD=16  S3_SERVER=moto|s3s|s3s-fs  PGBR_COMPRESS_LEVEL  TIMEOUT=900 (s per drain)
#        WAL_PUSH_BEFORE=/path/to/wal-push: another build (say, of the commit before a change), drained as the tool
#        walpush-before-file, to compare two builds on the same WAL in one run
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${N:-256}
RUNS=${RUNS:-3}
TOOLS=${TOOLS:-"walpush-file walpush-s3 pgbr-posix-async pgbr-s3-async zstd-2 pg-true"}
PUSH_CONCURRENCY=${PUSH_CONCURRENCY:-2}
PUSH_AHEAD=${PUSH_AHEAD:-16}
TIMEOUT=${TIMEOUT:-900}

bench_start throughput
if [[ " $TOOLS " == *" walpush-before-file "* ]]; then
    [ -x "${WAL_PUSH_BEFORE:-}" ] || die "walpush-before-file needs WAL_PUSH_BEFORE=<a wal-push binary>"
    # Named wal-push in a directory of its own: a call starts the background pusher from beside itself.
    mkdir -p "$WORK/bin-before"
    cp "$WAL_PUSH_BEFORE" "$WORK/bin-before/wal-push"
fi

PORT=$(free_port)
DATA=$WORK/data
log "cluster on port $PORT: generating $N segments of pgbench WAL (archive_command '' keeps them .ready)"
pg_new "$DATA" "$PORT" "wal_keep_size = '$(((N + 128) * 16))MB'" "checkpoint_timeout = '30min'"
pg_start "$DATA"
gen_wal "$PORT" $((N + 1))
pg_stop "$DATA"
# Keep the newest N .ready segments as the backlog; mark older ones (initdb's WAL etc.) as archived.
find "$DATA/pg_wal/archive_status" -name '*.ready' -printf '%f\n' | sed 's/\.ready$//' | sort > "$WORK/all-ready.txt"
tail -n "$N" "$WORK/all-ready.txt" > "$WORK/backlog.txt"
grep -qvE '^[0-9A-F]{24}$' "$WORK/backlog.txt" && die "backlog holds a non-segment file: $(cat "$WORK/backlog.txt")"
[ "$(wc -l < "$WORK/backlog.txt")" -eq "$N" ] || die "only $(wc -l < "$WORK/backlog.txt") segments are .ready"
head -n -"$N" "$WORK/all-ready.txt" | while read -r f; do
    mv "$DATA/pg_wal/archive_status/$f.ready" "$DATA/pg_wal/archive_status/$f.done"
done
log "backlog: $(head -1 "$WORK/backlog.txt") .. $(tail -1 "$WORK/backlog.txt") ($N segments, $((N * 16)) MiB)"

reset_backlog() {
    local st=$DATA/pg_wal/archive_status f
    while read -r f; do
        [ -f "$DATA/pg_wal/$f" ] || die "segment $f vanished from pg_wal (wal_keep_size too small?)"
        rm -f "$st/$f.done"
        [ -f "$st/$f.ready" ] || runuser -u postgres -- touch "$st/$f.ready"
    done < "$WORK/backlog.txt"
    # a clean shutdown with archiving on switches to a new segment: mark those extra ones archived
    for f in "$st"/*.ready; do
        grep -qxF "$(basename "$f" .ready)" "$WORK/backlog.txt" || mv "$f" "${f%.ready}.done"
    done
    [ "$(ready_count "$DATA")" -eq "$N" ] || die "expected $N .ready files, found $(ready_count "$DATA")"
}

cpu_busy() { awk '/^cpu / {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }

S3_NEEDED=0
[[ " $TOOLS " == *"-s3"* ]] && S3_NEEDED=1
if [ "$S3_NEEDED" = 1 ]; then
    S3_PORT=$(free_port)
    TLS_PORT=$(free_port)
fi

# The compression-bound ceiling's first half: zstd at wal-push's level over the same N segments, two streams at
# once (one per core), as wal-push compresses one segment per thread. Recorded like a drain (CPU ms/seg is the
# zstd processes' user + sys); the other half is PostgreSQL's own share, the pg-true drain (archive_command
# /bin/true): see the ceiling line under the table.
ceiling_zstd() {
    local run=$1 t0 t1 secs rate cpu
    t0=$(date +%s.%N)
    cpu=$(cd "$DATA/pg_wal" && /usr/bin/time -f '%U %S' sh -c \
        "xargs -P 2 -n 16 zstd -q -${WALPUSH_LEVEL:-1} -c < '$WORK/backlog.txt' > /dev/null" 2>&1 | tail -1)
    t1=$(date +%s.%N)
    secs=$(awk "BEGIN {printf \"%.2f\", $t1 - $t0}")
    rate=$(awk "BEGIN {printf \"%.2f\", $N / ($t1 - $t0)}")
    cpu=$(echo "$cpu" | awk -v n="$N" '{printf "%.0f", 1000 * ($1 + $2) / n}')
    printf '%s\t%s\t%s\t%s\t0\t0\t0\t-\t%s\n' zstd-2 "$run" "$secs" "$rate" "$cpu" >> "$RESULTS"
    log "  zstd-2 run $run: $secs s, $rate seg/s, zstd CPU $cpu ms/segment, load $(cut -d' ' -f1-3 /proc/loadavg)"
}

RESULTS=$WORK/results.tsv
: > "$RESULTS"
# drain TOOL RUN
drain() {
    local tool=$1 run=$2 d=$WORK/run cmd
    rm -rf "$d"
    mkdir -p "$d"
    chown postgres:postgres "$d"
    reset_backlog
    case "$tool" in
        *-s3*)
            s3_stop
            s3_start
            [ -n "$STUNNEL_PID" ] || stunnel_start
            ;;
    esac
    if [ "$tool" = zstd-2 ]; then
        ceiling_zstd "$run"
        return
    fi
    pg_start "$DATA"
    case "$tool" in
        pg-true) cmd=/bin/true ;;
        walpush-*)
            local ahead=$PUSH_AHEAD url="file://$d/repo"
            [[ $tool == *-noahead ]] && ahead=0
            if [[ $tool == walpush-s3* ]]; then
                s3_bucket walpush
                url="s3://walpush/run$run"
            fi
            walpush_conf "$d/wp.toml" "$url" "$d/spool" "push_concurrency = $PUSH_CONCURRENCY" \
                "push_ahead = $ahead" "fetch_prefetch = 0"
            cmd="$WAL_PUSH --config $d/wp.toml %p"
            [[ $tool == walpush-before-* ]] && cmd="$WORK/bin-before/wal-push --config $d/wp.toml %p"
            ;;
        pgbr-*)
            local kind=posix async=n
            [[ $tool == pgbr-s3-* ]] && { kind=s3; s3_bucket pgbr; }
            [[ $tool == *-async ]] && async=y
            mkdir -p "$d/pgbr"
            pgbr_conf "$d/pgbr/pgbackrest.conf" "$kind" "$([ $kind = s3 ] && echo /run$run || echo "$d/pgbr-repo")" \
                "$DATA" "$PORT" "archive-async=$async" "process-max=2"
            chown -R postgres:postgres "$d"
            as_pg pgbackrest --config="$d/pgbr/pgbackrest.conf" --stanza=bench stanza-create >"$d/stanza.log" 2>&1 \
                || { cat "$d/stanza.log"; die "pgbackrest stanza-create failed"; }
            cmd="pgbackrest --config=$d/pgbr/pgbackrest.conf --stanza=bench archive-push %p"
            ;;
        *) die "unknown tool $tool" ;;
    esac
    chown -R postgres:postgres "$d"
    local base failed0 logsize t0 t1 now cnt rdy cpu0 cpu1 u0 u1 ok=1
    base=$(sql "$PORT" "select archived_count from pg_stat_archiver")
    failed0=$(sql "$PORT" "select failed_count from pg_stat_archiver")
    logsize=$(stat -c %s "$DATA.log")
    cpu0=$(cpu_busy)
    u0=$(cg_usage)
    t0=$(date +%s.%N)
    sql "$PORT" "alter system set archive_command = '$cmd'" >/dev/null
    sql "$PORT" "select pg_reload_conf()" >/dev/null
    while :; do
        sleep 0.2
        cnt=$(sql "$PORT" "select archived_count from pg_stat_archiver")
        if [ $((cnt - base)) -ge "$N" ]; then
            rdy=$(ready_count "$DATA")
            [ "$rdy" -eq 0 ] && break
        fi
        now=$(date +%s.%N)
        if awk "BEGIN {exit !($now - $t0 > $TIMEOUT)}"; then
            log "  TIMEOUT after $TIMEOUT s: $((cnt - base)) archived"
            ok=0
            break
        fi
    done
    t1=$(date +%s.%N)
    cpu1=$(cpu_busy)
    u1=$(cg_usage)
    local failed secs rate busy cpuseg
    failed=$(( $(sql "$PORT" "select failed_count from pg_stat_archiver") - failed0 ))
    sql "$PORT" "alter system reset archive_command" >/dev/null
    sql "$PORT" "select pg_reload_conf()" >/dev/null
    secs=$(awk "BEGIN {printf \"%.2f\", $t1 - $t0}")
    rate=$(awk "BEGIN {printf \"%.2f\", $N / ($t1 - $t0)}")
    busy=$(echo "$cpu0 $cpu1" | awk '{printf "%.0f", 100 * ($3 - $1) / ($4 - $2) }')
    cpuseg=$(awk "BEGIN {printf \"%.0f\", ($u1 - $u0) / 1e6 / $N}")
    [ "$ok" = 1 ] || rate=timeout
    # pgBackRest's async process and the wal-push children finish by themselves
    for _ in $(seq 1 150); do pgrep -f "$d/" >/dev/null || break; sleep 0.2; done
    pg_stop "$DATA"
    local size=0 objs=0
    case "$tool" in
        pg-true) ;;
        walpush-s3* | pgbr-s3-*)
            read -r objs size < <(s3_usage "$([[ $tool == walpush* ]] && echo walpush || echo pgbr)")
            ;;
        walpush-*) size=$(du -sb "$d/repo" | cut -f1); objs=$(find "$d/repo" -type f | wc -l) ;;
        pgbr-*) size=$(du -sb "$d/pgbr-repo" | cut -f1); objs=$(find "$d/pgbr-repo" -type f | wc -l) ;;
    esac
    local errs
    errs=$(tail -c +"$((logsize + 1))" "$DATA.log" | grep -v 'archiving is not configured' | grep -ciE 'error|fatal|warn|failed' || true)
    tail -c +"$((logsize + 1))" "$DATA.log" > "$WORK/log-$tool-$run.txt"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$run" "$secs" "$rate" "$failed" "$errs" "$((size / 1024 / 1024))" "$busy" \
        "$cpuseg" >> "$RESULTS"
    log "  $tool run $run: $secs s, $rate seg/s, archiver failures $failed, log lines with error/warn $errs," \
        "repo $((size / 1024 / 1024)) MiB in $objs objects, machine CPU busy $busy%, cluster+tool CPU $cpuseg ms/segment," \
        "load $(cut -d' ' -f1-3 /proc/loadavg)"
}

for run in $(seq 1 "$RUNS"); do
    for tool in $TOOLS; do
        log "run $run/$RUNS: $tool"
        drain "$tool" "$run"
    done
done
s3_stop
stunnel_stop

{
    echo
    echo "### archive_throughput: $(date -u +%FT%TZ), $(nproc) cores, N=$N segments of pgbench WAL, $RUNS run(s)," \
        "binaries from $ROOT ($BIN_REV)"
    echo "wal-push: compression_level ${WALPUSH_LEVEL:-1}, push_concurrency $PUSH_CONCURRENCY, push_ahead $PUSH_AHEAD;" \
        "pgBackRest: compress-type zst (level ${PGBR_COMPRESS_LEVEL:-default 3}), process-max 2; S3 server: $S3_SERVER on 127.0.0.1" \
        "(pgBackRest through stunnel TLS)"
    printf '\n%-22s %10s %12s %20s %8s %8s %9s %9s %11s\n' tool "median s" "median seg/s" "runs seg/s" failures "log warn" "repo MiB" "CPU busy" "CPU ms/seg"
    printf -- '-%.0s' $(seq 1 120); echo
    for tool in $TOOLS; do
        s=$(awk -F'\t' -v t="$tool" '$1 == t {print $3}' "$RESULTS" | median)
        rates=$(awk -F'\t' -v t="$tool" '$1 == t {print $4}' "$RESULTS" | paste -sd/)
        r=$(awk -F'\t' -v t="$tool" '$1 == t && $4 != "timeout" {print $4}' "$RESULTS" | median)
        f=$(awk -F'\t' -v t="$tool" '$1 == t {s += $5} END {print s}' "$RESULTS")
        e=$(awk -F'\t' -v t="$tool" '$1 == t {s += $6} END {print s}' "$RESULTS")
        m=$(awk -F'\t' -v t="$tool" '$1 == t {print $7}' "$RESULTS" | median)
        c=$(awk -F'\t' -v t="$tool" '$1 == t {print $8}' "$RESULTS" | median)
        u=$(awk -F'\t' -v t="$tool" '$1 == t {print $9}' "$RESULTS" | median)
        printf '%-22s %10s %12s %20s %8s %8s %9s %8s%% %11s\n' "$tool" "$s" "$r" "$rates" "$f" "$e" "$m" "$c" "$u"
    done
    echo "(failures: pg_stat_archiver.failed_count growth, summed over runs; log warn: server-log lines matching"
    echo " error|fatal|warn|failed during the drains; CPU busy: whole machine, both cores, during the drain;"
    echo " CPU ms/seg: CPU time of the cluster and all it started (archive_command, pgBackRest async processes; not the"
    echo " S3 server or stunnel) per segment, median, from a cpuacct cgroup; 0 when the cgroup could not be made)"
    if grep -q '^zstd-2' "$RESULTS" && grep -q '^pg-true' "$RESULTS"; then
        zs=$(awk -F'\t' '$1 == "zstd-2" {print $3}' "$RESULTS" | median)
        pgc=$(awk -F'\t' '$1 == "pg-true" {print $9}' "$RESULTS" | median)
        ceil=$(awk -v n="$N" -v zs="$zs" -v pg="$pgc" 'BEGIN {printf "%.1f", n / (zs + n * pg / 1000 / 2)}')
        echo "ceiling: $ceil seg/s = N / (zstd-2 wall $zs s + PostgreSQL's own CPU $pgc ms/seg x N / 2 cores)"
        for tool in $TOOLS; do
            case "$tool" in walpush-*)
                r=$(awk -F'\t' -v t="$tool" '$1 == t && $4 != "timeout" {print $4}' "$RESULTS" | median)
                echo "  $tool: $(awk -v r="$r" -v c="$ceil" 'BEGIN {printf "%.0f", 100 * r / c}')% of the ceiling" ;;
            esac
        done
    fi
    echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "total time: $(($(date +%s) - T0)) s"
} | tee "$WORK/report.txt"
for f in "$WORK"/log-*.txt; do
    if grep -v 'archiving is not configured' "$f" | grep -qiE 'error|fatal|warn|failed'; then
        echo "--- $(basename "$f"): most frequent matching server-log lines"
        grep -v 'archiving is not configured' "$f" | grep -iE 'error|fatal|warn|failed' | sed -E 's/^[0-9-]+ [0-9:.]+ [A-Z]+ \[[0-9]+\] //; s/[0-9A-F]{24}/<SEG>/g' \
            | sort | uniq -c | sort -rn | head -5
    fi
done | tee -a "$WORK/report.txt"
mkdir -p "$BENCH_DIR/results" && cp "$WORK/report.txt" "$BENCH_DIR/results/archive_throughput-$(date +%Y%m%d-%H%M%S).txt"
