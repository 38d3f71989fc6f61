#!/usr/bin/env bash
# Recovery speed: seconds to replay N archived segments of pgbench WAL from a base backup taken with
# pg_basebackup -X none before the WAL was written (so every segment comes through restore_command), until
# pg_is_in_recovery() is false (end of archive, then promotion). Methods, each from a fresh copy of the backup:
#   cp               restore_command = 'cp <dir of uncompressed segments>/%f %p'   (the ceiling)
#   walfetch-pf8     wal-fetch from a file:// repository, fetch_prefetch = 8
#   walfetch-pf0     wal-fetch, fetch_prefetch = 0
#   pgbr-sync        pgbackrest archive-get (posix repository, zst), archive-async=n
#   pgbr-async       pgbackrest archive-get, archive-async=y, process-max=2
#   walfetch-s3-pf8 / walfetch-s3-pf0   (optional) wal-fetch from S3 on loopback
#
# Usage: bash bench/recovery.sh     (as root)
# Env:   N=256  RUNS=3  METHODS="cp walfetch-pf8 walfetch-pf0 pgbr-sync pgbr-async"  S3_SERVER=moto|s3s|s3s-fs
#        TIMEOUT=900 (s per recovery)  KEEP=1
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${N:-256}
RUNS=${RUNS:-3}
METHODS=${METHODS:-"cp walfetch-pf8 walfetch-pf0 pgbr-sync pgbr-async"}
TIMEOUT=${TIMEOUT:-900}

bench_start recovery

PORT=$(free_port)
RPORT=$(free_port)
SRC=$WORK/src
PLAIN=$WORK/plain
mkdir -p "$PLAIN" "$WORK/spools"
S3_NEEDED=0
[[ " $METHODS " == *"-s3"* ]] && S3_NEEDED=1
if [ "$S3_NEEDED" = 1 ]; then
    s3_start
    s3_bucket walpush
fi
walpush_conf "$WORK/push.toml" "file://$WORK/wp-repo" "$WORK/spools/push" push_concurrency=2 push_ahead=16 fetch_prefetch=0
[ "$S3_NEEDED" = 1 ] && walpush_conf "$WORK/push-s3.toml" "s3://walpush/rec" "$WORK/spools/push-s3" \
    push_concurrency=2 push_ahead=16 fetch_prefetch=0
mkdir -p "$WORK/pgbr-push"
pgbr_conf "$WORK/pgbr-push/pgbackrest.conf" posix "$WORK/pgbr-repo" "$SRC" "$PORT" archive-async=y process-max=2
chown -R postgres:postgres "$WORK"

ARCH="$WAL_PUSH --config $WORK/push.toml %p"
[ "$S3_NEEDED" = 1 ] && ARCH="$ARCH && $WAL_PUSH --config $WORK/push-s3.toml %p"
ARCH="$ARCH && pgbackrest --config=$WORK/pgbr-push/pgbackrest.conf --stanza=bench archive-push %p && cp %p $PLAIN/%f"
log "source cluster (port $PORT) archiving through: $ARCH"
# autovacuum off: no WAL after the final switch, so every method replays exactly the same segments (look-ahead
# in wal-push and pgBackRest async would otherwise archive segments the cp leg never reaches)
pg_new "$SRC" "$PORT" "wal_keep_size = '$(((N + 64) * 16))MB'" "autovacuum = off"
pg_start "$SRC"
as_pg pgbackrest --config="$WORK/pgbr-push/pgbackrest.conf" --stanza=bench stanza-create >"$WORK/stanza.log" 2>&1 \
    || { cat "$WORK/stanza.log"; die "stanza-create failed"; }
sql "$PORT" "alter system set archive_command = '$ARCH'" >/dev/null
sql "$PORT" "select pg_reload_conf()" >/dev/null
log "base backup (pg_basebackup -X none -c fast), then $N segments of pgbench WAL"
as_pg "$PG_BIN/pg_basebackup" -h "$WORK" -p "$PORT" -U postgres -D "$WORK/base" -X none -c fast
gen_wal "$PORT" "$N"
# The check query's scan prunes pages (WAL with full-page images): run it before the last switch, so that no WAL
# follows the archive's last segment (look-ahead in wal-push and pgBackRest async would archive more of it than
# the cp leg, and the methods would not replay the same segments).
EXPECTED=$(sql "$PORT" "select count(*) || ' accounts, sum ' || sum(abalance) from pgbench_accounts")
sql "$PORT" "checkpoint" >/dev/null
sql "$PORT" "select pg_switch_wal()" >/dev/null
LAST=$(sql "$PORT" "select pg_walfile_name(pg_current_wal_lsn() - 1)")
log "waiting for the archiver to reach $LAST"
for _ in $(seq 1 3000); do
    DONE=$(sql "$PORT" "select coalesce(last_archived_wal, '') from pg_stat_archiver")
    [[ "$DONE" > "$LAST" || "$DONE" == "$LAST" ]] && [ "$(ready_count "$SRC")" -eq 0 ] && break
    sleep 0.5
done
[[ "$DONE" > "$LAST" || "$DONE" == "$LAST" ]] || die "archiving did not reach $LAST (at $DONE)"
log "archived up to $DONE; archiver failures: $(sql "$PORT" "select failed_count from pg_stat_archiver")"
pg_stop "$SRC" immediate   # no shutdown checkpoint: the archive ends with the switched segment
while pgrep -f "config=$WORK/pgbr-push/" >/dev/null; do sleep 0.2; done
NSEG=$(find "$PLAIN" -regextype egrep -regex '.*/[0-9A-F]{24}' | wc -l)
LASTPLAIN=$(find "$PLAIN" -regextype egrep -regex '.*/[0-9A-F]{24}' -printf '%f\n' | sort | tail -1)
LASTWP=$(find "$WORK/wp-repo" -type f -printf '%f\n' | grep -oE '^[0-9A-F]{24}' | sort | tail -1)
LASTPGBR=$(find "$WORK/pgbr-repo/archive" -type f -printf '%f\n' | grep -oE '^[0-9A-F]{24}' | sort | tail -1)
[ "$LASTPLAIN" = "$LAST" ] && [ "$LASTWP" = "$LAST" ] && [ "$LASTPGBR" = "$LAST" ] \
    || log "WARNING: archives end at plain $LASTPLAIN, wal-push $LASTWP, pgBackRest $LASTPGBR, not all at $LAST: methods will replay different amounts"
log "archive: $NSEG segments; wal-push repo $(du -sh "$WORK/wp-repo" | cut -f1), pgBackRest repo $(du -sh "$WORK/pgbr-repo" | cut -f1), plain $(du -sh "$PLAIN" | cut -f1)"

RESULTS=$WORK/results.tsv
: > "$RESULTS"
R=$WORK/restore
CLUSTERS+=("$R")
# recover METHOD RUN
recover() {
    local m=$1 run=$2 sp=$WORK/spools/$1 rc
    rm -rf "$R" "$sp" "$WORK/pgbr-get"
    cp -a "$WORK/base" "$R"
    mkdir -p "$sp"
    case "$m" in
        cp) rc="cp $PLAIN/%f %p" ;;
        walfetch-pf8 | walfetch-pf0)
            walpush_conf "$sp.toml" "file://$WORK/wp-repo" "$sp" push_concurrency=2 "fetch_prefetch = ${m#walfetch-pf}"
            rc="$WAL_FETCH --config $sp.toml %f %p"
            ;;
        walfetch-s3-pf8 | walfetch-s3-pf0)
            walpush_conf "$sp.toml" "s3://walpush/rec" "$sp" push_concurrency=2 "fetch_prefetch = ${m#walfetch-s3-pf}"
            rc="$WAL_FETCH --config $sp.toml %f %p"
            ;;
        pgbr-sync | pgbr-async)
            mkdir -p "$WORK/pgbr-get"
            pgbr_conf "$WORK/pgbr-get/pgbackrest.conf" posix "$WORK/pgbr-repo" "$R" "$RPORT" \
                "archive-async=$([ "$m" = pgbr-async ] && echo y || echo n)" process-max=2
            rc="pgbackrest --config=$WORK/pgbr-get/pgbackrest.conf --stanza=bench archive-get %f \"%p\""
            ;;
        *) die "unknown method $m" ;;
    esac
    cat >> "$R/postgresql.auto.conf" <<EOF
restore_command = '$rc'
recovery_target_action = 'promote'
archive_mode = off
port = $RPORT
EOF
    touch "$R/recovery.signal"
    chown -R postgres:postgres "$R" "$WORK/spools" "$WORK"/pgbr-get 2>/dev/null || true
    rm -f "$R.log"
    local t0 t1 st ok=1 u0 u1
    u0=$(cg_usage)
    t0=$(date +%s.%N)
    cg_run as_pg "$PG_BIN/pg_ctl" -D "$R" -l "$R.log" start >/dev/null
    while :; do
        sleep 0.2
        st=$(psql -X -A -t -q -h "$WORK" -p "$RPORT" -U postgres -d postgres -c 'select pg_is_in_recovery()' 2>/dev/null || true)
        [ "$st" = f ] && break
        if ! [ -f "$R/postmaster.pid" ] && ! pgrep -f "$R" >/dev/null; then
            log "  the recovering server stopped: $(grep -E 'FATAL|PANIC' "$R.log" | tail -2)"
            ok=0
            break
        fi
        if awk "BEGIN {exit !($(date +%s.%N) - $t0 > $TIMEOUT)}"; then
            log "  TIMEOUT after $TIMEOUT s"
            ok=0
            break
        fi
    done
    t1=$(date +%s.%N)
    u1=$(cg_usage)
    local restored got errs secs cpu
    cpu=$(awk "BEGIN {printf \"%.1f\", ($u1 - $u0) / 1e9}")
    restored=$(grep -o 'restored log file "[0-9A-F]\{24\}"' "$R.log" | sort -u | wc -l)
    got=$(psql -X -A -t -q -h "$WORK" -p "$RPORT" -U postgres -d postgres \
        -c "select count(*) || ' accounts, sum ' || sum(abalance) from pgbench_accounts" 2>/dev/null || echo "?")
    errs=$(grep -ciE 'error|fatal|panic|warn' "$R.log" || true)
    cp "$R.log" "$WORK/log-$m-$run.txt"
    pg_stop "$R" immediate
    # the prefetcher / pgBackRest async process end by themselves
    for _ in $(seq 1 100); do pgrep -f "$sp.toml|config=$WORK/pgbr-get/" >/dev/null || break; sleep 0.2; done
    secs=$(awk "BEGIN {printf \"%.2f\", $t1 - $t0}")
    [ "$ok" = 1 ] || secs="failed"
    local match=yes
    [ "$got" = "$EXPECTED" ] || match="NO ($got)"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$m" "$run" "$secs" "$restored" "$errs" "$match" "$cpu" >> "$RESULTS"
    log "  $m run $run: $secs s, $restored segments restored, $errs error/warn log lines, data matches: $match, CPU $cpu s"
}

for run in $(seq 1 "$RUNS"); do
    for m in $METHODS; do
        log "run $run/$RUNS: $m"
        recover "$m" "$run"
    done
done
s3_stop

{
    echo
    echo "### recovery: $(date -u +%FT%TZ), $(nproc) cores, N=$N segments generated after the base backup" \
        "($NSEG in the archive), $RUNS run(s), binaries from $ROOT ($BIN_REV)"
    echo "repositories: wal-push file:// zstd level ${WALPUSH_LEVEL:-1} ($(du -sh "$WORK/wp-repo" | cut -f1));" \
        "pgBackRest posix zst level ${PGBR_COMPRESS_LEVEL:-default 3} ($(du -sh "$WORK/pgbr-repo" | cut -f1)); plain ($(du -sh "$PLAIN" | cut -f1))"
    printf '\n%-18s %10s %14s %20s %10s %10s %12s %10s\n' method "median s" "median seg/s" "runs s" restored "log warn" "data ok" "CPU s"
    printf -- '-%.0s' $(seq 1 111); echo
    for m in $METHODS; do
        s=$(awk -F'\t' -v t="$m" '$1 == t && $3 != "failed" {print $3}' "$RESULTS" | median)
        runs=$(awk -F'\t' -v t="$m" '$1 == t {print $3}' "$RESULTS" | paste -sd/)
        n=$(awk -F'\t' -v t="$m" '$1 == t {print $4}' "$RESULTS" | median)
        e=$(awk -F'\t' -v t="$m" '$1 == t {s += $5} END {print s}' "$RESULTS")
        ok=$(awk -F'\t' -v t="$m" '$1 == t && $6 != "yes" {bad++} END {print (bad ? bad " bad" : "all")}' "$RESULTS")
        rate=$(awk "BEGIN {if (\"$s\" == \"nan\") print \"-\"; else printf \"%.1f\", $n / $s}")
        c=$(awk -F'\t' -v t="$m" '$1 == t {print $7}' "$RESULTS" | median)
        printf '%-18s %10s %14s %20s %10s %10s %12s %10s\n' "$m" "$s" "$rate" "$runs" "$n" "$e" "$ok" "$c"
    done
    echo "(restored: distinct segments in 'restored log file' lines of the server log, median; log warn: lines matching"
    echo " error|fatal|panic|warn, summed over runs; data ok: pgbench_accounts count and sum equal the source's;"
    echo " CPU s: CPU time of the recovering cluster and everything it started (replay + restore_command + prefetch),"
    echo " median, from a cpuacct cgroup; 0 when the cgroup could not be made)"
    echo "total time: $(($(date +%s) - T0)) s"
} | tee "$WORK/report.txt"
for f in "$WORK"/log-*.txt; do
    if grep -qiE 'error|fatal|panic|warn' "$f"; then
        echo "--- $(basename "$f"): matching server-log lines"
        grep -iE 'error|fatal|panic|warn' "$f" | sed -E 's/^[0-9-]+ [0-9:.]+ [A-Z]+ \[[0-9]+\] //; s/[0-9A-F]{24}/<SEG>/g' \
            | sort | uniq -c | sort -rn | head -5
    fi
done | tee -a "$WORK/report.txt"
mkdir -p "$BENCH_DIR/results" && cp "$WORK/report.txt" "$BENCH_DIR/results/recovery-$(date +%Y%m%d-%H%M%S).txt"
